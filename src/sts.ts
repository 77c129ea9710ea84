/**
 * The STS source: signs the function's AWS identity into a short-lived JWT with
 * `GetWebIdentityToken` (IAM outbound identity federation), through the STS port below.
 * The port's adapter, the one module that knows the AWS SDK, is sts-client.ts.
 */
import type { SigningAlgorithm } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import type { Logger } from "./log.js";
import { classifyStsError, MIN_DURATION_SECONDS } from "./sts-errors.js";

export interface WebIdentityTokenParams {
  readonly audience: string;
  readonly signingAlgorithm: SigningAlgorithm;
  readonly durationSeconds: number;
}

export interface WebIdentityToken {
  readonly jwt: string;
  /** Unix ms, from the answer's `Expiration`. */
  readonly expiresAt: number;
}

/**
 * The STS port: one `GetWebIdentityToken` call. Rejects with a BrokerError of step `sts`
 * (see sts-errors.ts); other rejections are classified by the source.
 */
export type GetWebIdentityToken = (params: WebIdentityTokenParams, signal?: AbortSignal) => Promise<WebIdentityToken>;

export interface StsJwt extends WebIdentityToken {
  /** The lifetime STS was asked for: less than configured after a `SessionDurationEscalation`. */
  readonly durationSeconds: number;
}

export interface StsSourceOptions {
  getWebIdentityToken: GetWebIdentityToken;
  audience: string;
  signingAlgorithm: SigningAlgorithm;
  durationSeconds: number;
  log: Logger;
  /** Wall clock (Unix ms), to refuse an answer whose Expiration has already passed. */
  now?: () => number;
}

/** A port loaded at its first call, or earlier through `load`; the adapter is loaded once. */
export interface DeferredStsPort {
  getWebIdentityToken: GetWebIdentityToken;
  load: () => Promise<GetWebIdentityToken>;
}

/**
 * Defers loading the adapter (the AWS SDK, the larger half of the bundle) to the first JWT, so
 * that a cold start does not parse it before registering.
 */
export function deferStsPort(load: () => Promise<GetWebIdentityToken>): DeferredStsPort {
  let port: Promise<GetWebIdentityToken> | undefined;
  const loadOnce = () => (port ??= load());
  return { getWebIdentityToken: async (params, signal) => (await loadOnce())(params, signal), load: loadOnce };
}

/** Durations to try after `SessionDurationEscalation`: halve until the STS minimum. */
function shorter(seconds: number): number | undefined {
  if (seconds <= MIN_DURATION_SECONDS) return undefined;
  return Math.max(MIN_DURATION_SECONDS, Math.floor(seconds / 2));
}

/**
 * Returns a function that gets one JWT from STS. A `SessionDurationEscalation` (the asked
 * lifetime outlives the role session) is answered by asking again for less, down to 60 s.
 */
export function createStsSource({ getWebIdentityToken, audience, signingAlgorithm, durationSeconds, log, now = Date.now }: StsSourceOptions) {
  return async function getJwt(signal?: AbortSignal): Promise<StsJwt> {
    let duration = durationSeconds;
    for (;;) {
      let answer: WebIdentityToken;
      try {
        answer = await getWebIdentityToken({ audience, signingAlgorithm, durationSeconds: duration }, signal);
      } catch (err) {
        const classified = isBrokerError(err) ? err : classifyStsError(err);
        const next = classified.code === "ERR_STS_SESSION_DURATION" ? shorter(duration) : undefined;
        if (next === undefined) throw classified;
        log.info("STS refused the duration: the role session ends sooner; asking for less", { step: "sts", durationSeconds: duration, next });
        duration = next;
        continue;
      }
      // A JWT that is already dead would only be refused by Databricks as invalid_grant, which
      // is not retried for the cooldown; a glitch in STS's answer is worth a retry instead.
      if (answer.expiresAt <= now()) {
        throw new BrokerError("ERR_STS_INVALID_RESPONSE", `STS answered a JWT whose Expiration (${new Date(answer.expiresAt).toISOString()}) has passed`, {
          step: "sts",
          retryable: true,
          hint: "an STS or proxy fault, or a clock far off; check AWS_ENDPOINT_URL_STS if it is set",
        });
      }
      return { jwt: answer.jwt, expiresAt: answer.expiresAt, durationSeconds: duration };
    }
  };
}

export type StsSource = ReturnType<typeof createStsSource>;
