/**
 * STS failures classified: each AWS SDK error becomes a BrokerError that says what failed,
 * whether a retry can help, and which set-up step to check (SPEC §3).
 */
import { BrokerError, type BrokerErrorCode, MAX_QUOTED_CODE_CHARS, quoteUpstream } from "./errors.js";

/** STS will not sign for less than this (`DurationSeconds` minimum, STS API reference). */
export const MIN_DURATION_SECONDS = 60;

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

/** What the rules look at in an SDK error. */
interface Failure {
  readonly code: string;
  readonly status: number | undefined;
  readonly errno: unknown;
  readonly message: string;
}

/** One kind of STS failure: when it applies, and what the BrokerError says. */
interface Rule {
  readonly when: (f: Failure) => boolean;
  readonly code: BrokerErrorCode;
  /** Put before the SDK's message. */
  readonly what: string;
  readonly retryable: boolean;
  readonly throttled?: true;
  readonly hint: string;
}

/** The rules in order; the first that applies wins, and `REJECTED` when none does. */
const RULES: readonly Rule[] = [
  {
    when: (f) => f.code === "AccessDenied",
    code: "ERR_STS_ACCESS_DENIED",
    what: "STS denied GetWebIdentityToken",
    retryable: false,
    hint: "allow sts:GetWebIdentityToken in the function's execution role, with conditions sts:IdentityTokenAudience matching DATABRICKS_TOKEN_BROKER_AUDIENCE and sts:DurationSeconds at least DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS",
  },
  {
    when: (f) => f.code === "OutboundWebIdentityFederationDisabled",
    code: "ERR_STS_FEDERATION_DISABLED",
    what: "outbound web identity federation is disabled for this AWS account",
    retryable: false,
    hint: "enable it once per account: aws iam enable-outbound-web-identity-federation",
  },
  {
    when: (f) => f.code === "SessionDurationEscalation",
    code: "ERR_STS_SESSION_DURATION",
    what: `STS would not sign a JWT outliving the role session, even for ${MIN_DURATION_SECONDS} s`,
    retryable: true,
    hint: "the execution role's session is about to expire; Lambda renews it, so this passes on its own",
  },
  {
    when: (f) => f.code === "RequestExpired" || (f.code === "SignatureDoesNotMatch" && CLOCK_SKEW.test(f.message)),
    code: "ERR_STS_CREDENTIALS",
    what: "STS refused the request's signing time",
    retryable: true,
    hint: "this machine's clock is more than 15 minutes off STS's; the AWS SDK adopts STS's time from its answer, so the broker's retry passes. If it persists, set the clock right",
  },
  {
    when: (f) => CREDENTIALS.has(f.code),
    code: "ERR_STS_CREDENTIALS",
    what: "STS refused the credentials that signed the request",
    retryable: false,
    hint: "the AWS credentials are not the execution role's valid session: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (set by Lambda; SnapStart: AWS_CONTAINER_CREDENTIALS_FULL_URI) must be the role's own, unexpired and from one session; check that nothing in the function's configuration or code replaces them",
  },
  {
    // No request was sent: the AWS SDK found no credentials (SnapStart: the container
    // credentials endpoint failed). It may pass: Lambda's endpoint answers once the environment is up.
    when: (f) => f.code === "CredentialsProviderError",
    code: "ERR_STS_CREDENTIALS",
    what: "the AWS SDK found no credentials to sign the STS request",
    retryable: true,
    hint: "the function's environment must carry the execution role's credentials as Lambda sets them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; SnapStart: AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN); check that nothing in the function's configuration removes them",
  },
  {
    when: (f) => THROTTLING.has(f.code) || f.status === 429,
    code: "ERR_STS_UNAVAILABLE",
    what: "STS throttled the request",
    retryable: true,
    throttled: true,
    hint: "too many GetWebIdentityToken calls in this account and region; the broker backs off",
  },
  {
    when: (f) => (typeof f.errno === "string" && NETWORK.has(f.errno)) || NETWORK.has(f.code) || (f.status !== undefined && f.status >= 500),
    code: "ERR_STS_UNAVAILABLE",
    what: "STS could not be reached or failed",
    retryable: true,
    hint: "a network or STS fault; the broker retries with backoff. In a VPC, the function needs a route to the regional STS endpoint (NAT gateway or an STS interface endpoint)",
  },
  {
    // No HTTP status means the SDK failed before or after the exchange: a body it could not
    // parse, or a connection dropped mid-answer. Both can pass on their own.
    when: (f) => f.status === undefined || (f.status >= 200 && f.status < 300),
    code: "ERR_STS_INVALID_RESPONSE",
    what: "STS answer could not be used",
    retryable: true,
    hint: "an STS or network fault; the broker retries with backoff",
  },
];

const REJECTED: Rule = {
  when: () => true,
  code: "ERR_STS_REJECTED",
  what: "STS rejected GetWebIdentityToken",
  retryable: false,
  hint: "check DATABRICKS_TOKEN_BROKER_AUDIENCE, DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM and DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS",
};

/** Maps an SDK error to a BrokerError that says what failed and what to check. */
export function classifyStsError(err: unknown): BrokerError {
  const failure: Failure = {
    code: upstreamCodeOf(err),
    status: (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode,
    errno: (err as { code?: unknown }).code,
    message: err instanceof Error ? err.message : String(err),
  };
  const rule = RULES.find((r) => r.when(failure)) ?? REJECTED;
  return new BrokerError(rule.code, `${rule.what}: ${quoteUpstream(failure.message)}`, {
    step: "sts",
    upstreamCode: quoteUpstream(failure.code, MAX_QUOTED_CODE_CHARS),
    cause: err,
    retryable: rule.retryable,
    throttled: rule.throttled,
    hint: rule.hint,
  });
}
