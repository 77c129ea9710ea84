/**
 * The STS source: signs the function's AWS identity into a short-lived JWT with
 * `GetWebIdentityToken` (IAM outbound identity federation).
 */
import type { GetWebIdentityTokenCommand, STSClient } from "@aws-sdk/client-sts";
import type { SigningAlgorithm } from "./config.js";
import { BrokerError } from "./errors.js";
import type { Logger } from "./log.js";

/** The part of `STSClient` the source uses, so tests can pass a fake. */
export interface StsLike {
  send(command: GetWebIdentityTokenCommand, options?: { abortSignal?: AbortSignal }): Promise<{
    WebIdentityToken?: string | undefined;
    Expiration?: Date | undefined;
  }>;
}

export interface StsJwt {
  readonly jwt: string;
  /** Unix ms, from the answer's `Expiration`. */
  readonly expiresAt: number;
  readonly durationSeconds: number;
}

export interface StsSourceOptions {
  client: StsLike;
  audience: string;
  signingAlgorithm: SigningAlgorithm;
  durationSeconds: number;
  log: Logger;
  /** Wall clock (Unix ms), to refuse an answer whose Expiration has already passed. */
  now?: () => number;
}

/** STS will not sign for less than this (`DurationSeconds` minimum, STS API reference). */
const MIN_DURATION_SECONDS = 60;

/**
 * How long one STS call may take before it counts as a transient failure. STS answers in
 * tens of milliseconds; 5 s leaves room for a cold TLS handshake and a slow region.
 */
export const STS_TIMEOUT_MS = 5_000;
/** Connection set-up budget inside the timeout above. */
const STS_CONNECT_TIMEOUT_MS = 2_000;

/**
 * The STS client's settings: regional endpoint (GetWebIdentityToken has no global one;
 * `AWS_ENDPOINT_URL_STS` still overrides it), and one attempt per call because the token
 * cache owns retries and their backoff — two retry loops would multiply upstream calls.
 */
export function stsClientConfig(region: string) {
  // Without throwOnRequestTimeout the SDK's handler only logs a warning when requestTimeout
  // passes and keeps waiting: an STS that never answers would hold the one refresh per
  // target forever, and the token would expire behind it.
  return { region, maxAttempts: 1, requestHandler: { connectionTimeout: STS_CONNECT_TIMEOUT_MS, requestTimeout: STS_TIMEOUT_MS, throwOnRequestTimeout: true } };
}

/**
 * The SDK (with the client's set-up in sts-client.ts, which re-exports the command), loaded at
 * its first use rather than with the extension: it is the larger half of the bundle, and
 * parsing and running it before registering would add to every cold start. This module
 * imports it only this way (and only types otherwise), so the bundle keeps it in chunks that
 * nothing loads before the first token is asked for.
 */
const loadSdk = () => import("./sts-client.js");

export interface StsHooks {
  /**
   * Called each time a request to STS has been written, once the SDK's work for it (loading at
   * the first call, signing) is done and only the network is left: the moment for other work
   * that the first token will need, which then delays neither the request nor its answer.
   */
  onSent?: () => void;
}

/** The extension's STS client (`createStsClient`), built at the first call; see `loadSdk`. */
export function createDeferredStsClient(region: string, hooks: StsHooks = {}): StsLike {
  let client: Promise<STSClient> | undefined;
  return {
    async send(command, options) {
      client ??= loadSdk().then((m) => m.createStsClient(region, hooks));
      return (await client).send(command, options);
    },
  };
}

/**
 * Loads what `createDeferredStsClient` and the source would load at the first call, and nothing
 * more. For SnapStart: the snapshot then holds the SDK, and a restored environment does not pay
 * for loading it when its first token is asked for.
 */
export async function preloadSdk(): Promise<void> {
  await loadSdk();
}

/** AWS error codes as the SDK names them, without the `Exception` suffix some models add. */
function upstreamCodeOf(err: unknown): string {
  const e = err as { name?: unknown; Code?: unknown; code?: unknown };
  // A network failure is named by its errno (ECONNREFUSED): the SDK leaves its name "Error",
  // or renames a reset "TimeoutError", neither of which says what happened.
  const errno = typeof e.code === "string" && /^E[A-Z0-9_]+$/.test(e.code) ? e.code : undefined;
  const raw = typeof e.Code === "string" ? e.Code : (errno ?? (typeof e.name === "string" ? e.name : typeof e.code === "string" ? e.code : "Error"));
  return raw.replace(/Exception$/, "");
}

const THROTTLING = new Set(["Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestThrottled", "SlowDown"].map((c) => c.replace(/Exception$/, "")));
/**
 * AWS's common errors for a request whose credentials or signature are refused: the signing
 * session (wrong secret, unknown key, another session's token, expired), not the call's parameters.
 */
const CREDENTIALS = new Set(["SignatureDoesNotMatch", "InvalidClientTokenId", "UnrecognizedClient", "ExpiredToken", "IncompleteSignature", "MissingAuthenticationToken"]);
/**
 * A request signed more than 15 minutes off STS's clock. The SDK takes STS's time from the
 * answer's Date header (its clock offset), so the next attempt is signed right and passes.
 */
const CLOCK_SKEW = /^Signature (expired|not yet current)\b/;
const NETWORK = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "TimeoutError", "AbortError", "RequestTimeout", "RequestTimeoutException"]);

/** Maps an SDK error to a BrokerError that says what failed and what to check. */
export function classifyStsError(err: unknown): BrokerError {
  const code = upstreamCodeOf(err);
  const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  const errno = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  const opts = { step: "sts" as const, upstreamCode: code, cause: err };
  if (code === "AccessDenied") {
    return new BrokerError("ERR_STS_ACCESS_DENIED", `STS denied GetWebIdentityToken: ${message}`, {
      ...opts,
      retryable: false,
      hint: "allow sts:GetWebIdentityToken in the function's execution role, with conditions sts:IdentityTokenAudience matching DATABRICKS_TOKEN_BROKER_AUDIENCE and sts:DurationSeconds at least DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS",
    });
  }
  if (code === "OutboundWebIdentityFederationDisabled") {
    return new BrokerError("ERR_STS_FEDERATION_DISABLED", `outbound web identity federation is disabled for this AWS account: ${message}`, {
      ...opts,
      retryable: false,
      hint: "enable it once per account: aws iam enable-outbound-web-identity-federation",
    });
  }
  if (code === "SessionDurationEscalation") {
    return new BrokerError("ERR_STS_SESSION_DURATION", `STS would not sign a JWT outliving the role session, even for ${MIN_DURATION_SECONDS} s: ${message}`, {
      ...opts,
      retryable: true,
      hint: "the execution role's session is about to expire; Lambda renews it, so this passes on its own",
    });
  }
  if (code === "RequestExpired" || (code === "SignatureDoesNotMatch" && CLOCK_SKEW.test(message))) {
    return new BrokerError("ERR_STS_CREDENTIALS", `STS refused the request's signing time: ${message}`, {
      ...opts,
      retryable: true,
      hint: "this machine's clock is more than 15 minutes off STS's; the AWS SDK adopts STS's time from its answer, so the broker's retry passes. If it persists, set the clock right",
    });
  }
  if (CREDENTIALS.has(code)) {
    return new BrokerError("ERR_STS_CREDENTIALS", `STS refused the credentials that signed the request: ${message}`, {
      ...opts,
      retryable: false,
      hint: "the AWS credentials are not the execution role's valid session: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (set by Lambda; SnapStart: AWS_CONTAINER_CREDENTIALS_FULL_URI) must be the role's own, unexpired and from one session; check that nothing in the function's configuration or code replaces them",
    });
  }
  if (code === "CredentialsProviderError") {
    // No request was sent: the AWS SDK found no credentials (SnapStart: the container
    // credentials endpoint failed). It may pass: Lambda's endpoint answers once the environment is up.
    return new BrokerError("ERR_STS_CREDENTIALS", `the AWS SDK found no credentials to sign the STS request: ${message}`, {
      ...opts,
      retryable: true,
      hint: "the function's environment must carry the execution role's credentials as Lambda sets them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; SnapStart: AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN); check that nothing in the function's configuration removes them",
    });
  }
  if (THROTTLING.has(code) || status === 429) {
    return new BrokerError("ERR_STS_UNAVAILABLE", `STS throttled the request: ${message}`, { ...opts, retryable: true, hint: "too many GetWebIdentityToken calls in this account and region; the broker backs off" });
  }
  if ((typeof errno === "string" && NETWORK.has(errno)) || NETWORK.has(code) || (status !== undefined && status >= 500)) {
    return new BrokerError("ERR_STS_UNAVAILABLE", `STS could not be reached or failed: ${message}`, {
      ...opts,
      retryable: true,
      hint: "a network or STS fault; the broker retries with backoff. In a VPC, the function needs a route to the regional STS endpoint (NAT gateway or an STS interface endpoint)",
    });
  }
  if (status === undefined || (status >= 200 && status < 300)) {
    // No HTTP status means the SDK failed before or after the exchange: a body it could not
    // parse, or a connection dropped mid-answer. Both can pass on their own.
    return new BrokerError("ERR_STS_INVALID_RESPONSE", `STS answer could not be used: ${message}`, { ...opts, retryable: true, hint: "an STS or network fault; the broker retries with backoff" });
  }
  return new BrokerError("ERR_STS_REJECTED", `STS rejected GetWebIdentityToken: ${message}`, {
    ...opts,
    retryable: false,
    hint: "check DATABRICKS_TOKEN_BROKER_AUDIENCE, DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM and DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS",
  });
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
export function createStsSource({ client, audience, signingAlgorithm, durationSeconds, log, now = Date.now }: StsSourceOptions) {
  return async function getJwt(signal?: AbortSignal): Promise<StsJwt> {
    const { GetWebIdentityTokenCommand } = await loadSdk();
    let duration = durationSeconds;
    for (;;) {
      let answer: Awaited<ReturnType<StsLike["send"]>>;
      try {
        answer = await client.send(
          new GetWebIdentityTokenCommand({ Audience: [audience], SigningAlgorithm: signingAlgorithm, DurationSeconds: duration }),
          signal ? { abortSignal: signal } : undefined,
        );
      } catch (err) {
        const classified = classifyStsError(err);
        const next: number | undefined = classified.code === "ERR_STS_SESSION_DURATION" ? shorter(duration) : undefined;
        if (next === undefined) throw classified;
        log.info("STS refused the duration: the role session ends sooner; asking for less", { step: "sts", durationSeconds: duration, next });
        duration = next;
        continue;
      }
      const jwt = answer.WebIdentityToken;
      const expiresAt = answer.Expiration?.getTime();
      if (typeof jwt !== "string" || jwt.split(".").length !== 3 || expiresAt === undefined || !Number.isFinite(expiresAt)) {
        throw new BrokerError("ERR_STS_INVALID_RESPONSE", "STS answered without a WebIdentityToken and Expiration", {
          step: "sts",
          retryable: true,
          hint: "an STS or proxy fault; check AWS_ENDPOINT_URL_STS if it is set",
        });
      }
      // A JWT that is already dead would only be refused by Databricks as invalid_grant, which
      // is not retried for the cooldown; a glitch in STS's answer is worth a retry instead.
      if (expiresAt <= now()) {
        throw new BrokerError("ERR_STS_INVALID_RESPONSE", `STS answered a JWT whose Expiration (${answer.Expiration?.toISOString()}) has passed`, {
          step: "sts",
          retryable: true,
          hint: "an STS or proxy fault, or a clock far off; check AWS_ENDPOINT_URL_STS if it is set",
        });
      }
      return { jwt, expiresAt, durationSeconds: duration };
    }
  };
}

export type StsSource = ReturnType<typeof createStsSource>;
