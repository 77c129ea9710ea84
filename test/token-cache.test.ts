import { describe, expect, it } from "vitest";
import type { Target } from "../src/config.js";
import { BrokerError } from "../src/errors.js";
import type { AccessToken } from "../src/exchange.js";
import { BACKOFF_CAP_MS, COOLDOWN_MS, type RefreshOutcome, TokenCache } from "../src/token-cache.js";

const target: Target = Object.freeze({
  name: "default",
  host: "https://dbc-1.cloud.databricks.com",
  isAccounts: false,
  accountId: undefined,
  clientId: "sp-1",
  scope: "all-apis",
  tokenEndpoint: "https://dbc-1.cloud.databricks.com/oidc/v1/token",
});

const transient = () => new BrokerError("ERR_EXCHANGE_UNAVAILABLE", "503 from Databricks", { step: "exchange", retryable: true, upstreamCode: "HTTP 503" });
const permanent = () => new BrokerError("ERR_EXCHANGE_INVALID_GRANT", "no policy", { step: "exchange", retryable: false, upstreamCode: "invalid_grant" });

/** A cache over a fake source, with a clock the test moves; sleeping moves the clock. */
function setup(opts: { lifetimeS?: number; refreshAheadS?: number; minTtlS?: number } = {}) {
  const clock = { t: Date.UTC(2026, 10, 29, 12) };
  const now = () => clock.t;
  let seq = 0;
  const calls: number[] = [];
  const control = {
    lifetimeS: opts.lifetimeS ?? 3600,
    fail: undefined as (() => Error) | undefined,
    /** Pending resolution, when the test wants the fetch to stay in flight. */
    hold: undefined as Promise<void> | undefined,
  };
  const source = async (): Promise<AccessToken> => {
    const sentAt = now();
    calls.push(sentAt);
    if (control.hold) await control.hold;
    if (control.fail) throw control.fail();
    seq += 1;
    return { accessToken: `tok-${seq}`, tokenType: "Bearer", scope: "all-apis", issuedAt: sentAt, expiresAt: sentAt + control.lifetimeS * 1000 };
  };
  const outcomes: RefreshOutcome[] = [];
  const cache = new TokenCache({
    targets: new Map([["default", target]]),
    source,
    onRefresh: (o) => outcomes.push(o),
    refreshAheadSeconds: opts.refreshAheadS ?? 600,
    minTtlSeconds: opts.minTtlS ?? 120,
    now,
    random: () => 0.5,
    sleep: async (ms) => {
      clock.t += ms;
    },
  });
  const get = (minTtlSeconds?: number) => cache.get("default", { waitMs: 10_000, ...(minTtlSeconds === undefined ? {} : { minTtlSeconds }) });
  return { clock, calls, control, cache, get, outcomes };
}

const throttled = () => new BrokerError("ERR_STS_UNAVAILABLE", "STS throttled the request", { step: "sts", retryable: true, upstreamCode: "Throttling", throttled: true });

describe("TokenCache: a caller whose wait the backoff would outlast (issue 15)", () => {
  /** Fails with `fail` for the first `failures` calls, then serves; the times of the calls, from the first. */
  async function run(fail: () => Error, failures: number) {
    const clock = { t: Date.UTC(2026, 10, 29, 12) };
    const t0 = clock.t;
    const at: number[] = [];
    const cache = new TokenCache({
      targets: new Map([["default", target]]),
      source: async () => {
        at.push(clock.t - t0);
        if (at.length <= failures) throw fail();
        return { accessToken: "tok-1", tokenType: "Bearer", scope: "all-apis", issuedAt: clock.t, expiresAt: clock.t + 3_600_000 };
      },
      refreshAheadSeconds: 600,
      minTtlSeconds: 120,
      now: () => clock.t,
      random: () => 0.5,
      sleep: async (ms) => {
        clock.t += ms;
      },
    });
    const answer = await cache.get("default", { waitMs: 10_000 }).then((t) => t.accessToken, (e: BrokerError) => e.code);
    return { answer, at };
  }

  // With random 0.5, decorrelated jitter from 1 s after a throttled call waits 2000, 3500 and
  // 5750 ms: the third failure, at 5500 ms, puts the next attempt at 11250 ms, past the 10 s wait.
  it("after throttling, gets one more attempt 2 s before its wait ends, instead of a 503 at once", async () => {
    expect(await run(throttled, 3)).toEqual({ answer: "tok-1", at: [0, 2_000, 5_500, 8_000] });
  });

  it("throttled again, gets a second 1 s before its wait ends; throttled at both, it is answered the throttling", async () => {
    expect(await run(throttled, 4)).toEqual({ answer: "tok-1", at: [0, 2_000, 5_500, 8_000, 9_000] });
    expect(await run(throttled, 5)).toEqual({ answer: "ERR_STS_UNAVAILABLE", at: [0, 2_000, 5_500, 8_000, 9_000] });
  });

  it("gets no second right after a first that a Retry-After put past its moment", async () => {
    const after = () => new BrokerError("ERR_EXCHANGE_UNAVAILABLE", "429", { step: "exchange", retryable: true, upstreamCode: "HTTP 429", throttled: true, retryAfterMs: 9_200 });
    expect(await run(after, 2)).toEqual({ answer: "ERR_EXCHANGE_UNAVAILABLE", at: [0, 9_200] });
  });

  // Equal jitter with random 0.5: 375, 750, 1500, 3000, 6000 ms after each failure; the fifth
  // failure, at 5625 ms, puts the next attempt at 11625 ms, past the 10 s wait.
  it("after other transient failures, is answered at once, as the backoff keeps the upstream's calls down", async () => {
    expect(await run(transient, 5)).toEqual({ answer: "ERR_EXCHANGE_UNAVAILABLE", at: [0, 375, 1125, 2625, 5625] });
  });

  it("never before a Retry-After: one inside the wait is waited for, one past it is answered at once", async () => {
    const after = (ms: number) => () => new BrokerError("ERR_EXCHANGE_UNAVAILABLE", "429", { step: "exchange", retryable: true, upstreamCode: "HTTP 429", throttled: true, retryAfterMs: ms });
    expect(await run(after(9_500), 1)).toEqual({ answer: "tok-1", at: [0, 9_500] });
    expect(await run(after(10_500), 1)).toEqual({ answer: "ERR_EXCHANGE_UNAVAILABLE", at: [0] });
  });
});

describe("TokenCache", () => {
  it("reports each upstream attempt's outcome to onRefresh: a failure with its count and the wait before the next", async () => {
    const { clock, control, get, outcomes } = setup();
    const t0 = clock.t;
    control.fail = transient;
    await expect(get()).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE" });
    expect(outcomes.length).toBeGreaterThan(1);
    outcomes.forEach((o, i) => expect(o).toMatchObject({ ok: false, target: "default", failures: i + 1, error: { code: "ERR_EXCHANGE_UNAVAILABLE" } }));
    expect(outcomes[0]).toMatchObject({ at: t0, retryInMs: 375 }); // equal jitter of the first 500 ms step, random 0.5
    control.fail = undefined;
    outcomes.length = 0;
    clock.t += BACKOFF_CAP_MS;
    const token = await get();
    expect(outcomes).toEqual([{ ok: true, target: "default", at: clock.t, token, ms: 0 }]);
  });

  it("fetches once, then serves from the cache", async () => {
    const { calls, get } = setup();
    const a = await get();
    const b = await get();
    expect(a.accessToken).toBe("tok-1");
    expect(b).toBe(a);
    expect(calls).toHaveLength(1);
  });

  it("refreshes ahead of expiry in the background while serving the current token", async () => {
    const { clock, calls, cache, get } = setup();
    const first = await get();
    clock.t = first.expiresAt - 599_000; // inside the 600 s window, well above the 120 s minimum
    const served = await get();
    expect(served.accessToken).toBe("tok-1");
    expect(calls).toHaveLength(2);
    await cache.settled();
    expect((await get()).accessToken).toBe("tok-2");
    expect(calls).toHaveLength(2);
  });

  it("does not refresh before the window opens", async () => {
    const { clock, calls, cache, get } = setup();
    const first = await get();
    clock.t = first.expiresAt - 601_000;
    cache.refreshDue();
    await get();
    expect(calls).toHaveLength(1);
  });

  it("never serves a token under the minimum TTL: the request waits for a fresh one", async () => {
    const { clock, calls, get } = setup();
    const first = await get();
    clock.t = first.expiresAt - 119_000;
    const next = await get();
    expect(next.accessToken).toBe("tok-2");
    expect(next.expiresAt - clock.t).toBeGreaterThanOrEqual(120_000);
    expect(calls).toHaveLength(2);
  });

  it("serves a still-valid token while refreshes fail, then refuses it once under the minimum TTL", async () => {
    const { clock, control, cache, get } = setup();
    const first = await get();
    control.fail = transient;
    clock.t = first.expiresAt - 500_000;
    expect((await get()).accessToken).toBe("tok-1");
    await cache.settled();
    expect(cache.health().default?.state).toBe("stale");
    expect(cache.health().default?.last_error?.code).toBe("ERR_EXCHANGE_UNAVAILABLE");
    clock.t = first.expiresAt - 119_999;
    await expect(get()).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE", step: "exchange" });
    clock.t = first.expiresAt + 1;
    await expect(get()).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE" });
  });

  it("never returns an expired token, whatever the clock does", async () => {
    const { clock, control, get } = setup({ lifetimeS: 300, refreshAheadS: 150, minTtlS: 30 });
    control.fail = undefined;
    const start = clock.t;
    let served = 0;
    for (let step = 0; step < 400; step++) {
      clock.t = start + step * 7_919; // a prime stride walks every phase of the lifetime
      control.fail = step % 5 === 0 ? transient : undefined;
      try {
        const t = await get();
        expect(t.expiresAt - clock.t).toBeGreaterThanOrEqual(30_000);
        served++;
      } catch (e) {
        expect(e).toMatchObject({ retryable: true });
      }
    }
    expect(served).toBeGreaterThan(300);
  });

  it("retries transient failures with growing, jittered backoff inside the wait", async () => {
    const { calls, control, get } = setup();
    control.fail = transient;
    await expect(get()).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE" });
    // With random() = 0.5, steps are 0.75 × 500 ms × 2^n: 375, 750, 1500, 3000, 6000 ms...
    const gaps = calls.slice(1).map((c, i) => c - calls[i]!);
    expect(gaps.slice(0, 4)).toEqual([375, 750, 1500, 3000]);
    expect(calls.length).toBeLessThanOrEqual(6); // all inside the 10 s wait
  });

  it("caps the backoff and keeps a dead upstream at a few calls a minute", async () => {
    const { clock, calls, control, get } = setup();
    control.fail = transient;
    const start = clock.t;
    while (clock.t - start < 5 * 60_000) {
      await get().catch(() => {});
      clock.t += 1_000; // a request every second of the (compressed) five minutes
    }
    expect(calls.length).toBeLessThan(5 * 60_000 / (BACKOFF_CAP_MS * 0.75) + 10);
  });

  it("does not retry permanent failures in a loop: one call, then a cooldown", async () => {
    const { clock, calls, control, get } = setup();
    control.fail = permanent;
    await expect(get()).rejects.toMatchObject({ code: "ERR_EXCHANGE_INVALID_GRANT", hint: undefined });
    for (let i = 0; i < 50; i++) await expect(get()).rejects.toMatchObject({ code: "ERR_EXCHANGE_INVALID_GRANT" });
    expect(calls).toHaveLength(1);
    clock.t += COOLDOWN_MS;
    control.fail = undefined;
    expect((await get()).accessToken).toBe("tok-1");
    expect(calls).toHaveLength(2);
  });

  it("merges 500 concurrent askers into one upstream call", async () => {
    const { calls, control, get } = setup();
    let release!: () => void;
    control.hold = new Promise((r) => (release = r));
    const askers = Array.from({ length: 500 }, () => get());
    await new Promise((r) => setImmediate(r));
    release();
    const tokens = await Promise.all(askers);
    expect(new Set(tokens.map((t) => t.accessToken))).toEqual(new Set(["tok-1"]));
    expect(calls).toHaveLength(1);
  });

  it("keeps the refresh window within half of a short lifetime", async () => {
    const { clock, calls, cache, get } = setup({ lifetimeS: 300, refreshAheadS: 600, minTtlS: 60 });
    const first = await get();
    clock.t = first.expiresAt - 151_000; // 149 s into a 300 s life: before half-way
    cache.refreshDue();
    expect(calls).toHaveLength(1);
    clock.t = first.expiresAt - 149_000;
    cache.refreshDue();
    await cache.settled();
    expect(calls).toHaveLength(2);
  });

  it("refuses a token whose whole life is below the minimum TTL, with a hint", async () => {
    const { calls, get } = setup({ lifetimeS: 100, minTtlS: 120 });
    await expect(get()).rejects.toMatchObject({ code: "ERR_TOKEN_LIFETIME_TOO_SHORT", retryable: false });
    await expect(get()).rejects.toMatchObject({ code: "ERR_TOKEN_LIFETIME_TOO_SHORT" });
    expect(calls).toHaveLength(1);
  });

  it("answers a min_ttl no token can satisfy with a fresh token, without an exchange per request", async () => {
    const { clock, calls, get } = setup({ lifetimeS: 3600 });
    await get();
    clock.t += 60_000;
    const fresh = await get(3600);
    expect(fresh.accessToken).toBe("tok-2");
    clock.t += 1_000;
    expect((await get(3600)).accessToken).toBe("tok-2");
    expect(calls).toHaveLength(2);
    expect((await get(1800)).accessToken).toBe("tok-2");
  });

  it("times out a request whose refresh hangs, and reports the wait", async () => {
    const { control, cache } = setup();
    control.hold = new Promise(() => {});
    await expect(cache.get("default", { waitMs: 50 })).rejects.toMatchObject({ code: "ERR_TOKEN_WAIT_TIMEOUT", step: "token" });
  });

  it("fetches nothing while suspended (SnapStart init) and resumes on demand", async () => {
    const { calls, cache, get } = setup();
    cache.suspend(new BrokerError("ERR_SNAPSTART_INIT", "no", { step: "token", retryable: false }));
    cache.refreshDue();
    await expect(get()).rejects.toMatchObject({ code: "ERR_SNAPSTART_INIT" });
    expect(calls).toHaveLength(0);
    cache.resume();
    expect((await get()).accessToken).toBe("tok-1");
  });

  it("reports health without any token", async () => {
    const { cache, get } = setup();
    expect(cache.health().default?.state).toBe("empty");
    const t = await get();
    const h = cache.health();
    expect(h.default).toMatchObject({ state: "fresh", expires_on: Math.floor(t.expiresAt / 1000), refreshes: 1, last_error: null });
    expect(JSON.stringify(h)).not.toContain(t.accessToken);
  });
});
