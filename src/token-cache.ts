/**
 * The token cache: one cached Databricks token per target and scope, refreshed ahead of
 * expiry, never served expired or under the minimum TTL.
 *
 * `lru-cache` does the caching: its `fetchMethod` merges concurrent refreshes of a key into
 * one, its TTL marks the start of the refresh-ahead window (a "stale" entry is still served
 * while it refreshes), and a failed refresh leaves the old entry in place. This module adds
 * what lru-cache cannot know: real expiry, the minimum TTL, and when the next upstream call
 * is allowed after a failure (backoff for transient failures, a cooldown for permanent ones).
 */
import { LRUCache } from "lru-cache";
import { backoffMs } from "./backoff.js";
import type { Target } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import type { AccessToken } from "./exchange.js";

export type TokenSource = (target: Target, signal?: AbortSignal) => Promise<AccessToken>;

export { BACKOFF_CAP_MS } from "./backoff.js";
/**
 * After a permanent failure (access denied, invalid_grant, ...) no upstream call for this
 * long: a fix (an IAM or federation-policy change) takes effect without a redeploy, yet a
 * busy function cannot hammer STS. 30 s, the wait the AWS SDK's `fromSso` uses after a
 * failed refresh.
 */
export const COOLDOWN_MS = 30_000;
/**
 * A caller whose wait would end before the backoff allows another attempt gets these last
 * attempts, each this long before its wait ends: STS and the exchange answer in a few hundred
 * ms each. The first serves a storm's stragglers sooner; the second, after the first was
 * throttled too, turns most of the 503s left in a storm's tail into tokens (bench section 8).
 */
export const LAST_TRIES_MS = Object.freeze([2_000, 1_000]);
/**
 * A token fetched this recently counts as fresh: a `?min_ttl` no token can satisfy is then
 * served this token instead of causing one exchange per request.
 */
export const FRESH_ENOUGH_MS = 5_000;

/** How one upstream attempt ended, for the caller to log or count; never sent anywhere by the cache. */
export type RefreshOutcome =
  | { ok: true; target: string; at: number; token: AccessToken; ms: number }
  | { ok: false; target: string; at: number; error: BrokerError; failures: number; retryInMs: number; ms: number };

export interface TokenCacheOptions {
  targets: ReadonlyMap<string, Target>;
  source: TokenSource;
  refreshAheadSeconds: number;
  minTtlSeconds: number;
  /** Called once per upstream attempt, after the cache's own state is updated. */
  onRefresh?: (outcome: RefreshOutcome) => void;
  /** Wall clock, Unix ms, read afresh each time: a monotonic reading is wrong after a freeze. */
  now?: () => number;
  /** Jitter source in [0, 1). */
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

interface KeyState {
  failures: number;
  /** The wait after the last failure, for a policy that grows from it. */
  lastBackoffMs: number;
  /** No upstream call before this (Unix ms). */
  nextAttemptAt: number;
  /**
   * A caller about to give up may bring `nextAttemptAt` forward to the end of its wait
   * (LAST_TRIES_MS): after a throttled failure that did not follow such an attempt, so the
   * upstream sees at most that caller's few extra calls per backoff step; never before the
   * `Retry-After` of `lastError`.
   */
  pullable: boolean;
  /** The attempt running (or last run) was brought forward so. */
  pulled: boolean;
  lastError: BrokerError | undefined;
  lastErrorAt: number | undefined;
  lastRefreshAt: number | undefined;
  refreshes: number;
  /** The fetch running now, so `settled()` can wait for it. */
  inFlight: Promise<unknown> | undefined;
}

export type TargetState = "empty" | "fetching" | "fresh" | "refreshing" | "stale" | "unavailable";

export interface TargetHealth {
  state: TargetState;
  expires_on: number | null;
  last_refresh: string | null;
  refreshes: number;
  consecutive_failures: number;
  /** Step and codes only: a message would quote the role ARN, account or token endpoint (SPEC §5). */
  last_error: { step: string; code: string; upstream_code: string | null; at: string } | null;
}

const defaultSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

/** The failure that ended the last attempt, unless a success came after it. */
const recentError = (st: KeyState) => (st.failures > 0 ? st.lastError : undefined);

/** Builds the cache key; scope is part of it so a target's scope change can never reuse a token. */
const keyOf = (t: Target) => `${t.name}\u0000${t.scope}`;

export class TokenCache {
  readonly #targets: ReadonlyMap<string, Target>;
  readonly #byKey = new Map<string, Target>();
  /** Keys built once: a key built per request is a new string to flatten and hash on every lookup. */
  readonly #keyByName = new Map<string, string>();
  readonly #source: TokenSource;
  readonly #refreshAheadMs: number;
  readonly #minTtlMs: number;
  readonly #onRefresh: (outcome: RefreshOutcome) => void;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #sleep: (ms: number) => Promise<void>;
  readonly #state = new Map<string, KeyState>();
  readonly #cache: LRUCache<string, AccessToken>;
  #suspended: BrokerError | undefined;

  constructor(o: TokenCacheOptions) {
    this.#targets = o.targets;
    this.#source = o.source;
    this.#refreshAheadMs = o.refreshAheadSeconds * 1000;
    this.#minTtlMs = o.minTtlSeconds * 1000;
    this.#onRefresh = o.onRefresh ?? (() => {});
    this.#now = o.now ?? Date.now;
    this.#random = o.random ?? Math.random;
    this.#sleep = o.sleep ?? defaultSleep;
    for (const t of o.targets.values()) {
      this.#byKey.set(keyOf(t), t);
      this.#keyByName.set(t.name, keyOf(t));
      this.#state.set(keyOf(t), { failures: 0, lastBackoffMs: 0, nextAttemptAt: 0, pullable: false, pulled: false, lastError: undefined, lastErrorAt: undefined, lastRefreshAt: undefined, refreshes: 0, inFlight: undefined });
    }
    const now = this.#now;
    this.#cache = new LRUCache<string, AccessToken>({
      // The key set is fixed by the configuration, so nothing is ever evicted.
      max: Math.max(1, o.targets.size),
      perf: { now },
      // Read the clock on every check: a cached reading would be stale after a freeze.
      ttlResolution: 0,
      noDeleteOnFetchRejection: true,
      fetchMethod: (key, _stale, { signal, options }) => {
        const p = this.#load(key, signal, options);
        const st = this.#stateOf(key);
        st.inFlight = p;
        const clear = () => {
          if (st.inFlight === p) st.inFlight = undefined;
        };
        p.then(clear, clear);
        return p;
      },
    });
  }

  /** Refuses all token work with `reason` until `resume()`: SnapStart's init, before the snapshot. */
  suspend(reason: BrokerError): void {
    this.#suspended = reason;
  }

  resume(): void {
    this.#suspended = undefined;
  }

  /** True when `name` is a configured target. */
  has(name: string): boolean {
    return this.#targets.has(name);
  }

  #stateOf(key: string): KeyState {
    const st = this.#state.get(key);
    if (!st) throw new Error(`no state for ${key}`);
    return st;
  }

  /** When the refresh-ahead window of `t` opens: never later than the minimum TTL, never before half its life. */
  #refreshAt(t: AccessToken): number {
    const lifetime = t.expiresAt - t.issuedAt;
    return t.expiresAt - Math.max(Math.min(this.#refreshAheadMs, lifetime / 2), this.#minTtlMs);
  }

  /** One upstream attempt; lru-cache merges concurrent callers, and callers respect the backoff. */
  async #load(key: string, signal: AbortSignal, options: LRUCache.FetcherFetchOptions<string, AccessToken>): Promise<AccessToken> {
    const target = this.#byKey.get(key);
    if (!target) throw new Error(`unknown key ${key}`);
    const started = this.#now();
    let token: AccessToken;
    try {
      token = this.#checkLifetime(await this.#source(target, signal));
    } catch (err) {
      throw this.#failed(target, key, err, started);
    }
    const now = this.#now();
    options.ttl = Math.max(1, this.#refreshAt(token) - now);
    const st = this.#stateOf(key);
    st.failures = 0;
    st.lastBackoffMs = 0;
    st.nextAttemptAt = 0;
    st.pullable = false;
    st.pulled = false;
    st.lastRefreshAt = now;
    st.refreshes += 1;
    this.#onRefresh({ ok: true, target: target.name, at: now, token, ms: now - started });
    return token;
  }

  /** A token that would be under the minimum TTL as soon as it arrives could never be served. */
  #checkLifetime(token: AccessToken): AccessToken {
    if (token.expiresAt - this.#now() > this.#minTtlMs) return token;
    throw new BrokerError(
      "ERR_TOKEN_LIFETIME_TOO_SHORT",
      `Databricks issued a token that lives ${Math.round((token.expiresAt - token.issuedAt) / 1000)} s, not more than DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS (${this.#minTtlMs / 1000} s), so it could never be served`,
      { step: "token", retryable: false, hint: "lower DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS (and DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS) below the token lifetime" },
    );
  }

  /** Records a failed attempt and when the next may start: backoff when retryable, else the cooldown. */
  #failed(target: Target, key: string, err: unknown, started: number): BrokerError {
    const e = isBrokerError(err)
      ? err
      : new BrokerError("ERR_EXCHANGE_UNAVAILABLE", `refresh failed: ${(err as Error)?.message ?? String(err)}`, { step: "token", retryable: true, cause: err });
    const now = this.#now();
    const st = this.#stateOf(key);
    st.failures += 1;
    st.lastError = e;
    st.lastErrorAt = now;
    st.lastBackoffMs = e.retryable ? backoffMs(st.failures, e, this.#random, st.lastBackoffMs) : 0;
    st.nextAttemptAt = now + (e.retryable ? st.lastBackoffMs : COOLDOWN_MS);
    st.pullable = e.throttled && !st.pulled;
    st.pulled = false;
    this.#onRefresh({ ok: false, target: target.name, at: now, error: e, failures: st.failures, retryInMs: st.nextAttemptAt - now, ms: now - started });
    return e;
  }

  #servable(t: AccessToken, minTtlMs: number): boolean {
    return t.expiresAt - this.#now() >= minTtlMs;
  }

  /** Starts a refresh of `key` in the background unless one runs or the backoff forbids it. */
  #refreshInBackground(key: string): void {
    const st = this.#stateOf(key);
    if (this.#suspended || st.inFlight || this.#now() < st.nextAttemptAt) return;
    // allowStale: answer with the current entry at once; the refresh goes on without a waiter.
    this.#cache.fetch(key, { forceRefresh: true, allowStale: true }).catch(() => {});
  }

  /**
   * A token for `name` with at least `minTtlSeconds` left (never less than the configured
   * minimum). Waits for a refresh when needed, up to `waitMs`.
   * @throws BrokerError: the last upstream failure, or `ERR_TOKEN_WAIT_TIMEOUT`.
   */
  async get(name: string, { minTtlSeconds, waitMs }: { minTtlSeconds?: number; waitMs: number }): Promise<AccessToken> {
    const key = this.#keyByName.get(name);
    if (key === undefined) throw new Error(`unknown target ${name}`);
    if (this.#suspended) throw this.#suspended;
    const st = this.#stateOf(key);
    const wanted = this.#wantedMs(minTtlSeconds);
    const deadline = this.#now() + waitMs;
    let lastTries = 0;
    for (;;) {
      const cached = this.#ready(key, wanted);
      if (cached) return cached;
      const now = this.#now();

      if (st.lastError && !st.inFlight && now < st.nextAttemptAt) {
        if (!st.lastError.retryable) throw st.lastError;
        // After a throttled call, the backoff may put the next attempt past this caller's wait:
        // attempts before the wait ends may still succeed (a storm's stragglers, issue 15),
        // where answering now cannot (KeyState.pullable says when it may be brought forward;
        // this caller's own second last attempt follows its first).
        if (st.nextAttemptAt >= deadline) {
          const retryAfterUntil = (st.lastErrorAt ?? 0) + (st.lastError.retryAfterMs ?? 0);
          const at = deadline - (LAST_TRIES_MS[lastTries] ?? 0);
          // The first may start at once; a second only at its own moment, never right after the first.
          const lastTry = lastTries === 0 || at >= now ? Math.max(now, retryAfterUntil, at) : deadline;
          if (!(st.pullable || lastTries > 0) || lastTry >= deadline) throw this.#timeout(name, waitMs, recentError(st));
          lastTries += 1;
          st.pullable = false;
          st.pulled = true;
          st.nextAttemptAt = Math.min(st.nextAttemptAt, lastTry);
        }
        if (now < st.nextAttemptAt) {
          await this.#sleep(st.nextAttemptAt - now);
          continue;
        }
      }
      const remaining = deadline - now;
      if (remaining <= 0) throw this.#timeout(name, waitMs, recentError(st));
      try {
        await this.#withDeadline(this.#cache.fetch(key, { forceRefresh: true, allowStale: false }), remaining);
      } catch (err) {
        if (isBrokerError(err) && err.code === "ERR_TOKEN_WAIT_TIMEOUT") throw this.#timeout(name, waitMs, recentError(st));
        if (isBrokerError(err) && !err.retryable) throw err;
        // Transient: loop, which waits out the backoff while the deadline allows.
      }
    }
  }

  /**
   * What `get` answers at once, or undefined when it would have to wait; `get` without the
   * promise. Serving a cached token is the hot path: every function call asks for one.
   */
  ready(name: string, { minTtlSeconds }: { minTtlSeconds?: number } = {}): AccessToken | undefined {
    const key = this.#keyByName.get(name);
    if (key === undefined || this.#suspended) return undefined;
    return this.#ready(key, this.#wantedMs(minTtlSeconds));
  }

  /** The life a token needs left, in ms: the asked `min_ttl`, never below the configured minimum. */
  #wantedMs(minTtlSeconds: number | undefined): number {
    return Math.max(this.#minTtlMs, (minTtlSeconds ?? 0) * 1000);
  }

  /** The cached token when it may be served with `wanted` ms left; starts a refresh when one is due. */
  #ready(key: string, wanted: number): AccessToken | undefined {
    const cached = this.#cache.peek(key, { allowStale: true });
    if (!cached) return undefined;
    const now = this.#now();
    if (now >= this.#refreshAt(cached)) this.#refreshInBackground(key);
    if (!this.#servable(cached, this.#minTtlMs)) return undefined;
    // Fresh from the exchange, yet short of the asked min_ttl: nothing better exists (SPEC §5).
    return this.#servable(cached, wanted) || now - cached.issuedAt < FRESH_ENOUGH_MS ? cached : undefined;
  }

  #timeout(name: string, waitMs: number, last: BrokerError | undefined): BrokerError {
    if (last) return last;
    return new BrokerError("ERR_TOKEN_WAIT_TIMEOUT", `no token for target ${name} within ${waitMs} ms`, {
      step: "token",
      retryable: true,
      hint: "STS or Databricks is slow to answer; raise DATABRICKS_TOKEN_BROKER_WAIT_SECONDS if this persists",
    });
  }

  #withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(this.#timeout("", ms, undefined)), ms);
      timer.unref();
    });
    return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
  }

  /**
   * Starts, without waiting, the refresh of every token that is missing, unservable or in
   * its refresh-ahead window, where the backoff allows. Called at init, on each INVOKE and
   * by the timer of Managed Instances.
   */
  refreshDue(): void {
    const now = this.#now();
    for (const t of this.#targets.values()) {
      const key = keyOf(t);
      const cached = this.#cache.peek(key, { allowStale: true });
      if (!cached || now >= this.#refreshAt(cached)) this.#refreshInBackground(key);
    }
  }

  /** Resolves when no refresh is in flight, so none is frozen half-way (SPEC §4). */
  async settled(): Promise<void> {
    for (;;) {
      const running = [...this.#state.values()].map((s) => s.inFlight).filter((p) => p !== undefined);
      if (running.length === 0) return;
      await Promise.allSettled(running);
    }
  }

  /** Per-target state for `/health`: never a token. */
  health(): Record<string, TargetHealth> {
    const now = this.#now();
    const out: Record<string, TargetHealth> = {};
    for (const t of this.#targets.values()) {
      const key = keyOf(t);
      const st = this.#stateOf(key);
      const cached = this.#cache.peek(key, { allowStale: true });
      let state: TargetState;
      if (!cached || cached.expiresAt - now < this.#minTtlMs) {
        state = st.inFlight ? "fetching" : cached || st.lastError ? "unavailable" : "empty";
      } else if (now >= this.#refreshAt(cached)) {
        state = st.inFlight ? "refreshing" : "stale";
      } else {
        state = "fresh";
      }
      out[t.name] = {
        state,
        expires_on: cached ? Math.floor(cached.expiresAt / 1000) : null,
        last_refresh: st.lastRefreshAt === undefined ? null : new Date(st.lastRefreshAt).toISOString(),
        refreshes: st.refreshes,
        consecutive_failures: st.failures,
        last_error:
          st.lastError && st.failures > 0
            ? {
                step: st.lastError.step,
                code: st.lastError.code,
                upstream_code: st.lastError.upstreamCode ?? null,
                at: new Date(st.lastErrorAt ?? now).toISOString(),
              }
            : null,
      };
    }
    return out;
  }
}
