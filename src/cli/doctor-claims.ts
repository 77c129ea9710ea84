/**
 * The doctor's `claims.*` steps: the STS JWT's iss, aud, sub and exp against what the
 * federation policy and the broker's settings need, one check per claim.
 */
import type { Config } from "../config.js";
import type { Check, JwtClaims } from "../diagnosis.js";
import type { DoctorArgs } from "./args.js";
import { type AwsClients, callerArn, describeAwsError, roleFromCaller } from "./aws.js";
import { roleNameOf } from "./policies.js";

const P = "DATABRICKS_TOKEN_BROKER_";
const UNUSUAL_TOKEN = "STS answered an unusual token: check AWS_ENDPOINT_URL_STS if it is set";

/** The role the token's subject should be, and where that expectation came from. */
export interface ExpectedSubject {
  readonly arn: string | undefined;
  readonly note: string;
}

export interface ClaimsContext {
  readonly config: Config;
  /** The account's issuer URL, when IAM could be read. */
  readonly issuer: string | undefined;
  readonly expected: ExpectedSubject;
  readonly nowMs: number;
}

/** The role the federation policy should name: `--role-arn`, else the role of the current session. */
export async function expectedSubject(args: DoctorArgs, clients: AwsClients): Promise<ExpectedSubject> {
  if (args.roleArn !== undefined) return { arn: args.roleArn, note: "--role-arn" };
  try {
    const derived = roleFromCaller(await callerArn(clients.sts));
    return { arn: derived.roleArn, note: derived.roleArn ? "the current session's role" : derived.note };
  } catch (err) {
    const p = describeAwsError(err, "sts:GetCallerIdentity");
    return { arn: undefined, note: `the current identity could not be read (${p.code}: ${p.message})` };
  }
}

/** One check per claim, in the order the report lists them. */
export function claimChecks(claims: JwtClaims, { config, issuer, expected, nowMs }: ClaimsContext): Check[] {
  return [issCheck(claims.iss, issuer), audCheck(claims.aud, config.audience), subCheck(claims.sub, expected), expCheck(claims.exp, config, nowMs)];
}

function issCheck(iss: string | undefined, issuer: string | undefined): Check {
  if (iss === undefined) return { step: "claims.iss", status: "fail", detail: "the JWT has no iss claim", fix: UNUSUAL_TOKEN };
  if (issuer !== undefined && iss !== issuer) {
    return {
      step: "claims.iss",
      status: "fail",
      detail: `iss ${iss} is not this account's issuer URL ${issuer}`,
      fix: "the JWT was signed by another account's or a stand-in STS (check AWS_ENDPOINT_URL_STS and the credentials' account); the federation policy's issuer must be the one the function's tokens carry",
    };
  }
  return { step: "claims.iss", status: "pass", detail: `iss ${iss}${issuer !== undefined ? " (this account's issuer URL)" : ""}: the federation policy's issuer must be exactly this` };
}

function audCheck(aud: readonly string[], audience: string): Check {
  if (aud.includes(audience)) {
    return { step: "claims.aud", status: "pass", detail: `aud ${aud.join(", ")}: the federation policy's audiences must include ${audience} (${P}AUDIENCE)` };
  }
  return {
    step: "claims.aud",
    status: "fail",
    detail: `aud ${aud.join(", ") || "(none)"} does not contain ${P}AUDIENCE ${audience}`,
    fix: "STS signed for another audience than asked: check AWS_ENDPOINT_URL_STS if it is set",
  };
}

function subCheck(sub: string | undefined, expected: ExpectedSubject): Check {
  if (sub === undefined) return { step: "claims.sub", status: "fail", detail: "the JWT has no sub claim", fix: UNUSUAL_TOKEN };
  if (expected.arn === undefined) {
    return {
      step: "claims.sub",
      status: "warn",
      detail: `sub ${sub}; ${expected.note}`,
      fix: "run the doctor with the execution role's credentials (a profile with role_arn, or inside the function), or pass --role-arn",
    };
  }
  if (sub === expected.arn) return { step: "claims.sub", status: "pass", detail: `sub ${sub} (${expected.note}): the federation policy's subject must be exactly this` };
  if (isSameRoleWithPath(sub, expected.arn)) {
    return { step: "claims.sub", status: "pass", detail: `sub ${sub} (the role's full ARN, with its path): the federation policy's subject must be exactly this` };
  }
  return {
    step: "claims.sub",
    status: "fail",
    detail: `sub ${sub} is not ${expected.arn} (${expected.note})`,
    fix:
      expected.note === "--role-arn"
        ? `these credentials are not a session of ${expected.arn}: run the doctor with that role's credentials (a profile with role_arn, or inside the function)`
        : "the token names another principal than the current role; the federation policy's subject must be the execution role's ARN",
  };
}

/** The session ARN drops the role's path; the token keeps it. */
function isSameRoleWithPath(sub: string, expectedArn: string): boolean {
  return /^arn:aws[\w-]*:iam::\d{12}:role\//.test(sub) && roleNameOf(sub) === roleNameOf(expectedArn) && sub.split(":")[4] === expectedArn.split(":")[4];
}

function expCheck(exp: number | undefined, config: Config, nowMs: number): Check {
  if (exp === undefined) return { step: "claims.exp", status: "fail", detail: "the JWT has no exp claim", fix: UNUSUAL_TOKEN };
  const left = Math.round(exp - nowMs / 1000);
  if (left <= 0) {
    return { step: "claims.exp", status: "fail", detail: `exp is ${-left} s in the past`, fix: "this machine's clock is off: sync it (Databricks checks exp against its own clock)" };
  }
  if (left <= config.minTtlSeconds) {
    return {
      step: "claims.exp",
      status: "fail",
      detail: `exp in ${left} s, not more than ${P}MIN_TTL_SECONDS (${config.minTtlSeconds} s); a Databricks token lives no longer than the JWT it came from`,
      fix: `raise ${P}STS_DURATION_SECONDS (and the role policy's sts:DurationSeconds with it), or lower ${P}MIN_TTL_SECONDS`,
    };
  }
  const asked = config.stsDurationSeconds;
  return { step: "claims.exp", status: "pass", detail: `exp in ${left} s${left < asked - 5 ? ` (asked for ${asked} s: the role session ends sooner)` : ""}` };
}
