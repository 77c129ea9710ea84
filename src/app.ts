/**
 * The HTTP API of SPEC §5, as a fastify app built by a factory: tests call `app.inject()`
 * without a socket; the extension hands it what src/listener.ts receives on loopback.
 */
import * as crypto from "node:crypto";
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest, LogController } from "fastify";
import { type ErrorAnswer, errorAnswer, JSON_TYPE, Refusal, sendError } from "./answers.js";
import { type Config, DEFAULT_TARGET, normalizeHost, type Target } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import type { AccessToken } from "./exchange.js";
import { fingerprint, type Logger } from "./log.js";
import type { TokenCache } from "./token-cache.js";

export interface AppOptions {
  config: Config;
  /** `ready`, where given, answers a cached token without a promise (the hot path); `get` does the rest. */
  cache: Pick<TokenCache, "get" | "health" | "has"> & Partial<Pick<TokenCache, "ready">>;
  /** `AWS_SESSION_TOKEN`, else `AWS_CONTAINER_AUTHORIZATION_TOKEN`; undefined refuses every token request. */
  sessionToken: string | undefined;
  log: Logger;
  now?: () => number;
  /** Called once per token answered, with its target: given only when metrics are on. */
  countServed?: (target: string) => void;
}

export const SESSION_TOKEN_HEADER = "x-aws-session-token";
export const METADATA_VERSION_HEADER = "x-databricks-metadata-version";
export const METADATA_HOST_HEADER = "x-databricks-host";
/** The only metadata-service protocol version the Databricks SDKs speak. */
const METADATA_VERSION = "1";
/** `?min_ttl` range of SPEC §5: one hour is the longest a Databricks token lives. */
const MAX_MIN_TTL = 3600;
/**
 * The longest a `/metadata` request waits for a token: inside the 10 s the Databricks SDKs give
 * the metadata service (databricks-sdk-py `_metadata_service_timeout`, databricks-sdk-go
 * `metadataServiceTimeout`), so the SDK reports the broker's 503 rather than its own timeout.
 */
export const METADATA_WAIT_MS = 8_000;
/**
 * Headers only a proxy adds (RFC 7239, RFC 9110 §7.6.3, and the two common de-facto ones):
 * whoever sent such a request is not the local caller the broker serves. Lower-case, as Node.js keys them.
 */
const PROXY_HEADERS = ["x-forwarded-for", "forwarded", "via", "x-real-ip"] as const;
/** Requests carry no body; a small limit keeps a hostile client from costing memory. */
const BODY_LIMIT = 1024;
const METHODS_NOT_GET = ["DELETE", "HEAD", "PATCH", "POST", "PUT", "OPTIONS"] as const;
const ROUTES = ["/token", "/token/:target", "/metadata", "/metadata/:target", "/health"] as const;

type TargetRequest = FastifyRequest<{ Params: { target?: string } }>;

/** What the routes share, built once per app. */
interface Routing {
  config: Config;
  cache: AppOptions["cache"];
  log: Logger;
  now: () => number;
  /** SHA-256 of the session token, or undefined when the environment has none. */
  expectedSession: Buffer | undefined;
  waitMs: number;
  metadataWaitMs: number;
  /** The last `/token` answer's text per target: nearly every request gets the same one again. */
  tokenTexts: Map<string, { token: AccessToken; expiresIn: number; text: string }>;
  countServed: ((target: string) => void) | undefined;
}

/** SHA-256 in one call where Node.js has `crypto.hash` (20.12+), else through a hash object. */
const digest: (s: string) => Buffer =
  typeof crypto.hash === "function" ? (s) => crypto.hash("sha256", s, "buffer") : (s) => crypto.createHash("sha256").update(s).digest();

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? undefined : v;
}

/**
 * No route declares a schema, yet fastify would otherwise load its default compilers (Ajv,
 * fast-json-stringify) while it is built. This stands in for both, and says so should a schema be added.
 */
const noSchemas = () => () => {
  throw new Error("the broker's app declares no schemas: give buildApp real schema compilers before adding one");
};

/**
 * Builds the fastify app. It never owns a socket: src/listener.ts binds, bounds and answers
 * at the socket level (header size, request timeout, malformed requests, CONNECT, a `Host`
 * not addressed to loopback) and hands every other request to `app.routing`.
 */
export function buildApp({ config, cache, sessionToken, log, now = Date.now, countServed }: AppOptions): FastifyInstance {
  const waitMs = config.waitSeconds * 1000;
  const routing: Routing = {
    config,
    cache,
    log,
    now,
    expectedSession: sessionToken ? digest(sessionToken) : undefined,
    waitMs,
    metadataWaitMs: Math.min(waitMs, METADATA_WAIT_MS),
    tokenTexts: new Map(),
    countServed,
  };
  const app = createFastify(log);
  const token = tokenRoute(routing);
  const metadata = metadataRoute(routing);
  app.get("/token", token);
  app.get("/token/:target", token);
  app.get("/metadata", metadata);
  app.get("/metadata/:target", metadata);
  app.get("/health", healthRoute(cache));
  for (const url of ROUTES) app.route({ method: [...METHODS_NOT_GET], url, handler: notAllowed });
  return app;
}

/** A fastify instance with no logger, no schema compilers, and every error answered as SPEC §5 shapes it. */
function createFastify(log: Logger): FastifyInstance {
  const app = Fastify({
    logger: false,
    // Without this, fastify builds (and times) a record of every request for a logger that drops it.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    routerOptions: { maxParamLength: 100 },
    schemaController: { compilersFactory: { buildValidator: noSchemas, buildSerializer: noSchemas } },
    // HEAD would run the token handler for nothing; it is answered 405 like other methods.
    exposeHeadRoutes: false,
    // At SHUTDOWN a request already in flight gets its real answer, not fastify's bare 503
    // (neither the SPEC's shape nor Cache-Control); the exit deadline bounds the wait.
    return503OnClosing: false,
    // A path that does not decode is refused before routing, so the onRequest hook never runs.
    frameworkErrors: (err, _req, reply) =>
      sendError(reply, errorAnswer("bad_request", err.code === "FST_ERR_BAD_URL" ? "the request path is not valid percent-encoded UTF-8" : err.message)),
  });
  // Callback style rather than async: a promise per request costs more than a cached token answer.
  app.addHook("onRequest", (req, reply, done) => {
    reply.header("cache-control", "no-store");
    const proxied = proxyHeaderOf(req);
    if (proxied === undefined) return done();
    sendError(reply, errorAnswer("bad_request", `requests through a proxy are refused: the broker serves only local callers (${proxied} present)`));
  });
  app.setNotFoundHandler((req, reply) =>
    sendError(reply, errorAnswer("not_found", `no route ${req.method} ${pathOf(req)}; routes: GET /token, /token/{target}, /metadata, /metadata/{target}, /health`)),
  );
  app.setErrorHandler((err: FastifyError | Refusal, _req, reply) => sendError(reply, answerFor(err, log)));
  return app;
}

function proxyHeaderOf(req: FastifyRequest): string | undefined {
  for (const name of PROXY_HEADERS) if (req.headers[name] !== undefined) return name;
  return undefined;
}

/** The answer to an error a route threw: its own when it is a Refusal, else 400, 404 or (logged) 500. */
function answerFor(err: FastifyError | Refusal, log: Logger): ErrorAnswer {
  if (err instanceof Refusal) return err.answer;
  const status = err.statusCode ?? 500;
  if (status >= 500) {
    log.error("request failed", { error: err });
    return errorAnswer("internal", "internal error");
  }
  return errorAnswer(status === 404 ? "not_found" : "bad_request", err.message);
}

const pathOf = (req: FastifyRequest) => req.url.split("?")[0];

/** `GET /token[/{target}]`. Not async: a cached token, the answer to nearly every request, goes out without a promise. */
function tokenRoute(r: Routing) {
  return (req: TargetRequest, reply: FastifyReply): FastifyReply | Promise<FastifyReply> => {
    checkSession(req, r.expectedSession);
    const name = req.params.target ?? DEFAULT_TARGET;
    if (!r.cache.has(name)) throw unknownTarget(name, r.config);
    const minTtlSeconds = minTtlOf(req);
    const ready = r.cache.ready?.(name, { minTtlSeconds });
    if (ready) return sendToken(r, reply, ready, name);
    return awaitToken(r, req, { name, minTtlSeconds, waitMs: r.waitMs }).then((t) => sendToken(r, reply, t, name));
  };
}

/**
 * `GET /metadata[/{target}]`, the Databricks metadata-service protocol. `?min_ttl` is not read:
 * the SDKs never send it, and from any local caller it would force an STS call and an exchange
 * every few seconds. The configured minimum TTL holds here as everywhere.
 */
function metadataRoute(r: Routing) {
  return (req: TargetRequest): MetadataBody | Promise<MetadataBody> => {
    const { name } = metadataTarget(req, r);
    const ready = r.cache.ready?.(name);
    if (ready) return metadataBody(r, ready, name);
    return awaitToken(r, req, { name, minTtlSeconds: undefined, waitMs: r.metadataWaitMs }).then((t) => metadataBody(r, t, name));
  };
}

/** `GET /health`: never a token, only each target's state. */
function healthRoute(cache: AppOptions["cache"]) {
  return async () => {
    const targets = cache.health();
    const ok = Object.values(targets).every((t) => t.state === "fresh" || t.state === "refreshing" || t.state === "stale");
    return { status: ok ? "ok" : "degraded", targets };
  };
}

async function notAllowed(req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
  return sendError(reply, errorAnswer("method_not_allowed", `${req.method} is not allowed; use GET`, { allow: "GET" }));
}

/** Throws 401 or 403 unless the request carries the function's session token; compared in constant time. */
function checkSession(req: FastifyRequest, expected: Buffer | undefined): void {
  const given = header(req, SESSION_TOKEN_HEADER);
  if (given === undefined || given === "") throw new Refusal("unauthorized", `missing ${SESSION_TOKEN_HEADER} header: send the function's AWS_SESSION_TOKEN`);
  if (!expected) throw new Refusal("forbidden", "the environment has no AWS_SESSION_TOKEN or AWS_CONTAINER_AUTHORIZATION_TOKEN to check against");
  // Hashing first makes the lengths equal, so not even the length leaks.
  if (!crypto.timingSafeEqual(digest(given), expected)) throw new Refusal("forbidden", `${SESSION_TOKEN_HEADER} does not match the function's AWS_SESSION_TOKEN`);
}

/** The target a metadata request names; throws 400 (protocol version), 404 (unknown target) or 403 (host). */
function metadataTarget(req: TargetRequest, r: Routing): Target {
  const version = header(req, METADATA_VERSION_HEADER);
  if (version !== METADATA_VERSION) {
    throw new Refusal("bad_request", `${METADATA_VERSION_HEADER} must be ${METADATA_VERSION} (Databricks metadata-service protocol), got ${version === undefined ? "none" : JSON.stringify(version)}`);
  }
  const name = req.params.target ?? DEFAULT_TARGET;
  const target = r.config.targets.get(name);
  if (!target || !r.cache.has(name)) throw unknownTarget(name, r.config);
  const host = header(req, METADATA_HOST_HEADER);
  if (host === undefined || normalizeHost(host) !== target.host) {
    // The right host is not named: whoever guesses wrong learns nothing (issue 12).
    throw new Refusal("forbidden", `${METADATA_HOST_HEADER} is not this target's host: compare the SDK's DATABRICKS_HOST with the broker's`);
  }
  return target;
}

function unknownTarget(name: string, config: Config): Refusal {
  return new Refusal("not_found", `unknown target ${JSON.stringify(name)}; configured: ${[...config.targets.keys()].join(", ")}`);
}

/** `?min_ttl`, or undefined when the request has none; throws 400 when it is not a whole number 0–3600. */
function minTtlOf(req: FastifyRequest): number | undefined {
  const raw = (req.query as Record<string, unknown>).min_ttl;
  if (raw === undefined) return undefined;
  if (typeof raw !== "string" || !/^\d{1,4}$/.test(raw) || Number(raw) > MAX_MIN_TTL) {
    throw new Refusal("bad_request", `min_ttl must be a whole number of seconds from 0 to ${MAX_MIN_TTL}`);
  }
  return Number(raw);
}

interface TokenWait {
  name: string;
  minTtlSeconds: number | undefined;
  waitMs: number;
}

/** Waits for the cache's token; throws 503 naming the failed step, or 500 on anything but a BrokerError. */
async function awaitToken(r: Routing, req: FastifyRequest, { name, minTtlSeconds, waitMs }: TokenWait): Promise<AccessToken> {
  try {
    return await r.cache.get(name, { minTtlSeconds, waitMs });
  } catch (err) {
    if (!isBrokerError(err)) {
      r.log.error("token request failed unexpectedly", { target: name, error: err });
      throw new Refusal("internal", "internal error");
    }
    const e = waitMs < r.waitMs ? cutShort(err, waitMs) : err;
    r.log.warn("token request answered 503", { target: name, path: pathOf(req), code: e.code, step: e.step, upstreamCode: e.upstreamCode });
    throw new Refusal("token_unavailable", `no valid token for target ${name}: ${e.summary()}`, {
      extra: { step: e.step, code: e.code, upstream_code: e.upstreamCode ?? null, hint: e.hint ?? null },
    });
  }
}

/** A wait ended by `/metadata`'s shorter limit gets a hint of its own: raising DATABRICKS_TOKEN_BROKER_WAIT_SECONDS would not help. */
function cutShort(err: BrokerError, waitMs: number): BrokerError {
  if (err.code !== "ERR_TOKEN_WAIT_TIMEOUT") return err;
  return new BrokerError(err.code, err.message, {
    step: err.step,
    retryable: err.retryable,
    hint: `STS or Databricks is slow to answer; /metadata waits at most ${waitMs / 1000} s, inside the Databricks SDKs' 10 s timeout, while the refresh goes on: a later request may find the token (see GET /health)`,
    cause: err,
  });
}

/** Sends a `/token` answer, reusing the last text for this target while token and `expires_in` are unchanged. */
function sendToken(r: Routing, reply: FastifyReply, t: AccessToken, name: string): FastifyReply {
  // The fingerprint is a SHA-256: worth computing only when the line is written.
  if (r.log.level === "debug") r.log.debug("token served", { target: name, route: "token", token: fingerprint(t.accessToken) });
  r.countServed?.(name);
  const expiresIn = Math.floor((t.expiresAt - r.now()) / 1000);
  let last = r.tokenTexts.get(name);
  if (last?.token !== t || last.expiresIn !== expiresIn) {
    const body = { access_token: t.accessToken, token_type: "Bearer", expires_in: expiresIn, expires_on: Math.floor(t.expiresAt / 1000), scope: t.scope, target: name };
    last = { token: t, expiresIn, text: JSON.stringify(body) };
    r.tokenTexts.set(name, last);
  }
  return reply.type(JSON_TYPE).send(last.text);
}

interface MetadataBody {
  access_token: string;
  token_type: "Bearer";
  expires_on: number;
}

function metadataBody(r: Routing, t: AccessToken, name: string): MetadataBody {
  if (r.log.level === "debug") r.log.debug("token served", { target: name, route: "metadata", token: fingerprint(t.accessToken) });
  r.countServed?.(name);
  return { access_token: t.accessToken, token_type: "Bearer", expires_on: Math.floor(t.expiresAt / 1000) };
}
