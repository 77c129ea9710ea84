/**
 * Diagnosis shared by the extension and the `doctor` command: what a JWT claims, which
 * federation-policy setting a refused exchange points at, and the step-by-step checklist
 * (✓ / ✗ with a fix) both print. Nothing here ever holds on to a token: claims are decoded
 * and the token itself is dropped.
 */
import type { Target } from "./config.js";
import { BrokerError, isBrokerError } from "./errors.js";
import { redact } from "./log.js";

/** The claims a Databricks federation policy is matched against (plus the times). */
export interface JwtClaims {
  readonly iss: string | undefined;
  readonly sub: string | undefined;
  readonly aud: readonly string[];
  /** Unix seconds. */
  readonly exp: number | undefined;
  /** Unix seconds. */
  readonly iat: number | undefined;
}

/**
 * Decodes a JWT's payload without verifying it: the doctor and the hints only need to show
 * what the token says, and the relying party (Databricks) does the verifying.
 * Returns undefined for anything that is not a JWT with a JSON object payload.
 */
export function decodeJwtClaims(jwt: string): JwtClaims | undefined {
  const part = jwt.split(".")[1];
  if (part === undefined || !/^[A-Za-z0-9_-]+$/.test(part)) return undefined;
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch {
    return undefined;
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) return undefined;
  const p = payload as Record<string, unknown>;
  const str = (v: unknown) => (typeof v === "string" ? v : undefined);
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
  const aud = typeof p.aud === "string" ? [p.aud] : Array.isArray(p.aud) ? p.aud.filter((a): a is string => typeof a === "string") : [];
  return Object.freeze({ iss: str(p.iss), sub: str(p.sub), aud: Object.freeze(aud), exp: num(p.exp), iat: num(p.iat) });
}

/** Which federation-policy field a Databricks `invalid_grant` description names, when it names one. */
type PolicyField = "issuer" | "audiences" | "subject" | "expiry" | "signature";

/**
 * Databricks says in `error_description` what did not match; these words find it. An
 * unrecognised description leaves all three policy fields as suspects.
 */
const FIELD_WORDS: readonly [PolicyField, RegExp][] = [
  // First: a key that does not verify is not cured by changing the policy's issuer.
  ["signature", /signature|\bkid\b|signing key|algorithm/i],
  ["issuer", /\bissuer\b|\biss\b|discovery|jwks_uri/i],
  ["audiences", /\baudiences?\b|\baud\b/i],
  ["subject", /\bsubject\b|\bsub\b/i],
  ["expiry", /\bexpired?\b|\bexp\b|not yet valid|\bnbf\b/i],
];

/** Reads only Databricks' description: the endpoint URL before it could hold any of the words. */
function policyFieldOf(message: string): PolicyField | undefined {
  const description = message.replace(/^.*? answered \d{3}: /, "");
  return FIELD_WORDS.find(([, re]) => re.test(description))?.[0];
}

const quote = (v: string | undefined) => (v === undefined ? "(none)" : JSON.stringify(v));

/**
 * The fix for an `invalid_grant`, naming the claim values the federation policy has to carry.
 * Each case keeps the general rule's wording ("the policy's subject must be the execution
 * role's ARN") and adds the value, so a reader of either finds the same sentence.
 */
function invalidGrantHint(claims: JwtClaims, target: Target, field: PolicyField | undefined): string {
  const owner = target.clientId === undefined ? "the account-wide federation policy" : `the federation policy of service principal ${target.clientId} (DATABRICKS_CLIENT_ID)`;
  const issuer = `the policy's issuer must be the account's outbound-federation issuer URL, ${quote(claims.iss)} (\`databricks-token-broker setup\` prints it)`;
  const audiences = `its audiences must include DATABRICKS_TOKEN_BROKER_AUDIENCE, ${quote(claims.aud[0])}`;
  const subject = `its subject must be the execution role's ARN, ${quote(claims.sub)}`;
  switch (field) {
    case "issuer":
      return `the token's issuer does not match: ${issuer}; set it on ${owner}`;
    case "audiences":
      return `the token's audience does not match: ${audiences.replace(/^its/, "the policy's")}; add it to ${owner}, or set DATABRICKS_TOKEN_BROKER_AUDIENCE to one the policy lists`;
    case "subject":
      return `the token's subject does not match: ${subject.replace(/^its/, "the policy's")}; set it on ${owner}`;
    case "expiry":
      return "Databricks saw the JWT as expired or not yet valid: check this machine's clock; the broker asks STS for a fresh JWT on every exchange";
    case "signature":
      return `Databricks could not verify the JWT's algorithm or signature: set DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM=RS256 (the one Databricks documents), and check that the policy's issuer is ${quote(claims.iss)} with no jwks_json of its own, so Databricks reads the issuer's published keys`;
    default:
      return `no federation policy accepts this JWT: check ${owner}: ${issuer}, ${audiences}, and ${subject}`;
  }
}

function invalidClientHint(claims: JwtClaims, target: Target): string {
  if (target.clientId === undefined) {
    return `the federation policy belongs to a service principal: set DATABRICKS_CLIENT_ID to its application ID (the policy's subject must be ${quote(claims.sub)})`;
  }
  return `DATABRICKS_CLIENT_ID ${quote(target.clientId)} is not the application ID of a service principal with a federation policy for subject ${quote(claims.sub)} and issuer ${quote(claims.iss)}; omit DATABRICKS_CLIENT_ID only for an account-wide policy`;
}

/**
 * Sharpens the hint of a refused exchange with what the JWT claimed, so the message names
 * the policy values to set rather than listing every possibility. Other errors pass through.
 */
export function explainExchangeFailure(err: unknown, jwt: string, target: Target): unknown {
  if (!isBrokerError(err) || (err.code !== "ERR_EXCHANGE_INVALID_GRANT" && err.code !== "ERR_EXCHANGE_INVALID_CLIENT")) return err;
  const claims = decodeJwtClaims(jwt);
  if (!claims) return err;
  const hint = err.code === "ERR_EXCHANGE_INVALID_GRANT" ? invalidGrantHint(claims, target, policyFieldOf(err.message)) : invalidClientHint(claims, target);
  return new BrokerError(err.code, err.message, {
    step: err.step,
    retryable: err.retryable,
    ...(err.upstreamCode !== undefined ? { upstreamCode: err.upstreamCode } : {}),
    hint,
    ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
    cause: err,
  });
}

// ---------------------------------------------------------------------------------------------
// The checklist

export type CheckStatus = "pass" | "fail" | "warn" | "skip";

/** One line of a diagnosis: a step of the chain, how it went, and for a failure how to fix it. */
export interface Check {
  /** Stable name: `configuration`, `federation`, `sts`, `claims.iss`, `claims.aud`, `claims.sub`, `claims.exp`, `exchange`, `api`. */
  readonly step: string;
  readonly status: CheckStatus;
  readonly detail: string;
  readonly fix?: string;
  /** The target the step ran for, where the step is per target. */
  readonly target?: string;
}

const MARK: Record<CheckStatus, string> = { pass: "✓", fail: "✗", warn: "!", skip: "-" };

/** The broker's steps in order, with the check each `BrokerError.step` stands for. */
const REFRESH_STEPS: readonly { step: string; label: string }[] = [
  { step: "configuration", label: "configuration read and checked" },
  { step: "sts", label: "STS GetWebIdentityToken signed a JWT" },
  { step: "exchange", label: "Databricks exchanged the JWT for an access token" },
  { step: "token", label: "the token is servable" },
];
const STEP_OF: Record<BrokerError["step"], string> = { config: "configuration", sts: "sts", exchange: "exchange", token: "token" };

/** The failed check for `err`: its one-line summary, and its hint as the fix. */
export function failedCheck(err: BrokerError, target?: string): Check {
  return {
    step: STEP_OF[err.step],
    status: "fail",
    detail: `${err.upstreamCode ? `${err.upstreamCode}: ` : ""}${err.message}`,
    ...(err.hint ? { fix: err.hint } : {}),
    ...(target !== undefined ? { target } : {}),
  };
}

/**
 * The checklist for a failed refresh inside Lambda: the steps before the failed one passed
 * (the broker got that far), the failed one carries the fix, the rest did not run.
 */
export function diagnoseRefreshFailure(err: BrokerError, target: string): Check[] {
  const failed = failedCheck(err, target);
  const at = REFRESH_STEPS.findIndex((s) => s.step === failed.step);
  return REFRESH_STEPS.map((s, i) =>
    i < at ? { step: s.step, status: "pass", detail: s.label, target } : i === at ? failed : { step: s.step, status: "skip", detail: "not reached", target },
  );
}

/** One check as text: `✗ exchange [default]: what happened`, then an indented `fix:` line. */
export function formatCheck(c: Check): string {
  const head = `${MARK[c.status]} ${c.step}${c.target !== undefined ? ` [${c.target}]` : ""}: ${redact(c.detail)}`;
  return c.fix && c.status !== "pass" ? `${head}\n    fix: ${redact(c.fix)}` : head;
}
