/**
 * Upstream faults against the real extension process (the built layer under the Lambda
 * emulator), with the STS and Databricks stand-ins injecting each fault.
 *
 * Every scenario runs the same script: a healthy start serves token T1; the fault is switched
 * on; while T1 passes through its refresh window and below the minimum TTL, the test keeps
 * asking on both token routes and keeps invoking; then (for faults that pass) the fault is
 * switched off and a fresh token must come. `runScenario` records, `judge` asserts; the storms
 * (a minute of one permanent failure under load) likewise. test/reliability.test.ts runs them.
 */
import { randomBytes } from "node:crypto";
import { expect } from "vitest";
import { ask, crashLines, FAST, fastEnv, logLines, type Observation, type Route, servedWrong, sleep } from "./harness.js";
import { type Stack, startStack, type StackOptions } from "./stack.js";
import type { ShutdownResult } from "./standins/lambda.js";

type Step = "sts" | "exchange";

export interface Fault {
  name: string;
  /** The step the 503 must name. */
  step: Step;
  on(s: Stack): void | Promise<void>;
  /** Switches the fault off; absent for faults that are not retried soon (permanent ones, a long Retry-After). */
  off?(s: Stack): void | Promise<void>;
  /** `code` of the 503 once the fault has been met; none for a tolerated answer, which causes no 503. */
  code?: RegExp;
  /** `upstream_code` of that 503. */
  upstream?: RegExp;
  /** Permanent: no upstream call for the cooldown. */
  permanent?: boolean;
  /** The fault passes by itself (a burst): a fresh token must come without switching it off. */
  heals?: boolean;
  /** The answer is odd but usable: tokens keep being served, no 503. */
  tolerated?: boolean;
  /** Upstream calls one attempt makes (SessionDurationEscalation asks STS again for less). */
  callsPerAttempt?: number;
  /** A rate limit refused the call: the throttled backoff and the last attempts apply. */
  throttled?: boolean;
  /** Minimum wait the fault imposes between attempts (a Retry-After), when longer than the backoff. */
  minGapMs?: number;
  /** How long to keep asking once T1 is no longer servable (slow faults need the timeouts to pass). */
  tailMs?: number;
  stack?: StackOptions;
  /** A request right after the fault is switched on. */
  probe?: { route: Route; query: string };
}

/**
 * A connection closed under a request is tried again once at once (src/pipeline.ts: a kept-alive
 * socket the upstream closed during a freeze), so these faults cost two calls per attempt.
 */
const STALE_RETRY = 2;

const XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/";
const stsXml = (inner: string) =>
  `<GetWebIdentityTokenResponse xmlns="${XMLNS}"><GetWebIdentityTokenResult>${inner}</GetWebIdentityTokenResult>` +
  `<ResponseMetadata><RequestId>5e7c0000-0000-4000-8000-000000000001</RequestId></ResponseMetadata></GetWebIdentityTokenResponse>`;
const HTML = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>";

/** A JWT the Databricks stand-in accepts, for STS answers the test writes itself; it is a secret like any other. */
async function validJwt(s: Stack, lifetimeSeconds = 300): Promise<string> {
  const iat = Math.floor(Date.now() / 1000);
  const jwt = await s.sts.mintJwt({ iss: s.sts.issuer, sub: s.sts.settings.roleArn, aud: "databricks", iat, exp: iat + lifetimeSeconds, jti: randomBytes(8).toString("hex") });
  s.secrets.add(jwt);
  return jwt;
}

/**
 * STS answers carrying a fresh, real JWT each time (as STS gives: the Databricks stand-in
 * refuses a JWT it has exchanged before) and the given Expiration element, or none.
 */
const stsAnswerWith = (expiration: (jwtExp: Date) => string | undefined) => (s: Stack) => {
  s.sts.setFault({ kind: "patch", fields: { Expiration: expiration(new Date(Date.now() + 300_000)) } });
};

const stsFaults: Fault[] = [
  { name: "connection refused", step: "sts", on: (s) => s.sts.refuseConnections(), off: (s) => s.sts.acceptConnections(), code: /^ERR_STS_UNAVAILABLE$/, upstream: /ECONNREFUSED/ },
  { name: "connection dropped mid-answer", step: "sts", on: (s) => s.sts.setFault({ kind: "drop", afterBytes: 120 }), off: (s) => s.sts.clearFault(), code: /^ERR_STS_(UNAVAILABLE|INVALID_RESPONSE)$/, callsPerAttempt: STALE_RETRY },
  { name: "connection reset before answering", step: "sts", on: (s) => s.sts.setFault({ kind: "reset" }), off: (s) => s.sts.clearFault(), code: /^ERR_STS_UNAVAILABLE$/, upstream: /^ECONNRESET$/, callsPerAttempt: STALE_RETRY },
  {
    name: "answers slower than the timeout",
    step: "sts",
    on: (s) => s.sts.setFault({ kind: "delay", ms: 8_000 }),
    off: (s) => s.sts.clearFault(),
    code: /^ERR_STS_UNAVAILABLE$/,
    tailMs: 8_000,
    stack: { env: { DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: "3" } },
  },
  { name: "Throttling (400)", step: "sts", on: (s) => s.sts.setFault({ kind: "error", code: "Throttling", status: 400, message: "Rate exceeded" }), off: (s) => s.sts.clearFault(), code: /^ERR_STS_UNAVAILABLE$/, upstream: /^Throttling$/, throttled: true },
  { name: "429 TooManyRequests", step: "sts", on: (s) => s.sts.setFault({ kind: "error", code: "TooManyRequestsException", status: 429 }), off: (s) => s.sts.clearFault(), code: /^ERR_STS_UNAVAILABLE$/, upstream: /^TooManyRequests$/, throttled: true },
  {
    name: "a burst of 5xx",
    step: "sts",
    on: (s) => {
      s.sts.addFault({ kind: "error", code: "InternalFailure", status: 500 }, 2);
      s.sts.addFault({ kind: "error", code: "ServiceUnavailable", status: 503 }, 2);
    },
    code: /^ERR_STS_UNAVAILABLE$/,
    heals: true,
  },
  { name: "HTML body with 200", step: "sts", on: (s) => s.sts.setFault({ kind: "raw", status: 200, body: HTML }), off: (s) => s.sts.clearFault(), code: /^ERR_STS_(INVALID_RESPONSE|UNAVAILABLE)$/ },
  { name: "HTML body with 502 (a proxy)", step: "sts", on: (s) => s.sts.setFault({ kind: "raw", status: 502, body: HTML }), off: (s) => s.sts.clearFault(), code: /^ERR_STS_UNAVAILABLE$/ },
  {
    name: "truncated XML carrying a JWT",
    step: "sts",
    on: async (s) => {
      const body = stsXml(`<WebIdentityToken>${await validJwt(s)}</WebIdentityToken><Expiration>${new Date(Date.now() + 300_000).toISOString()}</Expiration>`);
      s.sts.setFault({ kind: "raw", status: 200, contentType: "text/xml", body: body.slice(0, body.indexOf("</WebIdentityToken>") + 12) });
    },
    off: (s) => s.sts.clearFault(),
    code: /^ERR_STS_(INVALID_RESPONSE|UNAVAILABLE)$/,
  },
  {
    name: "answer without WebIdentityToken",
    step: "sts",
    on: (s) => s.sts.setFault({ kind: "raw", status: 200, contentType: "text/xml", body: stsXml(`<Expiration>${new Date(Date.now() + 300_000).toISOString()}</Expiration>`) }),
    off: (s) => s.sts.clearFault(),
    code: /^ERR_STS_INVALID_RESPONSE$/,
  },
  { name: "Expiration absent", step: "sts", on: stsAnswerWith(() => undefined), off: (s) => s.sts.clearFault(), code: /^ERR_STS_INVALID_RESPONSE$/ },
  { name: "Expiration in the past (negative lifetime)", step: "sts", on: stsAnswerWith(() => "2001-01-01T00:00:00Z"), off: (s) => s.sts.clearFault(), code: /^ERR_STS_INVALID_RESPONSE$/ },
  { name: "Expiration now (zero lifetime)", step: "sts", on: stsAnswerWith(() => new Date().toISOString()), off: (s) => s.sts.clearFault(), code: /^ERR_STS_INVALID_RESPONSE$/ },
  { name: "Expiration not a date", step: "sts", on: stsAnswerWith(() => "soon"), off: (s) => s.sts.clearFault(), code: /^ERR_STS_(INVALID_RESPONSE|UNAVAILABLE)$/ },
  // The JWT itself is fine; an absurd Expiration must not lend the Databricks token a longer life.
  { name: "Expiration absurd (year 9999)", step: "sts", on: stsAnswerWith(() => "9999-12-31T23:59:59Z"), tolerated: true },
  {
    name: "oversized body (4 MiB, streamed)",
    step: "sts",
    on: (s) => s.sts.setFault({ kind: "raw", status: 200, contentType: "text/xml", body: stsXml(`<WebIdentityToken>${"A".repeat(4 << 20)}</WebIdentityToken>`) }),
    off: (s) => s.sts.clearFault(),
    code: /^ERR_STS_INVALID_RESPONSE$/,
    upstream: /^ResponseTooLarge$/,
  },
  {
    name: "oversized body (4 MiB, Content-Length declared)",
    step: "sts",
    on: (s) => {
      const body = stsXml(`<WebIdentityToken>${"A".repeat(4 << 20)}</WebIdentityToken>`);
      s.sts.setFault({ kind: "raw", status: 200, contentType: "text/xml", headers: { "content-length": String(Buffer.byteLength(body)) }, body });
    },
    off: (s) => s.sts.clearFault(),
    code: /^ERR_STS_INVALID_RESPONSE$/,
    upstream: /^ResponseTooLarge$/,
  },
  {
    name: "SessionDurationEscalation",
    step: "sts",
    on: (s) => s.sts.setFault({ kind: "error", code: "SessionDurationEscalationException", status: 403, message: "The requested token duration would extend the session beyond its original expiration time." }),
    off: (s) => s.sts.clearFault(),
    code: /^ERR_STS_SESSION_DURATION$/,
    upstream: /^SessionDurationEscalation$/,
    // 300 → 150 → 75 → 60 s, then the attempt gives up.
    callsPerAttempt: 4,
  },
  { name: "AccessDenied", step: "sts", on: (s) => s.sts.setFault({ kind: "error", code: "AccessDenied", status: 403 }), code: /^ERR_STS_ACCESS_DENIED$/, upstream: /^AccessDenied$/, permanent: true },
  {
    name: "AccessDenied from the role's policy (real check)",
    step: "sts",
    on: (s) => void (s.sts.settings.allow = { audiences: ["someone-else"] }),
    code: /^ERR_STS_ACCESS_DENIED$/,
    upstream: /^AccessDenied$/,
    permanent: true,
  },
  {
    name: "OutboundWebIdentityFederationDisabledException",
    step: "sts",
    on: (s) => void (s.sts.settings.enabled = false),
    code: /^ERR_STS_FEDERATION_DISABLED$/,
    upstream: /^OutboundWebIdentityFederationDisabled$/,
    permanent: true,
  },
  {
    name: "OutboundWebIdentityFederationDisabled (no suffix)",
    step: "sts",
    on: (s) => s.sts.setFault({ kind: "error", code: "OutboundWebIdentityFederationDisabled", status: 403 }),
    code: /^ERR_STS_FEDERATION_DISABLED$/,
    upstream: /^OutboundWebIdentityFederationDisabled$/,
    permanent: true,
  },
];

/** A 200 whose JSON is cut short after a real-looking token: the token must not be quoted anywhere. */
const truncatedWithToken = (s: Stack) => {
  const token = randomBytes(48).toString("hex");
  s.secrets.add(token);
  s.db.setFault({ kind: "raw", status: 200, contentType: "application/json", body: `{"access_token":"${token}","scope":"all-apis","token_type":"Bearer","expires_in":36` });
};

const dbFaults: Fault[] = [
  { name: "connection refused", step: "exchange", on: (s) => s.db.refuseConnections(), off: (s) => s.db.acceptConnections(), code: /^ERR_EXCHANGE_UNAVAILABLE$/, upstream: /ECONNREFUSED/ },
  { name: "connection dropped mid-answer", step: "exchange", on: (s) => s.db.setFault({ kind: "drop", afterBytes: 40 }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_UNAVAILABLE$/, callsPerAttempt: STALE_RETRY },
  { name: "connection reset before answering", step: "exchange", on: (s) => s.db.setFault({ kind: "reset" }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_UNAVAILABLE$/, callsPerAttempt: STALE_RETRY },
  {
    name: "answers slower than the timeout",
    step: "exchange",
    on: (s) => s.db.setFault({ kind: "delay", ms: 8_000 }),
    off: (s) => s.db.clearFault(),
    code: /^ERR_EXCHANGE_UNAVAILABLE$/,
    upstream: /^timeout$/,
    tailMs: 8_000,
  },
  {
    name: "429 with Retry-After: 1",
    step: "exchange",
    on: (s) => s.db.setFault({ kind: "raw", status: 429, contentType: "application/json", headers: { "retry-after": "1" }, body: '{"error":"rate_limited","error_description":"slow down"}' }),
    off: (s) => s.db.clearFault(),
    code: /^ERR_EXCHANGE_UNAVAILABLE$/,
    upstream: /^rate_limited$/,
    throttled: true,
    minGapMs: 1_000,
  },
  { name: "429 without Retry-After", step: "exchange", on: (s) => s.db.setFault({ kind: "error", status: 429, error: "temporarily_unavailable" }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_UNAVAILABLE$/, upstream: /^temporarily_unavailable$/, throttled: true },
  {
    // A hostile Retry-After is capped (60 s), so it cannot stall refreshes for a day; the cap itself is the wait.
    name: "429 with Retry-After: 86400",
    step: "exchange",
    on: (s) => s.db.setFault({ kind: "raw", status: 429, headers: { "retry-after": "86400" }, body: "Too Many Requests" }),
    code: /^ERR_EXCHANGE_UNAVAILABLE$/,
    throttled: true,
    minGapMs: 60_000,
  },
  {
    name: "a burst of 5xx",
    step: "exchange",
    on: (s) => {
      s.db.addFault({ kind: "error", status: 500, error: "server_error" }, 2);
      s.db.addFault({ kind: "raw", status: 502, body: HTML });
      s.db.addFault({ kind: "error", status: 503, error: "temporarily_unavailable" });
    },
    code: /^ERR_EXCHANGE_UNAVAILABLE$/,
    heals: true,
  },
  { name: "HTML body with 200", step: "exchange", on: (s) => s.db.setFault({ kind: "raw", status: 200, body: HTML }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_INVALID_RESPONSE$/ },
  { name: "HTML body with 502 (a proxy)", step: "exchange", on: (s) => s.db.setFault({ kind: "raw", status: 502, body: HTML }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_UNAVAILABLE$/, upstream: /^HTTP 502$/ },
  { name: "truncated JSON carrying a token", step: "exchange", on: truncatedWithToken, off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_INVALID_RESPONSE$/ },
  { name: "JSON without access_token", step: "exchange", on: (s) => s.db.setFault({ kind: "patch", fields: { access_token: undefined } }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_INVALID_RESPONSE$/ },
  { name: "expires_in negative", step: "exchange", on: (s) => s.db.setFault({ kind: "patch", fields: { expires_in: -3600 } }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_INVALID_RESPONSE$/ },
  { name: "expires_in zero", step: "exchange", on: (s) => s.db.setFault({ kind: "patch", fields: { expires_in: 0 } }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_INVALID_RESPONSE$/ },
  { name: "expires_in absent", step: "exchange", on: (s) => s.db.setFault({ kind: "patch", fields: { expires_in: undefined } }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_INVALID_RESPONSE$/ },
  { name: "expires_in not a number", step: "exchange", on: (s) => s.db.setFault({ kind: "patch", fields: { expires_in: "soon" } }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_INVALID_RESPONSE$/ },
  {
    // Databricks derives a token's life from the JWT's (its token-federation documentation), so
    // the token truly dies with the 60 s JWT; the broker must not believe it lives for days.
    name: "expires_in absurd (1e12)",
    step: "exchange",
    on: (s) => s.db.setFault({ kind: "patch", fields: { expires_in: 1e12 } }),
    tolerated: true,
    stack: { db: { expiresIn: 3600 }, env: { DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "60" } },
    probe: { route: "token", query: "?min_ttl=3600" },
  },
  {
    name: "oversized body (1 MiB)",
    step: "exchange",
    on: (s) => s.db.setFault({ kind: "raw", status: 200, contentType: "application/json", body: JSON.stringify({ access_token: "x", expires_in: 3600, pad: "p".repeat(1 << 20) }) }),
    off: (s) => s.db.clearFault(),
    code: /^ERR_EXCHANGE_INVALID_RESPONSE$/,
  },
  { name: "oversized error body (1 MiB, 500)", step: "exchange", on: (s) => s.db.setFault({ kind: "raw", status: 500, body: "e".repeat(1 << 20) }), off: (s) => s.db.clearFault(), code: /^ERR_EXCHANGE_UNAVAILABLE$/ },
  { name: "invalid_grant", step: "exchange", on: (s) => s.db.setFault({ kind: "error", status: 400, error: "invalid_grant" }), code: /^ERR_EXCHANGE_INVALID_GRANT$/, upstream: /^invalid_grant$/, permanent: true },
  {
    name: "invalid_grant from the federation policy (real check)",
    step: "exchange",
    on: (s) => void (s.db.settings.policy = { ...s.db.settings.policy, subject: "arn:aws:iam::123456789012:role/someone-else" }),
    code: /^ERR_EXCHANGE_INVALID_GRANT$/,
    upstream: /^invalid_grant$/,
    permanent: true,
  },
  { name: "invalid_client", step: "exchange", on: (s) => s.db.setFault({ kind: "error", status: 401, error: "invalid_client" }), code: /^ERR_EXCHANGE_INVALID_CLIENT$/, upstream: /^invalid_client$/, permanent: true },
];

/**
 * The retry policy as documented (README "How it works", SPEC §3), written out here rather
 * than imported, so that a change to the code's constants is caught, not followed: jittered
 * exponential backoff from 500 ms to 30 s, and 30 s without a call after a permanent failure.
 * After a throttled call each step is at least 1 s, after any Retry-After, and a request whose
 * wait the step outlasts may add its two last attempts.
 */
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const COOLDOWN_MS = 30_000;
const THROTTLED_BASE_MS = 1_000;
const LAST_TRIES = 2;

/**
 * The most attempts the cache may make in `windowMs` of one unbroken failure: each waits at
 * least half its backoff step ("equal jitter"), a permanent failure the whole cooldown; a
 * throttled step may carry the last attempts of the one request that took it (one takes each
 * step, each request at most two).
 */
function maxAttempts(windowMs: number, f: Pick<Fault, "permanent" | "minGapMs" | "throttled">): number {
  let attempts = 1;
  let elapsed = 0;
  for (let n = 1; ; n++) {
    const backoff = f.throttled ? THROTTLED_BASE_MS : Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (n - 1)) / 2;
    const gap = f.permanent ? COOLDOWN_MS : Math.max(backoff, f.minGapMs ?? 0);
    elapsed += gap;
    if (elapsed > windowMs) return f.throttled ? attempts * (1 + LAST_TRIES) : attempts;
    attempts += 1;
  }
}

export interface Outcome {
  error?: string;
  obs: Observation[];
  t1?: string;
  /** When the first upstream attempt under the fault began (stand-in arrival, or the failure log). */
  firstAttemptAt?: number;
  windowMs: number;
  attempts: number;
  /** Each attempt under the fault: ms after the fault began, and the backoff it set. */
  attemptTimeline: string;
  stsCalls: number;
  exchanges: number;
  invokeProblems: string[];
  invokes: number;
  recovered?: boolean;
  /** From the fault's end to the first fresh token served. */
  recoveredInMs?: number;
  aliveBeforeShutdown?: boolean;
  shutdown?: ShutdownResult;
  health?: Observation;
  leaks: string[];
  crashes: string[];
  /** What servedWrong() found in every 200, judged while the stand-in's records were at hand. */
  wrong: string[];
}

const logTime = (l: Record<string, unknown>) => Date.parse(String(l.time));

export async function runScenario(f: Fault): Promise<Outcome> {
  const out: Outcome = { obs: [], windowMs: 0, attempts: 0, attemptTimeline: "", stsCalls: 0, exchanges: 0, invokeProblems: [], invokes: 0, leaks: [], crashes: [], wrong: [] };
  const s = await startStack({
    ...f.stack,
    db: { expiresIn: FAST.expiresIn, ...f.stack?.db },
    env: { ...fastEnv(), ...f.stack?.env },
    // Requests come from outside any invoke, all the time, as from concurrent callers: the
    // environment is not frozen between invokes here (e2e.test.ts and the soak freeze it).
    lambda: { freezeWhenIdle: false, ...f.stack?.lambda },
  });
  try {
    const init = await s.lambda.init;
    if (!init.ok) throw new Error(`init ${init.status}: ${JSON.stringify(init)} ${[...s.lambda.stdout, ...s.lambda.stderr].slice(-8).join("\n")}`);
    const first = await ask(s, "token");
    out.obs.push(first);
    if (first.status !== 200) throw new Error(`the healthy start answered ${first.status}: ${JSON.stringify(first.body)}`);
    const t1 = String(first.body.access_token);
    out.t1 = t1;
    const issued = s.db.issuedTokens.find((t) => t.token === t1)!;
    const logFrom = s.lambda.stdout.length;
    const faultOnAt = Date.now();
    await f.on(s);
    if (f.probe) out.obs.push(await ask(s, f.probe.route, f.probe.query));

    const until = issued.expiresAt - FAST.minTtlSeconds * 1000 + (f.heals ? 15_000 : (f.tailMs ?? 2_500));
    let healed = false;
    const done = () => Date.now() >= until || (f.heals === true && healed);
    const asker = async (route: Route) => {
      while (!done()) {
        const o = await ask(s, route);
        out.obs.push(o);
        if (o.status === 200 && o.body.access_token !== t1) healed = true;
        await sleep(150);
      }
    };
    const invoker = async () => {
      while (!done()) {
        try {
          const r = await s.lambda.invoke();
          out.invokes += 1;
          if (r.timedOut) out.invokeProblems.push(`invoke timed out after ${Math.round(r.timings.durationMs)} ms`);
        } catch (err) {
          out.invokeProblems.push(String(err));
          return;
        }
        await sleep(600);
      }
    };
    await Promise.all([asker("token"), asker("metadata"), invoker()]);
    const offAt = Date.now();
    out.windowMs = offAt - faultOnAt;
    const lines = logLines(s, logFrom);
    const attemptLines = lines.filter((l) => (l.msg === "token refresh failed" || l.msg === "token refreshed") && logTime(l) <= offAt);
    out.attempts = attemptLines.length;
    out.attemptTimeline = attemptLines.map((l) => `${logTime(l) - faultOnAt}${l.retryInMs === undefined ? "" : `+${String(l.retryInMs)}`}`).join(" ");
    out.stsCalls = s.sts.calls.filter((c) => c.time >= faultOnAt && c.time <= offAt).length;
    out.exchanges = s.db.exchanges.filter((e) => e.time >= faultOnAt && e.time <= offAt).length;
    const firstCall = f.step === "sts" ? s.sts.calls.find((c) => c.time >= faultOnAt)?.time : s.db.exchanges.find((e) => e.time >= faultOnAt)?.time;
    const firstFailure = attemptLines.find((l) => l.msg === "token refresh failed");
    out.firstAttemptAt = Math.min(firstCall ?? Infinity, firstFailure ? logTime(firstFailure) : Infinity);

    if (f.off) {
      await f.off(s);
      // The longest backoff step may have begun just before the fault ended.
      const deadline = Date.now() + BACKOFF_CAP_MS + 5_000;
      while (Date.now() < deadline) {
        const o = await ask(s, "token");
        out.obs.push(o);
        if (o.status === 200 && o.body.access_token !== t1) {
          out.recovered = true;
          out.recoveredInMs = o.receivedAt - offAt;
          break;
        }
        await sleep(250);
      }
    } else if (f.heals) {
      out.recovered = healed;
    }
    out.health = await ask(s, "health");
    out.aliveBeforeShutdown = s.lambda.alive;
    out.shutdown = await s.lambda.shutdown();
  } catch (err) {
    out.error = String(err);
  } finally {
    out.wrong = out.obs.flatMap((x) => servedWrong(s, x, FAST.minTtlSeconds));
    out.leaks = await s.leaks();
    out.crashes = crashLines(s);
    // close() fails on a leak; the scenario's own test reports the leaks instead.
    await s.close().catch(() => {});
  }
  return out;
}

/** What one scenario's record must show. */
export function judge(f: Fault, o: Outcome): void {
  expect(o.error, "the scenario ran to its end").toBeUndefined();
  expect(o.crashes, "no uncaught error in the extension").toEqual([]);
  expect(o.leaks, "no secret in a log line or an answer").toEqual([]);

  // The process stays up: every invoke finished in time, the process lived to SHUTDOWN and left cleanly.
  expect(o.invokeProblems).toEqual([]);
  expect(o.invokes).toBeGreaterThan(0);
  expect(o.aliveBeforeShutdown).toBe(true);
  expect(o.shutdown).toMatchObject({ code: 0, killed: false });
  expect(o.health?.status).toBe(200);

  // Only documented answers; never a token that is expired, under the minimum TTL or overstated.
  const asked = o.obs.filter((x) => x.route !== "health");
  expect(asked.filter((x) => x.failure !== undefined).map((x) => x.failure)).toEqual([]);
  expect(asked.map((x) => x.status).filter((c) => c !== 200 && c !== 503)).toEqual([]);
  expect(o.wrong).toEqual([]);

  // A still-valid token keeps being served once a refresh under the fault has begun.
  if (!f.tolerated && !f.probe) {
    expect(o.firstAttemptAt, "the fault was met").toBeLessThan(Infinity);
    const servedAfter = asked.filter((x) => x.status === 200 && x.body.access_token === o.t1 && x.receivedAt > o.firstAttemptAt!);
    expect(servedAfter.length, "T1 still served while its refresh failed").toBeGreaterThan(0);
  }

  const unavailable = asked.filter((x) => x.status === 503);
  if (f.tolerated) {
    expect(unavailable.map((x) => x.body.message)).toEqual([]);
  } else if (!f.heals) {
    // The 503 names the failed step, the upstream code and a hint.
    expect(unavailable.length).toBeGreaterThan(0);
    for (const x of unavailable) {
      expect(x.body).toMatchObject({ error: "token_unavailable", step: expect.stringMatching(/^(sts|exchange|token)$/), hint: expect.any(String) });
      expect(String(x.body.message)).toContain(`${String(x.body.step)}`);
    }
    const last = unavailable.at(-1)!.body;
    const timeline = unavailable.map((x) => `${x.receivedAt - o.obs[0]!.receivedAt} ms ${String(x.body.step)} ${String(x.body.code)}`).join("; ");
    expect(last.step, timeline).toBe(f.step);
    expect(String(last.code)).toMatch(f.code ?? /^$/);
    if (f.upstream) expect(String(last.upstream_code)).toMatch(f.upstream);
    expect(String(last.hint).length).toBeGreaterThan(20);
    expect(String(last.message)).toContain(`${f.step}`);
  }

  // No retry storm: attempts within what the backoff or the cooldown allows, whatever the load.
  if (!f.tolerated) {
    const bound = maxAttempts(o.windowMs, f) + 1;
    expect(o.attempts, `attempts in ${o.windowMs} ms (ms after the fault began + backoff: ${o.attemptTimeline})`).toBeLessThanOrEqual(bound);
    const calls = f.step === "sts" ? o.stsCalls : o.exchanges;
    expect(calls).toBeLessThanOrEqual(bound * (f.callsPerAttempt ?? 1));
  }
  if (f.off || f.heals) expect(o.recovered, `a fresh token once the fault passed (${o.windowMs} ms of fault)`).toBe(true);
}

/**
 * A minute of one unbroken failure under load (requests on both routes, /health and invokes
 * all the time): the upstream calls it causes are counted against what the backoff or the
 * cooldown allows. Tokens live seconds here, so the minute spans ten token lifetimes.
 */
export interface Storm {
  name: string;
  step: Step;
  on(s: Stack): void;
  permanent?: boolean;
}
/** STORM_MS shortens the minute when working on the storms. */
const STORM_MS = Number(process.env.STORM_MS ?? 60_000);
export const storms: Storm[] = [
  { name: "STS 500 InternalFailure (transient)", step: "sts", on: (s) => s.sts.setFault({ kind: "error", code: "InternalFailure", status: 500 }) },
  { name: "STS AccessDenied (permanent)", step: "sts", on: (s) => s.sts.setFault({ kind: "error", code: "AccessDenied", status: 403 }), permanent: true },
  { name: "Databricks 503 (transient)", step: "exchange", on: (s) => s.db.setFault({ kind: "error", status: 503, error: "temporarily_unavailable" }) },
  { name: "Databricks invalid_grant (permanent)", step: "exchange", on: (s) => s.db.setFault({ kind: "error", status: 400, error: "invalid_grant" }), permanent: true },
];

export interface StormOutcome {
  error?: string;
  requests: number;
  statuses: Record<number, number>;
  attempts: number;
  stsCalls: number;
  exchanges: number;
  invokes: number;
  invokeProblems: string[];
  windowMs: number;
  wrong: string[];
  leaks: string[];
  crashes: string[];
  alive: boolean;
}

export async function runStorm(st: Storm): Promise<StormOutcome> {
  const out: StormOutcome = { requests: 0, statuses: {}, attempts: 0, stsCalls: 0, exchanges: 0, invokes: 0, invokeProblems: [], windowMs: 0, wrong: [], leaks: [], crashes: [], alive: false };
  // Not frozen between invokes: the load comes from outside any invoke, all the time.
  const s = await startStack({ db: { expiresIn: FAST.expiresIn }, env: fastEnv(), lambda: { freezeWhenIdle: false } });
  const obs: Observation[] = [];
  try {
    const init = await s.lambda.init;
    if (!init.ok) throw new Error(`init ${init.status}: ${JSON.stringify(init)}`);
    const first = await ask(s, "token");
    if (first.status !== 200) throw new Error(`the healthy start answered ${first.status}`);
    const logFrom = s.lambda.stdout.length;
    const onAt = Date.now();
    st.on(s);
    const until = onAt + STORM_MS;
    const asker = async (route: Route, pauseMs: number) => {
      while (Date.now() < until) {
        const o = await ask(s, route);
        out.requests += 1;
        out.statuses[o.status] = (out.statuses[o.status] ?? 0) + 1;
        if (o.status !== 503) obs.push(o);
        await sleep(pauseMs);
      }
    };
    const invoker = async () => {
      while (Date.now() < until) {
        try {
          const r = await s.lambda.invoke();
          out.invokes += 1;
          if (r.timedOut) out.invokeProblems.push("invoke timed out");
        } catch (err) {
          out.invokeProblems.push(String(err));
          return;
        }
        await sleep(200);
      }
    };
    await Promise.all([asker("token", 100), asker("token", 100), asker("metadata", 100), asker("metadata", 100), asker("health", 500), invoker()]);
    const offAt = Date.now();
    out.windowMs = offAt - onAt;
    out.attempts = logLines(s, logFrom).filter((l) => l.msg === "token refresh failed" || l.msg === "token refreshed").length;
    out.stsCalls = s.sts.calls.filter((c) => c.time >= onAt && c.time <= offAt).length;
    out.exchanges = s.db.exchanges.filter((e) => e.time >= onAt && e.time <= offAt).length;
    out.alive = s.lambda.alive;
  } catch (err) {
    out.error = String(err);
  } finally {
    out.wrong = obs.flatMap((x) => servedWrong(s, x, FAST.minTtlSeconds));
    out.leaks = await s.leaks();
    out.crashes = crashLines(s);
    await s.close().catch(() => {});
  }
  return out;
}

/** Every fault scenario, named by the service it hits. */
export const scenarios: Fault[] = [...stsFaults.map((f) => ({ ...f, name: `STS: ${f.name}` })), ...dbFaults.map((f) => ({ ...f, name: `Databricks: ${f.name}` }))];

/** What a storm's record must show. */
export function judgeStorm(st: Storm, o: StormOutcome): void {
  const bound = maxAttempts(o.windowMs, st) + 1;
  expect(o.error).toBeUndefined();
  expect(o.crashes).toEqual([]);
  expect(o.leaks).toEqual([]);
  expect(o.alive).toBe(true);
  expect(o.invokeProblems).toEqual([]);
  expect(o.wrong).toEqual([]);
  expect(o.requests).toBeGreaterThan(o.windowMs / 120);
  expect(Object.keys(o.statuses).filter((c) => c !== "200" && c !== "503")).toEqual([]);
  expect(o.attempts).toBeGreaterThan(0);
  expect(o.attempts).toBeLessThanOrEqual(bound);
  expect(st.step === "sts" ? o.stsCalls : o.exchanges).toBeLessThanOrEqual(bound);
  // An exchange needs a JWT first: a failing STS means no exchange at all.
  if (st.step === "sts") expect(o.exchanges).toBe(0);
}

/** One line of figures for a storm, for the closing note. */
export const stormFigures = (st: Storm, o: StormOutcome) =>
  `storm ${st.name}: ${o.requests} requests ${JSON.stringify(o.statuses)}, ${o.invokes} invokes over ${o.windowMs} ms → ${o.attempts} refresh attempts (bound ${maxAttempts(o.windowMs, st) + 1}), ${o.stsCalls} STS calls, ${o.exchanges} exchanges`;
