// Decorrelated jitter from 0.5 s for throttled calls, after any Retry-After: in [0.5 s, 3 × the last wait).
import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, throttledOnly } from "./common.js";

export { BACKOFF_BASE_MS, BACKOFF_CAP_MS };
const BASE = 500;
export const backoffMs = throttledOnly((_n, f, random, previousMs) => {
  const last = Math.max(BASE, previousMs - (f.retryAfterMs ?? 0));
  return (f.retryAfterMs ?? 0) + Math.min(BACKOFF_CAP_MS, BASE + random() * (last * 3 - BASE));
});
