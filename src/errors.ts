/**
 * The broker's one error type. Callers switch on `code` (stable strings) rather than on
 * classes: the layer is bundled, and `instanceof` breaks across bundled copies.
 */

/** Which step of the pipeline failed; the 503 message and `/health` name it. */
export type Step = "config" | "sts" | "exchange" | "token";

export type BrokerErrorCode =
  /** One or more environment variables are invalid. */
  | "ERR_CONFIG"
  /** STS refused: the role may not call `sts:GetWebIdentityToken` with these conditions. */
  | "ERR_STS_ACCESS_DENIED"
  /** STS refused: outbound web identity federation is not enabled for the account. */
  | "ERR_STS_FEDERATION_DISABLED"
  /** STS refused every duration down to the minimum: the role session is about to end. */
  | "ERR_STS_SESSION_DURATION"
  /** STS refused the credentials that signed the request (the role session), or its signing time (the clock). */
  | "ERR_STS_CREDENTIALS"
  /** STS rejected the request itself (bad audience, algorithm, ...). */
  | "ERR_STS_REJECTED"
  /** STS throttled, failed with 5xx, timed out or could not be reached. */
  | "ERR_STS_UNAVAILABLE"
  /** STS answered something that is not a usable token. */
  | "ERR_STS_INVALID_RESPONSE"
  /** Databricks refused the JWT: no federation policy matches its issuer, audience or subject. */
  | "ERR_EXCHANGE_INVALID_GRANT"
  /** Databricks refused the client: `client_id` is not a service principal with a policy. */
  | "ERR_EXCHANGE_INVALID_CLIENT"
  /** Databricks rejected the request for another reason (scope, endpoint, account). */
  | "ERR_EXCHANGE_REJECTED"
  /** Databricks throttled, failed with 5xx, timed out or could not be reached. */
  | "ERR_EXCHANGE_UNAVAILABLE"
  /** Databricks answered 200 with something that is not a usable token. */
  | "ERR_EXCHANGE_INVALID_RESPONSE"
  /** The token Databricks issued lives no longer than the minimum TTL, so it can never be served. */
  | "ERR_TOKEN_LIFETIME_TOO_SHORT"
  /** SnapStart init: no token is fetched before the snapshot. */
  | "ERR_SNAPSTART_INIT"
  /** No valid token arrived within the request's wait. */
  | "ERR_TOKEN_WAIT_TIMEOUT";

export interface BrokerErrorOptions {
  step: Step;
  /** True when trying again soon may succeed (network, 5xx, throttling). */
  retryable: boolean;
  /** The code the upstream service answered, as it spelled it (`AccessDenied`, `invalid_grant`). */
  upstreamCode?: string;
  /** What to check to fix it: names a set-up step or a variable. */
  hint?: string;
  /** Milliseconds the upstream asked us to wait (`Retry-After`). */
  retryAfterMs?: number;
  /** The upstream refused for its rate limit (STS `Throttling`, HTTP 429): others are likely asking too. */
  throttled?: boolean;
  cause?: unknown;
}

export class BrokerError extends Error {
  override readonly name = "BrokerError";
  readonly code: BrokerErrorCode;
  readonly step: Step;
  readonly retryable: boolean;
  readonly upstreamCode: string | undefined;
  readonly hint: string | undefined;
  readonly retryAfterMs: number | undefined;
  readonly throttled: boolean;

  constructor(code: BrokerErrorCode, message: string, options: BrokerErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.step = options.step;
    this.retryable = options.retryable;
    this.upstreamCode = options.upstreamCode;
    this.hint = options.hint;
    this.retryAfterMs = options.retryAfterMs;
    this.throttled = options.throttled ?? false;
  }

  /** One line for a 503 body or a log: step, upstream code, what happened, what to check. */
  summary(): string {
    const code = this.upstreamCode ? ` ${this.upstreamCode}` : "";
    const hint = this.hint ? ` Hint: ${this.hint}` : "";
    return `${this.step}${code}: ${this.message}${hint}`;
  }
}

/** Shape test that survives bundling (see the module comment). */
export function isBrokerError(value: unknown): value is BrokerError {
  return (
    value instanceof Error &&
    typeof (value as Partial<BrokerError>).code === "string" &&
    typeof (value as Partial<BrokerError>).step === "string" &&
    typeof (value as Partial<BrokerError>).retryable === "boolean"
  );
}

/**
 * Quoted upstream text is cut to this: an upstream (or a proxy before it) answering a 60 KB
 * `error_description` would otherwise put it whole into every 503, log line and diagnosis.
 */
export const MAX_QUOTED_CHARS = 300;
/** Real upstream codes are short (`OutboundWebIdentityFederationDisabledException`, 46). */
export const MAX_QUOTED_CODE_CHARS = 64;

/** Upstream text for a message: whitespace flattened, cut to `max` characters with an ellipsis. */
export function quoteUpstream(text: string, max = MAX_QUOTED_CHARS): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}
