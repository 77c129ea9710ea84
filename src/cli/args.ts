/**
 * Command-line arguments of `databricks-token-broker`: which command, and its options, each
 * checked with a message that names the option.
 */
import { parseArgs } from "node:util";
import { STS_DURATION_RANGE } from "../config.js";

export const USAGE = `Usage: databricks-token-broker <command> [options]

Commands:
  setup    Report whether IAM outbound web identity federation is enabled (enable it with
           --enable), and print the issuer URL, the execution role's IAM policy and the
           Databricks federation-policy command, with every value filled in.
  doctor   Run the token chain once with the current AWS credentials and the broker's
           environment variables, one step at a time, marking each step ✓ or ✗ with the fix.
  help     Show this text.

setup options:
  --enable                     enable outbound web identity federation if it is off
                               (needs iam:EnableOutboundWebIdentityFederation)
  --role-arn ARN               the function's execution role (default: the role of the
                               current credentials' session)
  --service-principal-id ID    numeric ID of the Databricks service principal, for the
                               printed command (setup prints how to look it up)
  --client-id ID               the service principal's application ID
                               (default DATABRICKS_CLIENT_ID)
  --audience AUD               default DATABRICKS_TOKEN_BROKER_AUDIENCE, else databricks
  --duration-seconds N         default DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS, else 300

doctor options:
  --role-arn ARN               the role the federation policy names as subject (default:
                               the role of the current credentials' session)

Common options:
  --region REGION              AWS region (default AWS_REGION, AWS_DEFAULT_REGION, then the
                               region of the AWS_PROFILE (else default) profile in
                               AWS_CONFIG_FILE or ~/.aws/config; setup falls back to us-east-1,
                               as IAM is global)
  --json                       machine-readable output on stdout
  -h, --help                   show this text

doctor reads the same variables as the extension (DATABRICKS_HOST, DATABRICKS_CLIENT_ID,
DATABRICKS_TOKEN_BROKER_*, AWS_*), and warns when the SDKs' DATABRICKS_METADATA_SERVICE_URL
and DATABRICKS_AUTH_TYPE would not reach the broker. Neither command ever prints a token.
Exit status: doctor 0 when no step failed, 1 when one did; setup 0 when federation is enabled
and every printed value is real (no <PLACEHOLDER> left), 1 otherwise; 2 for a usage error.
In a Lambda function with the layer: databricks-token-broker doctor (/opt/bin, on PATH)
`;

export type Command = "setup" | "doctor" | "help";

export interface SetupArgs {
  readonly enable: boolean;
  readonly roleArn: string | undefined;
  readonly servicePrincipalId: string | undefined;
  readonly clientId: string | undefined;
  readonly audience: string | undefined;
  readonly durationSeconds: number | undefined;
}

export interface DoctorArgs {
  readonly roleArn: string | undefined;
}

export type ParsedArgs =
  | { readonly command: "help" }
  | { readonly command: "setup"; readonly json: boolean; readonly region: string | undefined; readonly setup: SetupArgs }
  | { readonly command: "doctor"; readonly json: boolean; readonly region: string | undefined; readonly doctor: DoctorArgs };

/** A command line that cannot run; the message names the option. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

const OPTIONS = {
  help: { type: "boolean", short: "h" },
  json: { type: "boolean" },
  region: { type: "string" },
  "role-arn": { type: "string" },
  enable: { type: "boolean" },
  "service-principal-id": { type: "string" },
  "client-id": { type: "string" },
  audience: { type: "string" },
  "duration-seconds": { type: "string" },
} as const;

const SETUP_ONLY = ["enable", "service-principal-id", "client-id", "audience", "duration-seconds"] as const;
/** IAM role ARNs, with an optional path; any partition. */
const ROLE_ARN = /^arn:aws[\w-]*:iam::\d{12}:role\/[\w+=,.@/-]{1,512}$/;
const REGION = /^[a-z]{2}(-[a-z]+)+-\d$/;

/** Parses `argv` (without node and the script). @throws UsageError */
export function parseCliArgs(argv: readonly string[]): ParsedArgs {
  const { values, positionals } = (() => {
    try {
      return parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  })();
  const [command, ...extra] = positionals;
  if (values.help || command === undefined || command === "help") return { command: "help" };
  if (command !== "setup" && command !== "doctor") throw new UsageError(`unknown command ${JSON.stringify(command)}; expected setup, doctor or help`);
  if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);

  const region = values.region;
  if (region !== undefined && !REGION.test(region)) throw new UsageError(`--region must be an AWS region such as eu-west-1, got ${JSON.stringify(region)}`);
  const roleArn = values["role-arn"];
  if (roleArn !== undefined && !ROLE_ARN.test(roleArn)) {
    throw new UsageError(`--role-arn must be an IAM role ARN such as arn:aws:iam::123456789012:role/my-function-role, got ${JSON.stringify(roleArn)}`);
  }
  const json = values.json ?? false;

  if (command === "doctor") {
    const misplaced = SETUP_ONLY.find((o) => values[o] !== undefined);
    if (misplaced) throw new UsageError(`--${misplaced} is a setup option; doctor reads the broker's environment variables`);
    return { command, json, region, doctor: { roleArn } };
  }

  const servicePrincipalId = values["service-principal-id"];
  if (servicePrincipalId !== undefined && !/^\d{1,19}$/.test(servicePrincipalId)) {
    throw new UsageError(`--service-principal-id must be the service principal's numeric ID (not its application ID), got ${JSON.stringify(servicePrincipalId)}`);
  }
  const clientId = values["client-id"];
  if (clientId !== undefined && !/^[\x21-\x7e]+$/.test(clientId)) throw new UsageError(`--client-id must be the service principal's application ID, got ${JSON.stringify(clientId)}`);
  const audience = values.audience;
  if (audience !== undefined && !/^[\x21-\x7e]+$/.test(audience)) throw new UsageError(`--audience must be one audience string without spaces, got ${JSON.stringify(audience)}`);
  const rawDuration = values["duration-seconds"];
  let durationSeconds: number | undefined;
  if (rawDuration !== undefined) {
    durationSeconds = Number(rawDuration);
    const [min, max] = STS_DURATION_RANGE;
    if (!/^\d+$/.test(rawDuration) || durationSeconds < min || durationSeconds > max) {
      throw new UsageError(`--duration-seconds must be a whole number from ${min} to ${max}, got ${JSON.stringify(rawDuration)}`);
    }
  }
  return { command, json, region, setup: { enable: values.enable ?? false, roleArn, servicePrincipalId, clientId, audience, durationSeconds } };
}
