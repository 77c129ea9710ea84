/**
 * `/health` in each of its states (SPEC §5), one step at a time on a moved clock, through the
 * real app and token cache with a token source the test answers by hand: empty, fetching,
 * fresh, refreshing, stale (a refresh failed, the token still served), unavailable.
 */
import { afterEach, describe, expect, it } from "vitest";
import { buildApp } from "../src/app.js";
import { parseConfig } from "../src/config.js";
import { BrokerError } from "../src/errors.js";
import type { AccessToken } from "../src/exchange.js";
import { silentLogger } from "../src/log.js";
import { TokenCache } from "../src/token-cache.js";

const T0 = Date.UTC(2026, 10, 29, 12);
const LIFE_MS = 3_600_000;
/** The refresh window opens 600 s before expiry; nothing is served under 120 s. */
const REFRESH_AHEAD_S = 600;
const MIN_TTL_S = 120;

interface Pending {
  resolve: (t: AccessToken) => void;
  reject: (e: unknown) => void;
}

const apps: ReturnType<typeof buildApp>[] = [];
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

function setup() {
  const parsed = parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: "true", DATABRICKS_HOST: "https://dbc-1234.cloud.databricks.com", AWS_REGION: "us-east-1" });
  if (!parsed.enabled) throw new Error("config");
  const clock = { t: T0 };
  const pending: Pending[] = [];
  let n = 0;
  const cache = new TokenCache({
    targets: parsed.config.targets,
    refreshAheadSeconds: REFRESH_AHEAD_S,
    minTtlSeconds: MIN_TTL_S,
    now: () => clock.t,
    // Each fetch waits for the test to answer it.
    source: () => new Promise<AccessToken>((resolve, reject) => pending.push({ resolve, reject })),
  });
  const app = buildApp({ config: parsed.config, cache, sessionToken: "session", log: silentLogger, now: () => clock.t });
  apps.push(app);
  const issue = () => {
    n += 1;
    pending.shift()!.resolve({ accessToken: `dapi-secret-${n}`, tokenType: "Bearer", scope: "all-apis", issuedAt: clock.t, expiresAt: clock.t + LIFE_MS });
  };
  const fail = (e: BrokerError) => pending.shift()!.reject(e);
  const health = async () => {
    const r = await app.inject({ url: "/health" });
    expect(r.statusCode).toBe(200);
    expect(r.body).not.toMatch(/dapi-secret/);
    return r.json() as { status: string; targets: Record<string, Record<string, unknown>> };
  };
  return { cache, clock, pending, issue, fail, health };
}

/** Lets the cache see a settled fetch. */
const tick = () => new Promise((r) => setImmediate(r));

const transient = () => new BrokerError("ERR_EXCHANGE_UNAVAILABLE", "Databricks answered 503", { step: "exchange", retryable: true, upstreamCode: "temporarily_unavailable", hint: "a Databricks fault" });

describe("/health states", () => {
  it("empty → fetching → fresh → refreshing → stale → unavailable, with status ok only while a token is servable", async () => {
    const { cache, clock, pending, issue, fail, health } = setup();

    // empty: nothing fetched, nothing tried.
    let h = await health();
    expect(h.status).toBe("degraded");
    expect(h.targets.default).toMatchObject({ state: "empty", expires_on: null, last_refresh: null, refreshes: 0, consecutive_failures: 0, last_error: null });

    // fetching: the first fetch is out, nothing cached.
    cache.refreshDue();
    expect(pending).toHaveLength(1);
    expect((await health()).targets.default).toMatchObject({ state: "fetching", expires_on: null });

    // fresh: a token outside its refresh window.
    issue();
    await cache.settled();
    h = await health();
    expect(h.status).toBe("ok");
    expect(h.targets.default).toMatchObject({ state: "fresh", expires_on: Math.floor((T0 + LIFE_MS) / 1000), last_refresh: new Date(T0).toISOString(), refreshes: 1, last_error: null });

    // refreshing: inside the window, a refresh out, the token still served.
    clock.t = T0 + LIFE_MS - (REFRESH_AHEAD_S - 10) * 1000;
    cache.refreshDue();
    expect(pending).toHaveLength(1);
    h = await health();
    expect(h.status).toBe("ok");
    expect(h.targets.default).toMatchObject({ state: "refreshing" });

    // stale: that refresh failed; the token is still good and still served.
    fail(transient());
    await cache.settled();
    await tick();
    h = await health();
    expect(h.status).toBe("ok");
    expect(h.targets.default).toMatchObject({
      state: "stale",
      consecutive_failures: 1,
    });
    // Step and codes only, no message (SPEC §5): exactly these keys.
    expect(h.targets.default!.last_error).toEqual({ step: "exchange", code: "ERR_EXCHANGE_UNAVAILABLE", upstream_code: "temporarily_unavailable", at: new Date(clock.t).toISOString() });
    expect(cache.ready("default")).toBeDefined();

    // unavailable: under the minimum TTL with no refresh out; the token is never served now.
    clock.t = T0 + LIFE_MS - (MIN_TTL_S - 1) * 1000;
    h = await health();
    expect(h.status).toBe("degraded");
    expect(h.targets.default).toMatchObject({ state: "unavailable", consecutive_failures: 1 });
    expect(cache.ready("default")).toBeUndefined();

    // A fresh token puts it back to fresh, the error cleared.
    cache.refreshDue();
    issue();
    await cache.settled();
    expect((await health()).targets.default).toMatchObject({ state: "fresh", refreshes: 2, consecutive_failures: 0, last_error: null });
  });

  it("unavailable, not empty, when the first fetch failed: /health says which step and code", async () => {
    const { cache, pending, fail, health } = setup();
    cache.refreshDue();
    expect(pending).toHaveLength(1);
    fail(new BrokerError("ERR_STS_ACCESS_DENIED", "STS denied GetWebIdentityToken: User arn:aws:sts::123456789012:assumed-role/r/s is not authorized", { step: "sts", retryable: false, upstreamCode: "AccessDenied" }));
    await cache.settled();
    await tick();
    const h = await health();
    expect(h.status).toBe("degraded");
    expect(h.targets.default).toMatchObject({ state: "unavailable", expires_on: null, consecutive_failures: 1, last_error: { step: "sts", code: "ERR_STS_ACCESS_DENIED", upstream_code: "AccessDenied" } });
  });

  // SPEC §5: /health names no host, ARN, account, issuer or client ID; its errors carry step and
  // code only. An error's message quotes the caller's ARN (STS) or the token endpoint's host
  // (Databricks), so none of it reaches /health.
  it("names no ARN, account or host in last_error (SPEC §5)", async () => {
    const { cache, fail, health } = setup();
    cache.refreshDue();
    fail(new BrokerError("ERR_STS_ACCESS_DENIED", "STS denied GetWebIdentityToken: User: arn:aws:sts::123456789012:assumed-role/r/s is not authorized", { step: "sts", retryable: false, upstreamCode: "AccessDenied" }));
    await cache.settled();
    await tick();
    expect(JSON.stringify(await health())).not.toMatch(/arn:aws|123456789012/);
  });

  it("names no token endpoint host in last_error", async () => {
    const { cache, clock, fail, health } = setup();
    cache.refreshDue();
    fail(new BrokerError("ERR_EXCHANGE_REJECTED", "Databricks https://dbc-1234.cloud.databricks.com/oidc/v1/token answered 404: no such route", { step: "exchange", retryable: false, upstreamCode: "HTTP 404" }));
    await cache.settled();
    await tick();
    const h = await health();
    expect(JSON.stringify(h)).not.toMatch(/dbc-1234|databricks\.com/);
    expect(h.targets.default!.last_error).toEqual({ step: "exchange", code: "ERR_EXCHANGE_REJECTED", upstream_code: "HTTP 404", at: new Date(clock.t).toISOString() });
  });
});
