/**
 * The HTTP API of SPEC §5, as a fastify app built by a factory: tests call `app.inject()`
 * without a socket; the extension hands it what src/listener.ts receives on loopback.
 */
import * as crypto from "node:crypto";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest, LogController } from "fastify";
import { type Config, DEFAULT_TARGET, normalizeHost } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import type { AccessToken } from "./exchange.js";
import { fingerprint, type Logger, redact } from "./log.js";
import type { TokenCache } from "./token-cache.js";

export interface AppOptions {
  config: Config;
  /** `ready`, where given, answers a cached token without a promise (the hot path); `get` does the rest. */
  cache: Pick<TokenCache, "get" | "health" | "has"> & Partial<Pick<TokenCache, "ready">>;
  /** `AWS_SESSION_TOKEN`, else `AWS_CONTAINER_AUTHORIZATION_TOKEN`; undefined refuses every token request. */
  sessionToken: string | undefined;
  log: Logger;
  now?: () => number;
}

export const SESSION_TOKEN_HEADER = "x-aws-session-token";
export const METADATA_VERSION_HEADER = "x-databricks-metadata-version";
export const METADATA_HOST_HEADER = "x-databricks-host";
/** The only metadata-service protocol version the Databricks SDKs speak. */
const METADATA_VERSION = "1";
/** `?min_ttl` range of SPEC §5: one hour is the longest a Databricks token lives. */
const MAX_MIN_TTL = 3600;
/**
 * The longest a `/metadata` request waits for a token (less where DATABRICKS_TOKEN_BROKER_WAIT_SECONDS
 * is lower). The SDKs give the metadata service 10 s: databricks-sdk-py
 * `MetadataServiceTokenSource._metadata_service_timeout = 10`, databricks-sdk-go
 * `metadataServiceTimeout = 10 * time.Second`. Answering by 8 s leaves 2 s for the round trip
 * on a loaded machine, so the SDK reports the broker's 503 (which step failed, and why)
 * rather than its own timeout. `/token` callers set their own timeout, and keep the full wait.
 */
export const METADATA_WAIT_MS = 8_000;
/** Requests carry no body; a small limit keeps a hostile client from costing memory. */
const BODY_LIMIT = 1024;
const METHODS_NOT_GET = ["DELETE", "HEAD", "PATCH", "POST", "PUT", "OPTIONS"] as const;
/** What fastify sets on JSON it serializes itself; the token answers, sent as text, say the same. */
const JSON_TYPE = "application/json; charset=utf-8";

type ErrorCode = "bad_request" | "unauthorized" | "forbidden" | "not_found" | "method_not_allowed" | "token_unavailable" | "internal";
const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  token_unavailable: 503,
  internal: 500,
};

/** Answers an error as SPEC §5 shapes it; the one place that maps codes to statuses. */
function fail(reply: FastifyReply, code: ErrorCode, message: string, extra?: Record<string, unknown>): FastifyReply {
  return reply.code(STATUS[code]).send({ error: code, message: redact(message), ...extra });
}

/**
 * SHA-256 of every session token a request carries. Node.js 20.12+ has a one-shot `hash`, about
 * twice as fast as a hash object and without its garbage; older 20.x lines (the namespace import
 * lets the name be missing) build the object.
 */
const digest: (s: string) => Buffer =
  typeof crypto.hash === "function" ? (s) => crypto.hash("sha256", s, "buffer") : (s) => crypto.createHash("sha256").update(s).digest();

/** Compares in constant time: hashing first makes lengths equal, so not even length leaks. */
function sameSecret(given: string, expected: Buffer): boolean {
  return crypto.timingSafeEqual(digest(given), expected);
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? undefined : v;
}

/**
 * No route declares a schema, yet fastify would otherwise load its default compilers (Ajv,
 * fast-json-stringify) while it is built: start-up time spent on nothing. This stands in for
 * both, and says so should a schema ever be added.
 */
const noSchemas = () => () => {
  throw new Error("the broker's app declares no schemas: give buildApp real schema compilers before adding one");
};

/**
 * Builds the fastify app. It never owns a socket: src/listener.ts binds, bounds and answers
 * at the socket level (header size, request timeout, malformed requests, CONNECT) and hands
 * every request to `app.routing`.
 */
export function buildApp({ config, cache, sessionToken, log, now = Date.now }: AppOptions): FastifyInstance {
  const app = Fastify({
    logger: false,
    // With no logger, fastify would still build a record of every request and response (and
    // time it) to hand to a logger that drops it.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    routerOptions: { maxParamLength: 100 },
    schemaController: { compilersFactory: { buildValidator: noSchemas, buildSerializer: noSchemas } },
    // HEAD would run the token handler for nothing; it is answered 405 like other methods.
    exposeHeadRoutes: false,
    // At SHUTDOWN the listener stops accepting first; a request already in flight still gets
    // its real answer rather than fastify's bare 503, which has neither the SPEC's shape nor
    // Cache-Control, and the exit deadline bounds the wait.
    return503OnClosing: false,
    // A path that does not decode is refused before routing, so the onRequest hook never runs.
    frameworkErrors: (err, _req, reply) => {
      reply.header("cache-control", "no-store");
      if (err.code === "FST_ERR_BAD_URL") return fail(reply, "bad_request", "the request path is not valid percent-encoded UTF-8");
      return fail(reply, "bad_request", err.message);
    },
  });
  const expectedSession = sessionToken ? digest(sessionToken) : undefined;
  const waitMs = config.waitSeconds * 1000;
  const metadataWaitMs = Math.min(waitMs, METADATA_WAIT_MS);

  // Callback style rather than async: this runs on every request, and a promise per hook is
  // measurable against a token answer that is otherwise a few map lookups.
  app.addHook("onRequest", (req, reply, done) => {
    reply.header("cache-control", "no-store");
    if (req.headers["x-forwarded-for"] !== undefined) {
      fail(reply, "bad_request", "requests through a proxy are refused: the broker serves only local callers (X-Forwarded-For present)");
      return;
    }
    done();
  });

  app.setNotFoundHandler((req, reply) => fail(reply, "not_found", `no route ${req.method} ${req.url.split("?")[0]}; routes: GET /token, /token/{target}, /metadata, /metadata/{target}, /health`));
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    const status = err.statusCode ?? 500;
    if (status >= 500) {
      log.error("request failed", { error: err });
      return fail(reply, "internal", "internal error");
    }
    if (status === 404) return fail(reply, "not_found", err.message);
    return fail(reply, "bad_request", err.message);
  });

  const minTtlOf = (req: FastifyRequest, reply: FastifyReply): number | undefined | FastifyReply => {
    const q = req.query as Record<string, unknown>;
    const raw = q.min_ttl;
    if (raw === undefined) return undefined;
    if (typeof raw !== "string" || !/^\d{1,4}$/.test(raw) || Number(raw) > MAX_MIN_TTL) {
      return fail(reply, "bad_request", `min_ttl must be a whole number of seconds from 0 to ${MAX_MIN_TTL}`);
    }
    return Number(raw);
  };

  async function token(req: FastifyRequest, reply: FastifyReply, name: string, minTtl: number | undefined, wait: number): Promise<AccessToken | FastifyReply> {
    try {
      return await cache.get(name, { minTtlSeconds: minTtl, waitMs: wait });
    } catch (err) {
      if (!isBrokerError(err)) {
        log.error("token request failed unexpectedly", { target: name, error: err });
        return fail(reply, "internal", "internal error");
      }
      // Cut short by the SDKs' timeout, not by DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: raising that would not help.
      const e: BrokerError =
        err.code === "ERR_TOKEN_WAIT_TIMEOUT" && wait < waitMs
          ? new BrokerError(err.code, err.message, {
              step: err.step,
              retryable: err.retryable,
              hint: `STS or Databricks is slow to answer; /metadata waits at most ${wait / 1000} s, inside the Databricks SDKs' 10 s timeout, while the refresh goes on: a later request may find the token (see GET /health)`,
              cause: err,
            })
          : err;
      log.warn("token request answered 503", { target: name, path: req.url.split("?")[0], code: e.code, step: e.step, upstreamCode: e.upstreamCode });
      return fail(reply, "token_unavailable", `no valid token for target ${name}: ${e.summary()}`, {
        step: e.step,
        code: e.code,
        upstream_code: e.upstreamCode ?? null,
        hint: e.hint ?? null,
      });
    }
  }

  /**
   * The last answer's text per route and target. Nearly every request gets the same token with
   * the same `expires_in` as the one before it, so the text is reused rather than built and
   * serialized again: about 1 µs of the 22 µs of CPU a cached answer costs under load (npm run
   * bench, "server CPU time per answer"), and less garbage.
   */
  const answered = new Map<string, { token: AccessToken; expiresIn: number; text: string }>();
  const answer = (reply: FastifyReply, key: string, t: AccessToken, expiresIn: number, body: () => object): FastifyReply => {
    let last = answered.get(key);
    if (last?.token !== t || last.expiresIn !== expiresIn) {
      last = { token: t, expiresIn, text: JSON.stringify(body()) };
      answered.set(key, last);
    }
    return reply.type(JSON_TYPE).send(last.text);
  };

  const tokenBody = (reply: FastifyReply, t: AccessToken, name: string) => {
    // The fingerprint is a SHA-256: worth computing only when the line is written.
    if (log.level === "debug") log.debug("token served", { target: name, route: "token", token: fingerprint(t.accessToken) });
    const expiresIn = Math.floor((t.expiresAt - now()) / 1000);
    return answer(reply, `token ${name}`, t, expiresIn, () => ({
      access_token: t.accessToken,
      token_type: "Bearer",
      expires_in: expiresIn,
      expires_on: Math.floor(t.expiresAt / 1000),
      scope: t.scope,
      target: name,
    }));
  };

  // Not async: a cached token, the answer to nearly every request, goes out without a promise.
  const tokenRoute = (req: FastifyRequest<{ Params: { target?: string } }>, reply: FastifyReply) => {
    const given = header(req, SESSION_TOKEN_HEADER);
    if (given === undefined || given === "") return fail(reply, "unauthorized", `missing ${SESSION_TOKEN_HEADER} header: send the function's AWS_SESSION_TOKEN`);
    if (!expectedSession) return fail(reply, "forbidden", "the environment has no AWS_SESSION_TOKEN or AWS_CONTAINER_AUTHORIZATION_TOKEN to check against");
    if (!sameSecret(given, expectedSession)) return fail(reply, "forbidden", `${SESSION_TOKEN_HEADER} does not match the function's AWS_SESSION_TOKEN`);
    const name = req.params.target ?? DEFAULT_TARGET;
    if (!cache.has(name)) return fail(reply, "not_found", `unknown target ${JSON.stringify(name)}; configured: ${[...config.targets.keys()].join(", ")}`);
    const minTtl = minTtlOf(req, reply);
    if (typeof minTtl === "object") return minTtl;
    const ready = cache.ready?.(name, { minTtlSeconds: minTtl });
    if (ready) return tokenBody(reply, ready, name);
    return token(req, reply, name, minTtl, waitMs).then((t) => ("accessToken" in t ? tokenBody(reply, t, name) : t));
  };

  const metadataBody = (t: AccessToken, name: string) => {
    if (log.level === "debug") log.debug("token served", { target: name, route: "metadata", token: fingerprint(t.accessToken) });
    return { access_token: t.accessToken, token_type: "Bearer", expires_on: Math.floor(t.expiresAt / 1000) };
  };

  const metadataRoute = (req: FastifyRequest<{ Params: { target?: string } }>, reply: FastifyReply) => {
    const version = header(req, METADATA_VERSION_HEADER);
    if (version !== METADATA_VERSION) {
      return fail(reply, "bad_request", `${METADATA_VERSION_HEADER} must be ${METADATA_VERSION} (Databricks metadata-service protocol), got ${version === undefined ? "none" : JSON.stringify(version)}`);
    }
    const name = req.params.target ?? DEFAULT_TARGET;
    const target = config.targets.get(name);
    if (!target || !cache.has(name)) return fail(reply, "not_found", `unknown target ${JSON.stringify(name)}; configured: ${[...config.targets.keys()].join(", ")}`);
    const host = header(req, METADATA_HOST_HEADER);
    if (host === undefined || normalizeHost(host) !== target.host) {
      return fail(reply, "forbidden", `${METADATA_HOST_HEADER} must be this target's host (${target.host}); the SDK's DATABRICKS_HOST must match the broker's`);
    }
    const minTtl = minTtlOf(req, reply);
    if (typeof minTtl === "object") return minTtl;
    const ready = cache.ready?.(name, { minTtlSeconds: minTtl });
    if (ready) return metadataBody(ready, name);
    return token(req, reply, name, minTtl, metadataWaitMs).then((t) => ("accessToken" in t ? metadataBody(t, name) : t));
  };

  app.get("/token", tokenRoute);
  app.get("/token/:target", tokenRoute);
  app.get("/metadata", metadataRoute);
  app.get("/metadata/:target", metadataRoute);
  app.get("/health", async () => {
    const targets = cache.health();
    const ok = Object.values(targets).every((t) => t.state === "fresh" || t.state === "refreshing" || t.state === "stale");
    return { status: ok ? "ok" : "degraded", targets };
  });
  const notAllowed = async (req: FastifyRequest, reply: FastifyReply) => {
    reply.header("allow", "GET");
    return fail(reply, "method_not_allowed", `${req.method} is not allowed; use GET`);
  };
  for (const url of ["/token", "/token/:target", "/metadata", "/metadata/:target", "/health"]) {
    app.route({ method: [...METHODS_NOT_GET], url, handler: notAllowed });
  }
  return app;
}
