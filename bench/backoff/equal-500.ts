// Before issue 15: throttled calls backed off as every other transient failure, equal jitter
// doubling from 0.5 s ([step/2, step)), never sooner than Retry-After.
import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, step, throttledOnly } from "./common.js";

export { BACKOFF_BASE_MS, BACKOFF_CAP_MS };
export const backoffMs = throttledOnly((n, f, random) => Math.max((step(BACKOFF_BASE_MS, n) / 2) * (1 + random()), f.retryAfterMs ?? 0));
