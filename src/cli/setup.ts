/**
 * `setup`: the AWS side checked (and switched on with `--enable`), the Databricks side
 * written out. It changes nothing but the account's federation switch, and only when asked.
 */
import { DEFAULTS, METADATA_AUTH_TYPE, STS_DURATION_RANGE } from "../config.js";
import type { SetupArgs } from "./args.js";
import { UsageError } from "./args.js";
import { type AwsClients, type AwsProblem, callerArn, describeAwsError, enableFederation, type FederationState, getFederationState, type IamLike, roleFromCaller, type StsCliLike } from "./aws.js";
import { executionRolePolicy, federationPolicyCommand, findServicePrincipalCommand, putRolePolicyCommand, ROLE_NAME_PLACEHOLDER, SERVICE_PRINCIPAL_PLACEHOLDER } from "./policies.js";

export interface SetupDeps {
  clients: AwsClients;
  env: NodeJS.ProcessEnv;
}

/** A value the printed commands or variables still hold as a placeholder, and how to supply it. */
export interface Unresolved {
  readonly placeholder: string;
  readonly fix: string;
}

export interface SetupReport {
  /** True when federation is on and no placeholder is left, so every printed value is real. */
  readonly ok: boolean;
  readonly federation: {
    /** Null when IAM could not be read: unknown, not off (`problem` says why). */
    readonly enabled: boolean | null;
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
  /** The placeholders left in the commands and variables above; empty when `ok`. */
  readonly unresolved: readonly Unresolved[];
}

const ISSUER_PLACEHOLDER = "<ISSUER_URL>";
const ROLE_PLACEHOLDER = "<ROLE_ARN>";
const HOST_PLACEHOLDER = "https://<workspace-host>";
const CLIENT_ID_PLACEHOLDER = "<service principal application ID>";
const ENABLE_COMMAND = "databricks-token-broker setup --enable";
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
  const commands = commandsFor({ federation, role, settings, iamPolicy });
  const unresolved = unresolvedIn({ federation, role, commands, environment });
  return { ok: federation.enabled === true && unresolved.length === 0, federation, role, settings, iamPolicy, commands, environment, unresolved };
}

interface PrintedValues {
  readonly federation: SetupReport["federation"];
  readonly role: SetupReport["role"];
  readonly commands: SetupReport["commands"];
  readonly environment: Readonly<Record<string, string>>;
}

/** Every placeholder the printed commands and variables hold, each with what supplies it. */
function unresolvedIn({ federation, role, commands, environment }: PrintedValues): Unresolved[] {
  const unresolved: Unresolved[] = [];
  if (federation.issuer === null) {
    const fix = federation.enabled === false ? `enable outbound web identity federation: ${ENABLE_COMMAND}` : `read it with credentials that may call iam:GetOutboundWebIdentityFederationInfo, and run setup again`;
    unresolved.push({ placeholder: ISSUER_PLACEHOLDER, fix });
  }
  if (role.arn === null) {
    const fix = "pass the function's execution role with --role-arn";
    unresolved.push({ placeholder: ROLE_PLACEHOLDER, fix }, { placeholder: ROLE_NAME_PLACEHOLDER, fix });
  }
  if (commands.createFederationPolicy.includes(SERVICE_PRINCIPAL_PLACEHOLDER)) {
    const lookUp = commands.findServicePrincipal ? `; look it up with: ${commands.findServicePrincipal}` : "";
    unresolved.push({ placeholder: SERVICE_PRINCIPAL_PLACEHOLDER, fix: `pass the service principal's numeric ID with --service-principal-id${lookUp}` });
  }
  if (environment.DATABRICKS_CLIENT_ID === CLIENT_ID_PLACEHOLDER) {
    unresolved.push({ placeholder: CLIENT_ID_PLACEHOLDER, fix: "pass the service principal's application ID with --client-id, or set DATABRICKS_CLIENT_ID" });
  }
  if (environment.DATABRICKS_HOST === HOST_PLACEHOLDER) {
    unresolved.push({ placeholder: HOST_PLACEHOLDER, fix: "set DATABRICKS_HOST to the workspace URL when running setup" });
  }
  return unresolved;
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
    // Not read is not off: the account may well be enabled.
    return { enabled: null, enabledNow: false, issuer: null, problem: describeAwsError(err, "iam:GetOutboundWebIdentityFederationInfo") };
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
  const environment: Record<string, string> = { [`${P}ENABLED`]: "true", DATABRICKS_HOST: env.DATABRICKS_HOST?.trim() || HOST_PLACEHOLDER };
  environment.DATABRICKS_CLIENT_ID = clientId ?? CLIENT_ID_PLACEHOLDER;
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
    enableFederation: federation.enabled === true ? null : ENABLE_COMMAND,
    putRolePolicy: putRolePolicyCommand(role.arn ?? undefined, iamPolicy),
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

/**
 * The report as a person reads it: README's set-up steps 1 to 5, in its order and with its
 * numbers, each with its state and what to run; then whether anything is still a placeholder.
 */
export function renderSetup(r: SetupReport): string {
  const lines = [
    "1. Enable outbound identity federation (once per AWS account):",
    ...federationLines(r).map((l) => indent(l)),
    "",
    "2. Let the execution role sign its identity for Databricks (an IAM policy on the function's execution role):",
    ...roleLines(r).map((l) => indent(l)),
    indent(JSON.stringify(r.iamPolicy, null, 2)),
    "",
    indent(r.commands.putRolePolicy),
    "",
    "3. Trust the role in Databricks: a federation policy on the service principal (as a Databricks account admin):",
    indent(r.commands.createFederationPolicy),
    ...(r.commands.findServicePrincipal ? [indent(`(${SERVICE_PRINCIPAL_PLACEHOLDER} is the service principal's numeric ID; look it up with: ${r.commands.findServicePrincipal})`)] : []),
    "",
    "4. Attach the layer and set the variables on the function:",
    ...Object.entries(r.environment).map(([k, v]) => indent(`${k}=${v}`)),
    indent("(the last two let the Databricks SDKs and CLI find the token by themselves: set both, or neither)"),
    "",
    "5. Check it with the function's role: databricks-token-broker doctor",
    "",
    ...verdictLines(r),
  ];
  return `${lines.join("\n")}\n`;
}

function federationLines(r: SetupReport): string[] {
  const f = r.federation;
  const issuer = `Issuer URL: ${f.issuer ?? `unknown (${ISSUER_PLACEHOLDER} below)`}`;
  if (f.enabled === null) {
    return [`✗ Outbound web identity federation: unknown, IAM could not be read: ${f.problem?.code}: ${f.problem?.message}`, `    fix: ${f.problem?.fix}`, issuer];
  }
  if (f.enabled) return [`✓ Outbound web identity federation: enabled${f.enabledNow ? " (just now)" : ""}`, issuer];
  if (f.problem) return [`✗ Outbound web identity federation: disabled, and enabling it failed: ${f.problem.code}: ${f.problem.message}`, `    fix: ${f.problem.fix}`, issuer];
  return [
    "✗ Outbound web identity federation: disabled",
    `    fix: ${r.commands.enableFederation} (needs iam:EnableOutboundWebIdentityFederation), or aws iam enable-outbound-web-identity-federation`,
    issuer,
  ];
}

function roleLines(r: SetupReport): string[] {
  if (r.role.arn) return [`✓ Execution role: ${r.role.arn}`, ...(r.role.note ? [`  (${r.role.note})`] : [])];
  return [`✗ Execution role: unknown${r.role.problem ? `: ${r.role.problem.code}: ${r.role.problem.message}` : ""}`, `    fix: ${r.role.note ?? "pass --role-arn"}`];
}

function verdictLines(r: SetupReport): string[] {
  if (r.ok) return ["✓ Every value above is real: run the commands, set the variables, then check with doctor."];
  if (r.unresolved.length === 0) return ["✗ Not ready: outbound web identity federation must be enabled first (step 1)."];
  return ["✗ Not ready: these placeholders stand in the commands above; supply them and run setup again:", ...r.unresolved.map((u) => indent(`${u.placeholder}: ${u.fix}`))];
}
