/**
 * What the set-up needs written down: the execution role's policy and the commands that put
 * it and the Databricks federation policy in place, with every value filled in.
 */

export interface TokenRequestSettings {
  readonly audience: string;
  readonly durationSeconds: number;
}

/**
 * The execution role's permission to sign JWTs for the broker, bounded the way the IAM user
 * guide ("Controlling access with IAM policies", outbound identity federation) shows: the
 * audience with `ForAllValues` (every requested audience must be allowed; STS requires at
 * least one, so the empty-set case cannot arise) and the lifetime with `NumericLessThanEquals`
 * (the broker may ask for less after a SessionDurationEscalation, never more).
 */
export function executionRolePolicy({ audience, durationSeconds }: TokenRequestSettings): object {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "DatabricksTokenBroker",
        Effect: "Allow",
        Action: "sts:GetWebIdentityToken",
        Resource: "*",
        Condition: {
          "ForAllValues:StringEquals": { "sts:IdentityTokenAudience": audience },
          NumericLessThanEquals: { "sts:DurationSeconds": durationSeconds },
        },
      },
    ],
  };
}

/** Quotes one word for a POSIX shell: single quotes, with any single quote spelled `'\''`. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** `arn:aws:iam::ACCT:role/path/NAME` → `NAME`, which is what `--role-name` takes. */
export function roleNameOf(roleArn: string): string {
  return roleArn.slice(roleArn.lastIndexOf("/") + 1);
}

/** Name of the inline policy `setup` suggests; fixed, so running the command again replaces it. */
export const ROLE_POLICY_NAME = "databricks-token-broker";

/** Placeholder for the role's name when the role is not known: `--role-name` takes a name, not an ARN. */
export const ROLE_NAME_PLACEHOLDER = "<ROLE_NAME>";

/** The command that attaches `policy` to the role; `roleArn` undefined leaves the name as a placeholder. */
export function putRolePolicyCommand(roleArn: string | undefined, policy: object): string {
  const roleName = roleArn === undefined ? ROLE_NAME_PLACEHOLDER : roleNameOf(roleArn);
  return ["aws iam put-role-policy", "--role-name", shellQuote(roleName), "--policy-name", ROLE_POLICY_NAME, "--policy-document", shellQuote(JSON.stringify(policy))].join(" ");
}

/** Placeholder for the service principal's numeric ID when `--service-principal-id` is not given. */
export const SERVICE_PRINCIPAL_PLACEHOLDER = "<SERVICE_PRINCIPAL_ID>";

export interface FederationPolicyInput {
  readonly issuer: string;
  readonly audience: string;
  readonly subject: string;
  /** The service principal's numeric ID (not its application ID). */
  readonly servicePrincipalId: string | undefined;
}

/**
 * The Databricks CLI call that creates the service principal's federation policy. The CLI
 * takes the numeric service principal ID as its argument and reads `--json` into the
 * FederationPolicy body, whose `oidc_policy` holds issuer, audiences and subject
 * (databricks/cli, cmd/account/service-principal-federation-policy).
 */
export function federationPolicyCommand({ issuer, audience, subject, servicePrincipalId }: FederationPolicyInput): string {
  const body = { oidc_policy: { issuer, audiences: [audience], subject } };
  return [
    "databricks account service-principal-federation-policy create",
    servicePrincipalId ?? SERVICE_PRINCIPAL_PLACEHOLDER,
    "--json",
    shellQuote(JSON.stringify(body)),
  ].join(" ");
}

/**
 * How to find the numeric ID from the application ID that `DATABRICKS_CLIENT_ID` holds:
 * account SCIM filters on `applicationId`; the answer's `id` is the number.
 */
export function findServicePrincipalCommand(clientId: string | undefined): string {
  return `databricks account service-principals list --filter ${shellQuote(`applicationId eq "${clientId ?? "<DATABRICKS_CLIENT_ID>"}"`)}`;
}
