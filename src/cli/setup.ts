/**
 * `setup`: the AWS side checked (and switched on with `--enable`), the Databricks side
 * written out. It changes nothing but the account's federation switch, and only when asked.
 */
import { DEFAULTS, METADATA_AUTH_TYPE, STS_DURATION_RANGE } from "../config.js";
import type { SetupArgs } from "./args.js";
import { UsageError } from "./args.js";
import { type AwsClients, type AwsProblem, callerArn, describeAwsError, enableFederation, type FederationState, getFederationState, type IamLike, roleFromCaller, type StsCliLike } from "./aws.js";
import { executionRolePolicy, federationPolicyCommand, findServicePrincipalCommand, putRolePolicyCommand } from "./policies.js";

export interface SetupDeps {
  clients: AwsClients;
  env: NodeJS.ProcessEnv;
}

export interface SetupReport {
  /** True when federation is on and the role is known, so every printed value is real. */
  readonly ok: boolean;
  readonly federation: {
    readonly enabled: boolean;
    /** This run switched it on. */
    readonly enabledNow: boolean;
    readonly issuer: string | null;
    readonly problem: AwsProblem | null;
  };
  readonly role: {
    readonly arn: string | null;
    readonly source: "--role-arn" | "session" | null;
    readonly note: string | null;
    readonly problem: AwsProblem | null;
  };
  readonly settings: {
    readonly audience: string;
    readonly durationSeconds: number;
    readonly clientId: string | null;
    readonly servicePrincipalId: string | null;
  };
  readonly iamPolicy: object;
  readonly commands: {
    readonly enableFederation: string | null;
    readonly putRolePolicy: string;
    readonly findServicePrincipal: string | null;
    readonly createFederationPolicy: string;
  };
  /** Function environment variables that follow from these settings. */
  readonly environment: Readonly<Record<string, string>>;
}

const ISSUER_PLACEHOLDER = "<ISSUER_URL>";
const ROLE_PLACEHOLDER = "<ROLE_ARN>";
const P = "DATABRICKS_TOKEN_BROKER_";

/** The duration: option, else the broker's variable, else its default; the variable is checked as the broker checks it. */
function durationFrom(args: SetupArgs, env: NodeJS.ProcessEnv): number {
  if (args.durationSeconds !== undefined) return args.durationSeconds;
  const raw = env[`${P}STS_DURATION_SECONDS`]?.trim();
  if (!raw) return DEFAULTS.stsDurationSeconds;
  const [min, max] = STS_DURATION_RANGE;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min || n > max) throw new UsageError(`${P}STS_DURATION_SECONDS must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  return n;
}

/** Runs the set-up checks; only `--enable` changes anything. */
export async function runSetup(args: SetupArgs, { clients, env }: SetupDeps): Promise<SetupReport> {
  const settings = settingsFrom(args, env);
  const federation = await federationFor(clients.iam, { enable: args.enable });
  const role = await roleFor(args.roleArn, clients.sts);
  const iamPolicy = executionRolePolicy({ audience: settings.audience, durationSeconds: settings.durationSeconds });
  const environment = environmentFor(settings, env);
  return {
    ok: federation.enabled && federation.issuer !== null && role.arn !== null,
    federation,
    role,
    settings,
    iamPolicy,
    commands: commandsFor({ federation, role, settings, iamPolicy }),
    environment,
  };
}

/** The settings: each from its option, else from `env`, else its default. */
function settingsFrom(args: SetupArgs, env: NodeJS.ProcessEnv): SetupReport["settings"] {
  const audience = args.audience ?? (env[`${P}AUDIENCE`]?.trim() || DEFAULTS.audience);
  const durationSeconds = durationFrom(args, env);
  const clientId = args.clientId ?? (env.DATABRICKS_CLIENT_ID?.trim() || undefined);
  return { audience, durationSeconds, clientId: clientId ?? null, servicePrincipalId: args.servicePrincipalId ?? null };
}

/** The account's federation switch, switched on first when `enable` asks for it. */
async function federationFor(iam: IamLike, { enable }: { enable: boolean }): Promise<SetupReport["federation"]> {
  let state: FederationState;
  try {
    state = await getFederationState(iam);
  } catch (err) {
    return { enabled: false, enabledNow: false, issuer: null, problem: describeAwsError(err, "iam:GetOutboundWebIdentityFederationInfo") };
  }
  if (state.enabled || !enable) return { enabled: state.enabled, enabledNow: false, issuer: state.issuer ?? null, problem: null };
  try {
    const after = await enableFederation(iam);
    return { enabled: after.enabled, enabledNow: true, issuer: after.issuer ?? null, problem: null };
  } catch (err) {
    return { enabled: false, enabledNow: false, issuer: state.issuer ?? null, problem: describeAwsError(err, "iam:EnableOutboundWebIdentityFederation") };
  }
}

/** The execution role: `--role-arn`, else the role of the current session. */
async function roleFor(roleArn: string | undefined, sts: StsCliLike): Promise<SetupReport["role"]> {
  if (roleArn !== undefined) return { arn: roleArn, source: "--role-arn", note: null, problem: null };
  try {
    const derived = roleFromCaller(await callerArn(sts));
    return { arn: derived.roleArn ?? null, source: derived.roleArn ? "session" : null, note: derived.note, problem: null };
  } catch (err) {
    return { arn: null, source: null, note: "pass the function's execution role with --role-arn", problem: describeAwsError(err, "sts:GetCallerIdentity") };
  }
}

/** The function's variables; a setting at its default is left out. */
function environmentFor({ audience, durationSeconds, clientId }: SetupReport["settings"], env: NodeJS.ProcessEnv): Record<string, string> {
  const environment: Record<string, string> = { [`${P}ENABLED`]: "true", DATABRICKS_HOST: env.DATABRICKS_HOST?.trim() || "https://<workspace-host>" };
  environment.DATABRICKS_CLIENT_ID = clientId ?? "<service principal application ID>";
  if (audience !== DEFAULTS.audience) environment[`${P}AUDIENCE`] = audience;
  if (durationSeconds !== DEFAULTS.stsDurationSeconds) environment[`${P}STS_DURATION_SECONDS`] = String(durationSeconds);
  // For the Databricks SDKs and CLI; the auth type is what keeps them from refusing to start beside DATABRICKS_CLIENT_ID (SPEC §5).
  const port = env[`${P}PORT`]?.trim();
  environment.DATABRICKS_METADATA_SERVICE_URL = `http://localhost:${port && /^\d{1,5}$/.test(port) ? port : DEFAULTS.port}/metadata`;
  environment.DATABRICKS_AUTH_TYPE = METADATA_AUTH_TYPE;
  return environment;
}

interface CommandsInput {
  readonly federation: SetupReport["federation"];
  readonly role: SetupReport["role"];
  readonly settings: SetupReport["settings"];
  readonly iamPolicy: object;
}

/** The commands to run, with placeholders where a value is not known yet. */
function commandsFor({ federation, role, settings, iamPolicy }: CommandsInput): SetupReport["commands"] {
  return {
    enableFederation: federation.enabled ? null : "databricks-token-broker setup --enable",
    putRolePolicy: putRolePolicyCommand(role.arn ?? ROLE_PLACEHOLDER, iamPolicy),
    findServicePrincipal: settings.servicePrincipalId === null ? findServicePrincipalCommand(settings.clientId ?? undefined) : null,
    createFederationPolicy: federationPolicyCommand({
      issuer: federation.issuer ?? ISSUER_PLACEHOLDER,
      audience: settings.audience,
      subject: role.arn ?? ROLE_PLACEHOLDER,
      servicePrincipalId: settings.servicePrincipalId ?? undefined,
    }),
  };
}

const indent = (text: string, by = "   ") => text.replace(/^/gm, by);

/** The report as a person reads it: state first, then the three things to do, in order. */
export function renderSetup(r: SetupReport): string {
  const lines: string[] = [];
  const f = r.federation;
  if (f.problem) {
    lines.push(`✗ Outbound web identity federation: ${f.problem.code}: ${f.problem.message}`, `    fix: ${f.problem.fix}`);
  } else if (f.enabled) {
    lines.push(`✓ Outbound web identity federation: enabled${f.enabledNow ? " (just now)" : ""}`);
  } else {
    lines.push("✗ Outbound web identity federation: disabled", `    fix: ${r.commands.enableFederation} (needs iam:EnableOutboundWebIdentityFederation), or aws iam enable-outbound-web-identity-federation`);
  }
  lines.push(`  Issuer URL: ${f.issuer ?? `unknown until federation is enabled (${ISSUER_PLACEHOLDER} below)`}`, "");

  if (r.role.arn) {
    lines.push(`✓ Execution role: ${r.role.arn}`);
    if (r.role.note) lines.push(`  (${r.role.note})`);
  } else {
    lines.push(`✗ Execution role: unknown${r.role.problem ? `: ${r.role.problem.code}: ${r.role.problem.message}` : ""}`, `    fix: ${r.role.note ?? "pass --role-arn"}`);
  }
  lines.push("");

  lines.push("1. Let the execution role sign JWTs for Databricks (IAM policy):", indent(JSON.stringify(r.iamPolicy, null, 2)), "", indent(r.commands.putRolePolicy), "");
  lines.push("2. Let Databricks accept them: a federation policy on the service principal (as a Databricks account admin):", indent(r.commands.createFederationPolicy));
  if (r.commands.findServicePrincipal) {
    lines.push(indent(`(SERVICE_PRINCIPAL_ID is the service principal's numeric ID; look it up with: ${r.commands.findServicePrincipal})`));
  }
  lines.push("");
  lines.push(
    "3. Set on the function:",
    ...Object.entries(r.environment).map(([k, v]) => indent(`${k}=${v}`)),
    indent("(the last two let the Databricks SDKs and CLI find the token by themselves: set both, or neither)"),
    "",
  );
  lines.push("Then check the whole chain with the function's role: databricks-token-broker doctor");
  return `${lines.join("\n")}\n`;
}
