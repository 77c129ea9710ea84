/**
 * When the next upstream call may start after a transient failure. A module of its own so the
 * bench's storm section can build the layer with another policy in its place (bench/backoff/)
 * and compare them under the same storm (issue 15).
 */

/** First backoff step after a transient failure; doubles per consecutive failure. */
export const BACKOFF_BASE_MS = 500;
/** Longest backoff: keeps a dead upstream at about two calls a minute. */
export const BACKOFF_CAP_MS = 30_000;

/** What the policy reads of the failure. */
export interface FailureInfo {
  /** `Retry-After`, in ms, when the upstream sent one. */
  readonly retryAfterMs?: number | undefined;
  /** A rate limit refused the call (STS `Throttling`, HTTP 429). */
  readonly throttled?: boolean;
}

/** First step of the backoff after a throttled call (STS `Throttling`, HTTP 429). */
export const THROTTLED_BASE_MS = 1_000;

/**
 * Ms to wait after the `failures`-th consecutive transient failure; `previousMs` is the wait
 * after the one before (0 after the first). `random` is in [0, 1).
 *
 * A throttled call means other callers are asking too (a fleet of environments starting at
 * once): "decorrelated jitter" from THROTTLED_BASE_MS, in [base, 3 × the last wait), after any
 * `Retry-After`, spreads their retries over the time the upstream's rate needs. Chosen by bench
 * section 8 over equal and full jitter and other first steps: the fewest calls per environment,
 * every environment served (bench/RESULTS.md).
 *
 * Any other transient failure: "equal jitter", at least half the step, doubling from
 * BACKOFF_BASE_MS, so a lone environment retries a short outage at once; never sooner than
 * `Retry-After`.
 */
export function backoffMs(failures: number, failure: FailureInfo, random: () => number, previousMs = 0): number {
  const retryAfter = failure.retryAfterMs ?? 0;
  if (failure.throttled) {
    const last = Math.max(THROTTLED_BASE_MS, previousMs - retryAfter);
    return retryAfter + Math.min(BACKOFF_CAP_MS, THROTTLED_BASE_MS + random() * (last * 3 - THROTTLED_BASE_MS));
  }
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures - 1, 30));
  return Math.max(ceiling / 2 + random() * (ceiling / 2), retryAfter);
}
