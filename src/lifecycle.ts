/**
 * The extension's life in Lambda (SPEC §4): check the configuration, listen, register,
 * prefetch without holding init up, refresh on each INVOKE and settle before the next
 * event, and leave cleanly on SHUTDOWN. Everything it touches comes in as an argument;
 * only `extension/main.ts` touches `process`.
 */
import type { FastifyInstance } from "fastify";
import type { AppOptions } from "./app.js";
import { createBroker } from "./broker.js";
import { type LogLevel, isUnrecognisedSwitch, parseConfig } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import type { FetchLike } from "./exchange.js";
import type { EventType, ExtensionsApi } from "./extensions-api.js";
import { type Listener, listenOnLoopback } from "./listener.js";
import type { Logger } from "./log.js";
import { preconnect, preconnectUrls } from "./preconnect.js";
import { deferStsPort, type GetWebIdentityToken } from "./sts.js";

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
/**
 * The longest a request waits for the app to start loading when the prefetch has not yet
 * reached its exchange (where the app is loaded, see `serve`): well past a healthy STS round
 * trip, cold TLS handshake included, so that loading the app does not land on the first
 * token's path; well short of the STS timeout, so that a request that needs no token
 * (/health, a refusal) does not wait out a hung STS.
 */
const APP_LOAD_DEFER_MS = 500;

export interface RunOptions {
  env: NodeJS.ProcessEnv;
  api: ExtensionsApi;
  makeLogger: (level: LogLevel) => Logger;
  /** Loads the STS port for a region; called at the first JWT, or before a SnapStart snapshot. */
  loadSts: (region: string) => Promise<GetWebIdentityToken>;
  fetch: FetchLike;
  now?: () => number;
}

/** Runs until SHUTDOWN; resolves with the process exit code. */
export async function run({ env, api, makeLogger, loadSts, fetch, now = Date.now }: RunOptions): Promise<number> {
  const managed = env.AWS_LAMBDA_INITIALIZATION_TYPE === "lambda-managed-instances";
  // Managed Instances refuse an INVOKE registration from an external extension (SPEC §4).
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

  if (!parsed.enabled) {
    const log = makeLogger(parsed.logLevel);
    if (isUnrecognisedSwitch(parsed.enabledValue)) {
      log.warn("DATABRICKS_TOKEN_BROKER_ENABLED is not one of true, 1, on: the broker stays off", { value: parsed.enabledValue });
    }
    log.info("broker disabled: no listener, no token work (set DATABRICKS_TOKEN_BROKER_ENABLED=true to enable)");
    await api.register(EXTENSION_NAME, ["SHUTDOWN"]);
    for (;;) {
      const event = await api.next();
      if (event.eventType === "SHUTDOWN") return 0;
    }
  }

  const config = parsed.config;
  const log = makeLogger(config.logLevel);
  // Settings that work but will surprise (the SDKs' variables, say) never fail the init.
  for (const w of parsed.warnings) log.warn(`${w.detail}; fix: ${w.fix}`, { variable: w.variable });
  // The app is loaded once the first token's path leaves the CPU free (see `serve`).
  let loadApp!: () => void;
  const appWanted = new Promise<void>((r) => (loadApp = r));
  const sts = deferStsPort(() => loadSts(config.region));
  const cache = createBroker(config, {
    getWebIdentityToken: sts.getWebIdentityToken,
    fetch(input, init) {
      const answer = fetch(input, init);
      // The exchange is on the wire: the app loads while Databricks answers.
      setImmediate(loadApp);
      return answer;
    },
    log,
    now,
  });
  const snapStart = config.initializationType === "snap-start";
  if (snapStart) {
    cache.suspend(
      new BrokerError("ERR_SNAPSTART_INIT", "SnapStart: no token is fetched before the snapshot, so none is frozen into it", {
        step: "token",
        retryable: false,
        hint: "ask for the token in the handler, or in a runtime after-restore hook, not in init code",
      }),
    );
  }
  let listener: Listener;
  try {
    // A request should not wait long on a prefetch that waits on a slow or silent STS.
    listener = await listenOnLoopback(config.port, () => setTimeout(loadApp, APP_LOAD_DEFER_MS).unref());
  } catch (err) {
    const why = cannotListen(err, config.port);
    log.error("cannot listen; failing the function's init", { error: why });
    return failInit(api, log, events, "Extension.ListenFailed", `${EXTENSION_NAME}: DATABRICKS_TOKEN_BROKER_PORT: ${why}`);
  }

  // ::1 is bound once the registration request is out, while Lambda answers it. 127.0.0.1 was
  // bound before registering, as SPEC §4 orders; ::1 can wait these few milliseconds, as the
  // runtime, the broker's client, is started only once Lambda has the registration. Run once
  // the answer is in at the latest, for an Extensions API client that does not report the send.
  let ipv6: Promise<unknown> | undefined;
  const afterRegisterSent = () => {
    if (ipv6) return;
    ipv6 = listener.listenOnIpv6();
    // Awaited below; until then a failure must not count as unhandled.
    ipv6.catch(() => {});
    // Nothing is fetched before the snapshot, but the SDK can be in it, loaded.
    if (snapStart) sts.load().catch((err: unknown) => log.warn("could not load the AWS SDK before the snapshot", { error: err }));
  };
  await api.register(EXTENSION_NAME, events, afterRegisterSent);
  afterRegisterSent();
  try {
    await ipv6;
  } catch (err) {
    const why = cannotListen(err, config.port);
    log.error("cannot listen on ::1; failing the function's init", { error: why });
    await listener.close();
    return reportInitError(api, log, "Extension.ListenFailed", `${EXTENSION_NAME}: DATABRICKS_TOKEN_BROKER_PORT: ${why}`);
  }
  log.info("listening", { addresses: listener.addresses.map((a) => `${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`) });
  log.info("registered", {
    events,
    targets: [...config.targets.values()].map((t) => ({ name: t.name, host: t.host, tokenEndpoint: t.tokenEndpoint, clientId: t.clientId ?? null, scope: t.scope })),
    initializationType: config.initializationType,
    node: process.version,
  });
  const sweep = managed ? setInterval(() => cache.refreshDue(), REFRESH_SWEEP_MS).unref() : undefined;
  // Nothing is fetched before a snapshot, so nothing would compete with loading the app; and
  // the snapshot should hold it ready, as it holds the SDK. Elsewhere init need not wait for it.
  if (snapStart) loadApp();
  const app = serve(appWanted, listener, log, { config, cache, sessionToken: env.AWS_SESSION_TOKEN || env.AWS_CONTAINER_AUTHORIZATION_TOKEN || undefined, log, now });
  if (snapStart) await app;

  // The prefetch starts once the first `next` is out: that request ends the extension's init,
  // and Lambda's init phase (billed, and waited for) should not also hold the SDK's loading,
  // some 45 ms of CPU. The registration answer comes back within a millisecond or two, while
  // ::1 is being bound, so the first token starts hardly later for it. An Extensions API
  // client that does not report the send leaves it to the first INVOKE or sweep.
  let prefetching = snapStart;
  const prefetch = () => {
    if (prefetching) return;
    prefetching = true;
    cache.refreshDue();
    // While STS signs the first JWT, the connections to the token endpoints open (preconnect.ts).
    void preconnect(fetch, preconnectUrls(config.targets.values()), log);
    // A prefetch that ended before any exchange (STS refused, say) frees the CPU for the app.
    void cache.settled().then(loadApp);
  };

  for (;;) {
    const event = await api.next(prefetch);
    if (event.eventType === "SHUTDOWN") {
      clearInterval(sweep);
      const budget = Math.max(0, event.deadlineMs - now() - SHUTDOWN_MARGIN_MS);
      log.info("shutting down", { reason: event.shutdownReason, budgetMs: budget });
      // Requests held for the app are answered before the exit, however early SHUTDOWN came.
      loadApp();
      // Requests still waiting for a token must not hold the exit past the deadline.
      await Promise.race([stop(listener, app), new Promise((r) => setTimeout(r, budget).unref())]);
      return 0;
    }
    if (snapStart) cache.resume();
    cache.refreshDue();
    // Lambda may freeze as soon as we ask for the next event: let no refresh freeze half-way.
    // Yet never past the invoke's deadline: Lambda counts this wait against the function's
    // timeout, so a slow upstream would time the function out and reset the environment. A
    // refresh a freeze cuts short fails after the thaw and is retried like any other.
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
 * Loads fastify and builds the app once `wanted` resolves, then hands it the listener's
 * requests, those held until then first. Loading fastify is most of what start-up would
 * otherwise parse and run (about 30 ms of CPU): before registering, it would hold the
 * function's start up; during the SDK's loading or the STS wait (where fetch warms up), it
 * would delay the first token by as much. The exchange's round trip is the first stretch in
 * which the first token's path only waits, so the app is loaded there, and is ready before
 * the token it will serve.
 * Resolves with the app, or undefined when it could not be built: every request is then
 * answered 500 rather than left waiting, and the process lives on.
 */
async function serve(wanted: Promise<void>, listener: Listener, log: Logger, options: AppOptions): Promise<FastifyInstance | undefined> {
  try {
    await wanted;
    const { buildApp } = await import("./app.js");
    const app = buildApp(options);
    await app.ready();
    // fastify hands `routing` to its own server unbound, as a request listener, the same way.
    listener.serve(app.routing);
    return app;
  } catch (err) {
    log.error("could not build the HTTP app; answering every request 500", { error: err });
    const body = JSON.stringify({ error: "internal", message: "internal error" });
    listener.serve((_req, res) => {
      res.writeHead(500, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" }).end(body);
    });
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
