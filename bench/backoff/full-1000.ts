// Full jitter from 1 s for throttled calls, after any Retry-After: anywhere in [0, step).
import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, step, throttledOnly } from "./common.js";

export { BACKOFF_BASE_MS, BACKOFF_CAP_MS };
export const backoffMs = throttledOnly((n, f, random) => (f.retryAfterMs ?? 0) + random() * step(1000, n));
