// The parts every variant shares with src/backoff.ts: its constants and its policy for failures
// that are not throttling.
import { BACKOFF_BASE_MS, BACKOFF_CAP_MS, backoffMs as ordinary, type FailureInfo } from "../../src/backoff.js";

export { BACKOFF_BASE_MS, BACKOFF_CAP_MS, type FailureInfo };

/** The variant's wait for a throttled failure; other failures go to src/backoff.ts's policy. */
export function throttledOnly(policy: (failures: number, failure: FailureInfo, random: () => number, previousMs: number) => number) {
  return (failures: number, failure: FailureInfo, random: () => number, previousMs = 0): number =>
    failure.throttled ? policy(failures, failure, random, previousMs) : ordinary(failures, failure, random, previousMs);
}

/** The doubling step from `base`, capped. */
export const step = (base: number, failures: number) => Math.min(BACKOFF_CAP_MS, base * 2 ** Math.min(failures - 1, 30));
