/**
 * The extension's life in Lambda (SPEC §4): check the configuration, listen, register,
 * then prefetch and load the app without holding init up, refresh on each INVOKE and settle
 * before the next event, and leave cleanly on SHUTDOWN. Everything it touches comes in as an argument;
 * only `extension/main.ts` touches `process`.
 */
import type { FastifyInstance } from "fastify";
import type { AppOptions } from "./app.js";
import { errorAnswer, writeError } from "./answers.js";
import { type Config, type LogLevel, isUnrecognisedSwitch, parseConfig } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import type { HttpPost } from "./exchange.js";
import { createTokenCache } from "./pipeline.js";
import type { EventType, ExtensionsApi } from "./extensions-api.js";
import { type Listener, listenOnLoopback } from "./listener.js";
import { type Logger, writeStdout } from "./log.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { logRefreshes } from "./refresh-log.js";
import { deferStsPort, type GetWebIdentityToken } from "./sts.js";
import type { RefreshOutcome, TokenCache } from "./token-cache.js";

/** The reason a SnapStart init refuses token requests: nothing is fetched before the snapshot. */
const SNAPSTART_INIT = new BrokerError("ERR_SNAPSTART_INIT", "SnapStart: no token is fetched before the snapshot, so none is frozen into it", {
  step: "token",
  retryable: false,
  hint: "ask for the token in the handler, or in a runtime after-restore hook, not in init code",
});

/** The extension's name: the file name of its executable under /opt/extensions (SPEC §1). */
export const EXTENSION_NAME = "databricks-token-broker";
/**
 * Managed Instances never freeze and deliver no INVOKE to extensions, so a timer drives
 * refreshes there. Checking once a second costs a few map lookups and keeps the refresh
 * within a second of its window opening.
 */
export const REFRESH_SWEEP_MS = 1_000;
/** Part of the SHUTDOWN deadline kept in hand for the exit itself. */
const SHUTDOWN_MARGIN_MS = 300;
/** Part of an INVOKE's deadline kept in hand for asking for the next event in time. */
const INVOKE_MARGIN_MS = 300;
export interface RunOptions {
  env: NodeJS.ProcessEnv;
  api: ExtensionsApi;
  makeLogger: (level: LogLevel) => Logger;
  /** Loads the STS port for a region; called at the first JWT, or before a SnapStart snapshot. */
  loadSts: (region: string) => Promise<GetWebIdentityToken>;
  fetch: HttpPost;
  now?: () => number;
  /** Where the logger's lines go: metric records are written there too, past the log level. */
  write?: (line: string) => void;
}

/** Runs until SHUTDOWN; resolves with the process exit code. */
export async function run(options: RunOptions): Promise<number> {
  const { env, api, makeLogger } = options;
  // Managed Instances refuse an INVOKE registration from an external extension (SPEC §4).
  const managed = env.AWS_LAMBDA_INITIALIZATION_TYPE === "lambda-managed-instances";
  const events: EventType[] = managed ? ["SHUTDOWN"] : ["INVOKE", "SHUTDOWN"];
  let parsed: ReturnType<typeof parseConfig>;
  try {
    parsed = parseConfig(env);
  } catch (err) {
    const log = makeLogger("info");
    const message = isBrokerError(err) ? err.message : String(err);
    log.error("configuration rejected; failing the function's init", { error: message });
    return failInit(api, log, events, "Extension.ConfigInvalid", `${EXTENSION_NAME}: ${message}`);
  }
  if (!parsed.enabled) return idle(api, makeLogger(parsed.logLevel), parsed.enabledValue);
  const log = makeLogger(parsed.config.logLevel);
  // Settings that work but will surprise (the SDKs' variables, say) never fail the init.
  for (const w of parsed.warnings) log.warn(`${w.detail}; fix: ${w.fix}`, { variable: w.variable });
  return runBroker(parsed.config, { managed, events }, log, options);
}

/** A disabled broker: registered for SHUTDOWN only, no port, no token work (SPEC §2). */
async function idle(api: ExtensionsApi, log: Logger, enabledValue: string | undefined): Promise<number> {
  if (isUnrecognisedSwitch(enabledValue)) {
    log.warn("DATABRICKS_TOKEN_BROKER_ENABLED is not one of true, 1, on: the broker stays off", { value: enabledValue });
  }
  log.info("broker disabled: no listener, no token work (set DATABRICKS_TOKEN_BROKER_ENABLED=true to enable)");
  await api.register(EXTENSION_NAME, ["SHUTDOWN"]);
  for (;;) {
    const event = await api.next();
    if (event.eventType === "SHUTDOWN") return 0;
  }
}

/**
 * The enabled broker's start-up, step by step: listen on 127.0.0.1, register (binding ::1
 * meanwhile), and once the first `event/next` is out, prefetch and load the app; then events.
 */
async function runBroker(config: Config, { managed, events }: { managed: boolean; events: EventType[] }, log: Logger, { env, api, loadSts, fetch, now = Date.now, write = writeStdout }: RunOptions): Promise<number> {
  const snapStart = config.initializationType === "snap-start";
  const sts = deferStsPort(() => loadSts(config.region));
  // The app loads once the first exchange is on its way, so that its loading takes the CPU
  // while the exchange waits on the network, not while the STS request is being built.
  let exchangeStarted = () => {};
  const firstExchange = new Promise<void>((resolve) => (exchangeStarted = resolve));
  const metrics = metricsOf(config, env, write, now);
  const onRefresh = reportRefreshes(log, metrics);
  const cache = createTokenCache(config, { getWebIdentityToken: sts.getWebIdentityToken, fetch, log, now, onRefresh, onExchangeStart: () => exchangeStarted() });
  if (snapStart) cache.suspend(SNAPSTART_INIT);
  // Requests that arrive before the app is loaded are held by the listener, then answered by it.
  let app: Promise<FastifyInstance | undefined> | undefined;
  const sessionToken = env.AWS_SESSION_TOKEN || env.AWS_CONTAINER_AUTHORIZATION_TOKEN || undefined;
  const loadApp = () => (app ??= serve(listener, log, { config, cache, sessionToken, log, now, countServed: metrics?.served }));

  let listener: Listener;
  try {
    listener = await listenOnLoopback(config.port);
  } catch (err) {
    const why = cannotListen(err, config.port);
    log.error("cannot listen; failing the function's init", { error: why });
    return failInit(api, log, events, "Extension.ListenFailed", `${EXTENSION_NAME}: DATABRICKS_TOKEN_BROKER_PORT: ${why}`);
  }

  try {
    await registerAndBindIpv6(api, listener, events);
  } catch (err) {
    const why = cannotListen(err, config.port);
    log.error("cannot listen on ::1; failing the function's init", { error: why });
    await listener.close();
    return reportInitError(api, log, "Extension.ListenFailed", `${EXTENSION_NAME}: DATABRICKS_TOKEN_BROKER_PORT: ${why}`);
  }
  logStarted(log, listener, events, config);

  if (snapStart) {
    // No token before the snapshot (SPEC §4), but the SDK and the app are in it, loaded.
    const sdk = sts.load().catch((err: unknown) => log.warn("could not load the AWS SDK before the snapshot", { error: err }));
    await Promise.all([sdk, loadApp()]);
  }
  // Once the first `event/next` is out, Lambda's init is over: the prefetch and the app's
  // loading no longer hold it up. The app loads as the first exchange starts, or once the
  // prefetch has ended without one (STS refused, say).
  const startServing = once(() => {
    if (!snapStart) cache.refreshDue();
    void Promise.race([firstExchange, cache.settled()]).then(loadApp);
  });
  return handleEvents({ api, cache, log, now, snapStart, managed, listener, app: loadApp, startServing, metrics });
}

/** The metrics of SPEC §8 when `DATABRICKS_TOKEN_BROKER_METRICS=emf`, else none, so nothing is counted. */
function metricsOf(config: Config, env: NodeJS.ProcessEnv, write: (line: string) => void, now: () => number): Metrics | undefined {
  if (config.metrics !== "emf") return undefined;
  // Lambda sets it; a dimension value cannot be empty, so a run outside Lambda says so instead.
  const functionName = env.AWS_LAMBDA_FUNCTION_NAME?.trim() || "outside-lambda";
  return createMetrics({ namespace: config.metricsNamespace, functionName, targets: config.targets.keys(), write, now });
}

/** The token cache's `onRefresh`: the log line of each refresh, and its metric record when metrics are on. */
function reportRefreshes(log: Logger, metrics: Metrics | undefined): (outcome: RefreshOutcome) => void {
  const logged = logRefreshes(log);
  if (!metrics) return logged;
  return (o) => {
    logged(o);
    metrics.onRefresh(o);
  };
}

/** `fn` on its first call only. */
function once(fn: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    fn();
  };
}

/** Registers; ::1 is bound while Lambda answers (127.0.0.1 was bound before, as SPEC §4 orders). */
async function registerAndBindIpv6(api: ExtensionsApi, listener: Listener, events: EventType[]): Promise<void> {
  let ipv6: Promise<unknown> | undefined;
  const bindIpv6 = () => {
    ipv6 ??= listener.listenOnIpv6();
    // Awaited below; until then a failure must not count as unhandled.
    ipv6.catch(() => {});
  };
  await api.register(EXTENSION_NAME, events, bindIpv6);
  // For an Extensions API client that does not report the send.
  bindIpv6();
  await ipv6;
}

/** The two start-up lines: the addresses bound, and what the broker registered for and serves. */
function logStarted(log: Logger, listener: Listener, events: EventType[], config: Config): void {
  log.info("listening", { addresses: listener.addresses.map((a) => `${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`) });
  log.info("registered", {
    events,
    targets: [...config.targets.values()].map((t) => ({ name: t.name, host: t.host, tokenEndpoint: t.tokenEndpoint, clientId: t.clientId ?? null, scope: t.scope })),
    initializationType: config.initializationType,
    node: process.version,
  });
}

interface EventLoop {
  api: ExtensionsApi;
  cache: TokenCache;
  log: Logger;
  now: () => number;
  snapStart: boolean;
  /** Managed Instances: no INVOKE, so a timer drives refreshes. */
  managed: boolean;
  listener: Listener;
  /** The app, loaded at the latest by the time SHUTDOWN needs it closed. */
  app: () => Promise<FastifyInstance | undefined>;
  /** Run once the first `event/next` is out (or, for a client that does not report it, answered). */
  startServing: () => void;
  /** Flushed at each INVOKE and at SHUTDOWN, so the tokens served make one record per target, not one per request. */
  metrics: Metrics | undefined;
}

/** Refreshes on each INVOKE and settles before the next event; ends on SHUTDOWN. */
async function handleEvents({ api, cache, log, now, snapStart, managed, listener, app, startServing, metrics }: EventLoop): Promise<number> {
  const sweep = managed ? setInterval(() => cache.refreshDue(), REFRESH_SWEEP_MS).unref() : undefined;
  for (;;) {
    const event = await api.next(startServing);
    startServing();
    if (event.eventType === "SHUTDOWN") {
      clearInterval(sweep);
      const budget = Math.max(0, event.deadlineMs - now() - SHUTDOWN_MARGIN_MS);
      log.info("shutting down", { reason: event.shutdownReason, budgetMs: budget });
      // Requests still waiting for a token must not hold the exit past the deadline.
      await Promise.race([stop(listener, app()), new Promise((r) => setTimeout(r, budget).unref())]);
      metrics?.flush({ last: true });
      return 0;
    }
    // The tokens served since the last INVOKE: the previous invoke's are all answered by now.
    metrics?.flush();
    if (snapStart) cache.resume();
    cache.refreshDue();
    // Lambda may freeze as soon as we ask for the next event: let no refresh freeze half-way.
    // Yet never past the invoke's deadline, which Lambda counts against the function's timeout;
    // a refresh a freeze cuts short fails after the thaw and is retried like any other.
    const left = Number.isFinite(event.deadlineMs) ? event.deadlineMs - now() - INVOKE_MARGIN_MS : Number.POSITIVE_INFINITY;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((r) => {
      if (left !== Number.POSITIVE_INFINITY) timer = setTimeout(r, Math.max(0, left)).unref();
    });
    await Promise.race([cache.settled(), deadline]);
    clearTimeout(timer);
  }
}

/**
 * Loads fastify, builds the app and hands it the listener's requests, those held until then
 * first. Resolves with the app, or undefined when it could not be built: every request is then
 * answered 500 rather than left waiting, and the process lives on.
 */
async function serve(listener: Listener, log: Logger, options: AppOptions): Promise<FastifyInstance | undefined> {
  try {
    const { buildApp } = await import("./app.js");
    const app = buildApp(options);
    await app.ready();
    // fastify hands `routing` to its own server unbound, as a request listener, the same way.
    listener.serve(app.routing);
    return app;
  } catch (err) {
    log.error("could not build the HTTP app; answering every request 500", { error: err });
    const answer = errorAnswer("internal", "internal error");
    listener.serve((_req, res) => writeError(res, answer));
    return undefined;
  }
}

/**
 * Stops listening at once, even with the app still being built; requests already taken are
 * answered (by the app once ready) before the returned promise resolves.
 */
async function stop(listener: Listener, app: Promise<FastifyInstance | undefined>): Promise<void> {
  const closed = listener.close();
  await (await app)?.close();
  // Requests held for the app were answered meanwhile: their connections need not hold the exit.
  listener.closeIdle();
  await closed;
}

/** What a failed bind says to the user. */
function cannotListen(err: unknown, port: number): string {
  return (err as { code?: string }).code === "EADDRINUSE" ? `port ${port} is in use; set DATABRICKS_TOKEN_BROKER_PORT to a free one` : (err as Error).message;
}

/** Registers (the error call needs an identifier), reports the init error, and gives the exit code. */
async function failInit(api: ExtensionsApi, log: Logger, events: EventType[], errorType: string, message: string): Promise<number> {
  try {
    await api.register(EXTENSION_NAME, events);
  } catch (err) {
    log.error("could not report the init error to Lambda", { error: err });
    return 1;
  }
  return reportInitError(api, log, errorType, message);
}

/** Reports the init error of a registered extension, and gives the exit code. */
async function reportInitError(api: ExtensionsApi, log: Logger, errorType: string, message: string): Promise<number> {
  try {
    await api.initError(errorType, message);
  } catch (err) {
    log.error("could not report the init error to Lambda", { error: err });
  }
  return 1;
}
