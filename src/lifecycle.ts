/**
 * The extension's life in Lambda (SPEC §4): check the configuration, listen, register,
 * prefetch without holding init up, refresh on each INVOKE and settle before the next
 * event, and leave cleanly on SHUTDOWN. Everything it touches comes in as an argument;
 * only `extension/main.ts` touches `process`.
 */
import type { AddressInfo } from "node:net";
import { buildApp } from "./app.js";
import { createBroker } from "./broker.js";
import { type Config, type LogLevel, isLoopbackHostname, isUnrecognisedSwitch, parseConfig } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import type { FetchLike } from "./exchange.js";
import type { EventType, ExtensionsApi } from "./extensions-api.js";
import type { Logger } from "./log.js";
import { preloadSdk, type StsLike } from "./sts.js";

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
  makeSts: (config: Config) => StsLike;
  fetch: FetchLike;
  now?: () => number;
}

/** Runs until SHUTDOWN; resolves with the process exit code. */
export async function run({ env, api, makeLogger, makeSts, fetch, now = Date.now }: RunOptions): Promise<number> {
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
  const cache = createBroker(config, { sts: makeSts(config), fetch, log, now });
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
  const app = buildApp({ config, cache, sessionToken: env.AWS_SESSION_TOKEN || env.AWS_CONTAINER_AUTHORIZATION_TOKEN || undefined, log, now });
  try {
    // `localhost` makes fastify bind every loopback address it resolves to: 127.0.0.1, and ::1 where the host has it.
    await app.listen({ host: "localhost", port: config.port });
    const bound = app.addresses().filter((a): a is AddressInfo => typeof a !== "string");
    const outside = bound.filter((a) => !isLoopbackHostname(a.address));
    if (outside.length > 0) throw new Error(`localhost resolved to non-loopback ${outside.map((a) => a.address).join(", ")}`);
    log.info("listening", { addresses: bound.map((a) => `${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`) });
  } catch (err) {
    await app.close().catch(() => {});
    const why = (err as { code?: string }).code === "EADDRINUSE" ? `port ${config.port} is in use; set DATABRICKS_TOKEN_BROKER_PORT to a free one` : (err as Error).message;
    log.error("cannot listen; failing the function's init", { error: why });
    return failInit(api, log, events, "Extension.ListenFailed", `${EXTENSION_NAME}: DATABRICKS_TOKEN_BROKER_PORT: ${why}`);
  }

  await api.register(EXTENSION_NAME, events);
  log.info("registered", {
    events,
    targets: [...config.targets.values()].map((t) => ({ name: t.name, host: t.host, tokenEndpoint: t.tokenEndpoint, clientId: t.clientId ?? null, scope: t.scope })),
    initializationType: config.initializationType,
    node: process.version,
  });
  if (!snapStart) cache.refreshDue();
  // Nothing is fetched before the snapshot, but the SDK can be in it (see preloadSdk).
  else preloadSdk().catch((err: unknown) => log.warn("could not load the AWS SDK before the snapshot", { error: err }));
  const sweep = managed ? setInterval(() => cache.refreshDue(), REFRESH_SWEEP_MS).unref() : undefined;

  for (;;) {
    const event = await api.next();
    if (event.eventType === "SHUTDOWN") {
      clearInterval(sweep);
      const budget = Math.max(0, event.deadlineMs - now() - SHUTDOWN_MARGIN_MS);
      log.info("shutting down", { reason: event.shutdownReason, budgetMs: budget });
      // Requests still waiting for a token must not hold the exit past the deadline.
      await Promise.race([app.close(), new Promise((r) => setTimeout(r, budget).unref())]);
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

/** Registers (the error call needs an identifier), reports the init error, and gives the exit code. */
async function failInit(api: ExtensionsApi, log: Logger, events: EventType[], errorType: string, message: string): Promise<number> {
  try {
    await api.register(EXTENSION_NAME, events);
    await api.initError(errorType, message);
  } catch (err) {
    log.error("could not report the init error to Lambda", { error: err });
  }
  return 1;
}
