/**
 * What the extension says about each refresh: one line per attempt, and for a failure the
 * doctor's checklist once per target and code, enough to act on without flooding the log
 * through a long outage. The token cache reports outcomes; this decides what to log.
 */
import { diagnoseRefreshFailure, formatCheck } from "./diagnosis.js";
import { fingerprint, type Logger } from "./log.js";
import type { RefreshOutcome } from "./token-cache.js";

/** The layer's bin/ command (SPEC §1 layer tree), for the diagnosis to point at: Lambda puts /opt/bin on the function's PATH. */
export const DOCTOR_COMMAND = "databricks-token-broker doctor";

/** Returns the token cache's `onRefresh`: logs every outcome, and diagnoses each new failure code of a target. */
export function logRefreshes(log: Logger): (outcome: RefreshOutcome) => void {
  const diagnosed = new Set<string>();
  return (o) => {
    if (o.ok) {
      log.info("token refreshed", {
        target: o.target,
        token: fingerprint(o.token.accessToken),
        expiresOn: Math.floor(o.token.expiresAt / 1000),
        expiresIn: Math.floor((o.token.expiresAt - o.at) / 1000),
        ms: o.ms,
      });
      return;
    }
    const e = o.error;
    const write = e.retryable ? log.warn : log.error;
    write("token refresh failed", {
      target: o.target,
      step: e.step,
      code: e.code,
      upstreamCode: e.upstreamCode,
      retryable: e.retryable,
      failures: o.failures,
      retryInMs: o.retryInMs,
      error: e.message,
      hint: e.hint,
    });
    const seen = `${o.target}\u0000${e.code}`;
    if (diagnosed.has(seen)) return;
    diagnosed.add(seen);
    write("diagnosis", {
      target: o.target,
      summary: e.summary(),
      checks: diagnoseRefreshFailure(e, o.target).flatMap((c) => formatCheck(c).split("\n")),
      doctor: DOCTOR_COMMAND,
    });
  };
}
