/**
 * The Databricks exchange: RFC 8693 token exchange of the STS JWT for a Databricks OAuth
 * access token at the workspace or account token endpoint (Databricks "workload identity
 * federation").
 */
import type { Target } from "./config.js";
import { BrokerError, MAX_QUOTED_CODE_CHARS, quoteUpstream } from "./errors.js";
import type { Logger } from "./log.js";

export interface AccessToken {
  readonly accessToken: string;
  readonly tokenType: string;
  readonly scope: string;
  /** Unix ms: `expires_in` counted from when the request was sent (SPEC §3). */
  readonly expiresAt: number;
  /** Unix ms when the request was sent. */
  readonly issuedAt: number;
}

/** What the exchange reads of an HTTP answer: `fetch`'s Response has it, and so has src/http-post.ts's. */
export interface HttpAnswer {
  readonly status: number;
  readonly ok: boolean;
  readonly statusText: string;
  readonly headers: { get(name: string): string | null };
  readonly body: AsyncIterable<Uint8Array> | null;
}

/** The exchange's HTTP client: `fetch` fits, and so does src/http-post.ts's `httpPost`, which the extension uses. */
export type HttpPost = (input: string, init: { method: "POST"; headers: Record<string, string>; body: string; redirect: "error"; signal: AbortSignal }) => Promise<HttpAnswer>;

/** `fetch` as the CLI injects it (its API check reads the whole Response). */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface ExchangeOptions {
  fetch: HttpPost;
  now: () => number;
  log: Logger;
  timeoutMs?: number;
}

/** RFC 8693 §2.1 and Databricks' token-federation documentation. */
const GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange";
const SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";
/** Databricks answers in well under a second; 5 s covers a cold TLS handshake. */
export const EXCHANGE_TIMEOUT_MS = 5_000;
/** A token answer is a few hundred bytes; anything past this is not one, and reading it would only cost memory. */
export const MAX_BODY_BYTES = 64 * 1024;
/**
 * Lifetimes beyond a day are not believed: Databricks issues one-hour tokens, and a
 * misread lifetime would have the broker serve a token long after Databricks expired it.
 */
export const MAX_LIFETIME_SECONDS = 86_400;
/** Upper bound on a `Retry-After` we honour, so a hostile header cannot stall refreshes. */
const MAX_RETRY_AFTER_MS = 60_000;
/** Bearer tokens are header values: visible ASCII only (RFC 6750 §2.1 b64token, loosened). */
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

/** Reads at most `limit` bytes of a body; undefined when it is larger (the rest is dropped, not read). */
export async function readLimited(res: HttpAnswer, limit: number): Promise<string | undefined> {
  if (!res.body) return "";
  const declared = Number(res.headers.get("content-length"));
  // Leaving the loop early (return) cancels the stream: fetch's body and node:http's response alike.
  if (Number.isFinite(declared) && declared > limit) {
    for await (const _ of res.body) return undefined;
    return undefined;
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body) {
    size += chunk.byteLength;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function parseJson(text: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function retryAfterMs(res: HttpAnswer, now: number): number | undefined {
  const h = res.headers.get("retry-after");
  if (!h) return undefined;
  const secs = Number(h);
  const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(h) - now;
  return Number.isFinite(ms) && ms > 0 ? Math.min(ms, MAX_RETRY_AFTER_MS) : undefined;
}

/** A body that is not JSON (an HTML error page from a proxy, say) is quoted shorter still. */
const EXCERPT_CHARS = 120;

/**
 * What a 200 body that is not a token answer looks like, without quoting it: a token answer
 * cut short still carries the token, which must reach neither a log nor a 503.
 */
function shapeOf(text: string): string {
  const t = text.trimStart();
  const kind = t === "" ? "empty" : t.startsWith("<") ? "HTML or XML" : t.startsWith("{") || t.startsWith("[") ? "malformed or cut-short JSON" : "text";
  return `${kind}, ${Buffer.byteLength(text)} bytes`;
}

const HINTS: Record<string, string> = {
  invalid_grant:
    "no Databricks federation policy accepts this JWT: the policy's issuer must be the account's outbound-federation issuer URL, its audiences must include DATABRICKS_TOKEN_BROKER_AUDIENCE, and its subject must be the execution role's ARN",
  invalid_client:
    "DATABRICKS_CLIENT_ID must be the application ID of the service principal that owns the federation policy; omit it for an account-wide policy",
  invalid_scope: "DATABRICKS_TOKEN_BROKER_SCOPE names a scope Databricks does not grant (all-apis is the usual one)",
  invalid_request: "check DATABRICKS_HOST, DATABRICKS_ACCOUNT_ID and DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT",
  unauthorized_client: "the service principal may not use token federation; check its federation policy",
};

/** Maps a non-2xx answer to a typed error. */
function httpError(target: Target, res: HttpAnswer, body: Record<string, unknown> | undefined, text: string, now: number): BrokerError {
  const code = typeof body?.error === "string" ? body.error : typeof body?.error_code === "string" ? body.error_code : `HTTP ${res.status}`;
  const upstream = quoteUpstream(code, MAX_QUOTED_CODE_CHARS);
  const description = quoteUpstream(
    typeof body?.error_description === "string" ? body.error_description : typeof body?.message === "string" ? body.message : quoteUpstream(text, EXCERPT_CHARS) || res.statusText,
  );
  const message = `Databricks ${target.tokenEndpoint} answered ${res.status}: ${description}`;
  const opts = { step: "exchange" as const, upstreamCode: upstream };
  if (res.status === 429 || res.status >= 500 || upstream === "temporarily_unavailable") {
    const after = retryAfterMs(res, now);
    return new BrokerError("ERR_EXCHANGE_UNAVAILABLE", message, {
      ...opts,
      retryable: true,
      throttled: res.status === 429,
      hint: res.status === 429 ? "Databricks is rate-limiting token requests; the broker backs off" : "a Databricks fault; the broker retries with backoff",
      ...(after !== undefined ? { retryAfterMs: after } : {}),
    });
  }
  if (upstream === "invalid_grant") return new BrokerError("ERR_EXCHANGE_INVALID_GRANT", message, { ...opts, retryable: false, hint: HINTS.invalid_grant });
  if (upstream === "invalid_client" || res.status === 401) {
    return new BrokerError("ERR_EXCHANGE_INVALID_CLIENT", message, { ...opts, retryable: false, hint: HINTS.invalid_client });
  }
  // Own keys only: an upstream code such as "constructor" must not pick up Object's.
  const hint = Object.hasOwn(HINTS, upstream)
    ? HINTS[upstream]!
    : res.status === 404
      ? "no token endpoint at this URL: check DATABRICKS_HOST, DATABRICKS_ACCOUNT_ID and DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT"
      : "check the target's host, account ID, client ID and scope";
  return new BrokerError("ERR_EXCHANGE_REJECTED", message, { ...opts, retryable: false, hint });
}

function invalidResponse(target: Target, why: string): BrokerError {
  return new BrokerError("ERR_EXCHANGE_INVALID_RESPONSE", `Databricks ${target.tokenEndpoint} answered 200 but ${why}`, {
    step: "exchange",
    retryable: true,
    hint: "a proxy or a wrong DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT may be answering instead of Databricks",
  });
}

/** The JWT to exchange: the subject token, and when it expires (Unix ms), which bounds the token's life. */
export interface SubjectToken {
  readonly jwt: string;
  readonly expiresAt?: number;
}

/**
 * Returns a function that exchanges one STS JWT for a Databricks access token for `target`.
 */
export function createExchange({ fetch, now, log, timeoutMs = EXCHANGE_TIMEOUT_MS }: ExchangeOptions) {
  /** POSTs the form; the answer's status and its body (undefined when over the limit), or an unreachable error. */
  async function post(target: Target, form: URLSearchParams, signal: AbortSignal | undefined): Promise<{ res: HttpAnswer; text: string | undefined }> {
    const timeout = AbortSignal.timeout(timeoutMs);
    try {
      const res = await fetch(target.tokenEndpoint, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
        body: form.toString(),
        redirect: "error",
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
      return { res, text: await readLimited(res, MAX_BODY_BYTES) };
    } catch (err) {
      const timedOut = timeout.aborted;
      // fetch puts the system error's code in `cause`; node:http's error carries it itself.
      const { code: own, cause } = err as { code?: unknown; cause?: { code?: unknown } };
      const code = timedOut ? "timeout" : typeof cause?.code === "string" ? cause.code : typeof own === "string" && own !== "ABORT_ERR" ? own : (err as Error).name;
      throw new BrokerError(
        "ERR_EXCHANGE_UNAVAILABLE",
        timedOut ? `Databricks ${target.tokenEndpoint} did not answer within ${timeoutMs} ms` : `Databricks ${target.tokenEndpoint} could not be reached: ${(err as Error).message}`,
        {
          step: "exchange",
          retryable: true,
          upstreamCode: code,
          hint: "a network fault; the broker retries with backoff. In a VPC, the function needs a route to the workspace (NAT gateway or PrivateLink)",
          cause: err,
        },
      );
    }
  }

  /** The lifetime to believe, in seconds: one beyond a day is capped at what the JWT had left. */
  function believedLifetime(target: Target, rawLifetime: number, subject: SubjectToken, sentAt: number): number {
    if (rawLifetime <= MAX_LIFETIME_SECONDS) return rawLifetime;
    // Databricks derives a token's lifetime from the federated JWT's ("Authenticate with an
    // identity provider token"), so the token dies with the JWT at the latest.
    const jwtLeft = subject.expiresAt === undefined ? MAX_LIFETIME_SECONDS : Math.max(0, (subject.expiresAt - sentAt) / 1000);
    const lifetime = Math.min(MAX_LIFETIME_SECONDS, jwtLeft);
    log.warn("Databricks token lifetime beyond one day is not believed; capping it", { target: target.name, expiresIn: rawLifetime, cap: Math.floor(lifetime) });
    return lifetime;
  }

  return async function exchange(target: Target, subject: SubjectToken, signal?: AbortSignal): Promise<AccessToken> {
    const form = new URLSearchParams({
      grant_type: GRANT_TYPE,
      subject_token: subject.jwt,
      subject_token_type: SUBJECT_TOKEN_TYPE,
      scope: target.scope,
    });
    if (target.clientId !== undefined) form.set("client_id", target.clientId);
    const sentAt = now();
    const { res, text } = await post(target, form, signal);
    if (text === undefined) {
      if (!res.ok) throw httpError(target, res, undefined, "", now());
      throw invalidResponse(target, `with a body over ${MAX_BODY_BYTES} bytes`);
    }
    const body = parseJson(text);
    if (!res.ok) throw httpError(target, res, body, text, now());
    if (!body) throw invalidResponse(target, `with a body that is not a JSON object (${shapeOf(text)})`);
    const accessToken = body.access_token;
    if (typeof accessToken !== "string" || !TOKEN_CHARS.test(accessToken)) {
      throw invalidResponse(target, "without a usable access_token");
    }
    const tokenType = typeof body.token_type === "string" ? body.token_type : "Bearer";
    if (tokenType.toLowerCase() !== "bearer") throw invalidResponse(target, `with token_type ${JSON.stringify(tokenType)}, not Bearer`);
    const rawLifetime = typeof body.expires_in === "string" ? Number(body.expires_in) : body.expires_in;
    if (typeof rawLifetime !== "number" || !Number.isFinite(rawLifetime) || rawLifetime <= 0) {
      throw invalidResponse(target, `with expires_in ${JSON.stringify(body.expires_in)}, not a positive number of seconds`);
    }
    return {
      accessToken,
      tokenType: "Bearer",
      scope: typeof body.scope === "string" ? body.scope : target.scope,
      issuedAt: sentAt,
      expiresAt: sentAt + Math.floor(believedLifetime(target, rawLifetime, subject, sentAt) * 1000),
    };
  };
}

export type Exchange = ReturnType<typeof createExchange>;
