/**
 * The AWS calls of `setup` and `doctor`: IAM's outbound-federation switch, and the caller's
 * identity, behind small interfaces so tests point real clients at loopback stand-ins.
 */
import {
  EnableOutboundWebIdentityFederationCommand,
  GetOutboundWebIdentityFederationInfoCommand,
  IAMClient,
} from "@aws-sdk/client-iam";
import { GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { homedir } from "node:os";
import { join } from "node:path";
import { loadSharedConfigFiles } from "@smithy/core/config";
import type { GetWebIdentityToken } from "../sts.js";

/** The part of `IAMClient` the CLI uses. */
export interface IamLike {
  send(command: GetOutboundWebIdentityFederationInfoCommand): Promise<{ IssuerIdentifier?: string | undefined; JwtVendingEnabled?: boolean | undefined }>;
  send(command: EnableOutboundWebIdentityFederationCommand): Promise<{ IssuerIdentifier?: string | undefined }>;
}

/** The part of `STSClient` the CLI uses itself: who the caller is, and its credentials. */
export interface StsCliLike {
  send(command: GetCallerIdentityCommand): Promise<{ Arn?: string | undefined; Account?: string | undefined }>;
  /** The SDK client's resolved configuration, whose credential provider the doctor asks first. */
  readonly config?: { readonly credentials?: unknown };
}

export interface AwsClients {
  iam: IamLike;
  sts: StsCliLike;
  /** The broker's STS port (sts.ts), for `doctor`. */
  getWebIdentityToken: GetWebIdentityToken;
}

/** IAM answers in well under a second; a CLI user waits this long at most per call. */
const IAM_TIMEOUT_MS = 10_000;

/**
 * IAM client for the CLI. IAM is a global service: any commercial region resolves to its one
 * endpoint, and `AWS_ENDPOINT_URL_IAM` overrides it as for every SDK client.
 */
export function createIamClient(region: string): IAMClient {
  return new IAMClient({ region, maxAttempts: 2, requestHandler: { requestTimeout: IAM_TIMEOUT_MS } });
}

/** Where a region came from, as the CLI reports it. */
export interface ResolvedRegion {
  readonly region: string;
  /** `AWS_REGION`, `AWS_DEFAULT_REGION`, or `profile NAME in PATH`. */
  readonly source: string;
}

/** The shared files the AWS CLI and SDKs read, as `env` names them (each SDK's own defaults). */
export function sharedFiles(env: NodeJS.ProcessEnv): { profile: string; configFile: string; credentialsFile: string } {
  const home = env.HOME?.trim() || env.USERPROFILE?.trim() || homeOfUser();
  return {
    profile: env.AWS_PROFILE?.trim() || "default",
    configFile: env.AWS_CONFIG_FILE?.trim() || join(home, ".aws", "config"),
    credentialsFile: env.AWS_SHARED_CREDENTIALS_FILE?.trim() || join(home, ".aws", "credentials"),
  };
}

/** The user's home from the password database; "~" where there is none (a sandbox user without HOME). */
function homeOfUser(): string {
  try {
    return homedir();
  } catch {
    return "~";
  }
}

/**
 * The region as the AWS CLI finds it: `AWS_REGION`, `AWS_DEFAULT_REGION`, then `region` in the
 * profile's section of the config file (`AWS_PROFILE`, else `default`; `AWS_CONFIG_FILE`, else
 * ~/.aws/config). The files are read with the SDK's own parser, from the paths `env` names, so
 * `[profile NAME]` sections and comments mean what they mean to the SDK. Undefined when none
 * of these holds one; a file that cannot be read counts as holding none.
 */
export async function resolveRegion(env: NodeJS.ProcessEnv): Promise<ResolvedRegion | undefined> {
  for (const name of ["AWS_REGION", "AWS_DEFAULT_REGION"] as const) {
    const region = env[name]?.trim();
    if (region) return { region, source: name };
  }
  const { profile, configFile, credentialsFile } = sharedFiles(env);
  const files = await loadSharedConfigFiles({ configFilepath: configFile, filepath: credentialsFile, ignoreCache: true }).catch(() => undefined);
  const region = files?.configFile[profile]?.region?.trim();
  return region ? { region, source: `profile ${profile} in ${configFile}` } : undefined;
}

/** Where the AWS SDK's default chain looked for credentials, in its order, with this `env`'s paths. */
export function credentialSources(env: NodeJS.ProcessEnv): string {
  const { profile, configFile, credentialsFile } = sharedFiles(env);
  return [
    "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
    `profile ${profile}${env.AWS_PROFILE?.trim() ? " (AWS_PROFILE)" : ""} in ${credentialsFile} and ${configFile} (keys, SSO, role_arn, credential_process)`,
    "a web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE)",
    "container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI)",
    "EC2 instance metadata",
  ].join(", ");
}

/**
 * Resolves the STS client's credentials (the SDK's default chain, or what the client was given)
 * before any call; the chain's error when it finds none, undefined when it finds some or the
 * client does not say. The SDK memoizes the result, so the calls that follow reuse it.
 */
export async function missingCredentials(sts: StsCliLike): Promise<unknown> {
  const provider = sts.config?.credentials;
  if (typeof provider !== "function") return undefined;
  try {
    await (provider as () => Promise<unknown>)();
    return undefined;
  } catch (err) {
    return err ?? new Error("the credential provider failed");
  }
}

/**
 * True for a failure to find credentials, before any request was sent. The SDK's credential
 * providers throw ProviderError and its subclasses, which carry `tryNextLink` (whether the
 * chain may go on); the chain's last word is "Could not load credentials from any providers".
 */
export function isCredentialsFailure(err: unknown): boolean {
  const e = err as { name?: unknown; tryNextLink?: unknown; message?: unknown } | null;
  if (e === null || typeof e !== "object") return false;
  return typeof e.tryNextLink === "boolean" || (typeof e.name === "string" && /ProviderError$/.test(e.name)) || (typeof e.message === "string" && /Could not load credentials/i.test(e.message));
}

/** An AWS SDK error as the CLI reports it: the code, what happened, and what to do. */
export interface AwsProblem {
  readonly code: string;
  readonly message: string;
  readonly fix: string;
}

const THROTTLING = /^(Throttling|RequestLimitExceeded|TooManyRequests|SlowDown)/;

/** Describes a failed call of `action` (an IAM or STS action name) for a person. */
export function describeAwsError(err: unknown, action: string): AwsProblem {
  const e = err as { name?: unknown; Code?: unknown; code?: unknown; message?: unknown; $metadata?: { httpStatusCode?: number } };
  const raw = typeof e.Code === "string" ? e.Code : typeof e.name === "string" ? e.name : typeof e.code === "string" ? e.code : "Error";
  const code = raw.replace(/Exception$/, "");
  const message = typeof e.message === "string" ? e.message : String(err);
  const status = e.$metadata?.httpStatusCode;
  const service = action.split(":")[0]?.toUpperCase() || "AWS";
  if (code === "AccessDenied") {
    return { code, message, fix: `the current AWS credentials may not call ${action}; run this with credentials that may (an account administrator for IAM actions)` };
  }
  if (isCredentialsFailure(err)) {
    return { code: "NoCredentials", message, fix: "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)" };
  }
  // Before the credentials: STS says "SignatureDoesNotMatch" for a clock far off too.
  if (code === "RequestExpired" || /^Signature (expired|not yet current)\b/.test(message)) {
    return { code, message, fix: "this machine's clock is more than 15 minutes off AWS's: set it right (NTP)" };
  }
  if (code === "ExpiredToken" || code === "InvalidClientTokenId" || code === "SignatureDoesNotMatch" || code === "UnrecognizedClient") {
    return { code, message, fix: "the AWS credentials are expired or invalid: refresh them (aws sso login, or new keys)" };
  }
  if (/Region is missing/i.test(message)) return { code: "NoRegion", message, fix: "set AWS_REGION or pass --region" };
  if (THROTTLING.test(code) || status === 429) return { code, message, fix: `${service} is throttling this account; try again in a minute` };
  if (status !== undefined && status >= 500) return { code, message, fix: `${service} failed; try again` };
  // No status, or a 2xx the SDK could not read: the answer never arrived whole.
  if (status === undefined || (status >= 200 && status < 300)) {
    return { code, message, fix: `${service} could not be reached, or its answer was cut short: check the network, a proxy, and AWS_ENDPOINT_URL_${service} if set` };
  }
  return { code, message, fix: `${action} was refused; check the credentials and the region` };
}

/** The switch and the issuer URL, as IAM reports them. */
export interface FederationState {
  readonly enabled: boolean;
  /** Undefined while the account never had it enabled: IAM makes the issuer on first enable. */
  readonly issuer: string | undefined;
}

/**
 * Reads the account's outbound-federation state. `FeatureDisabled` is IAM's documented answer
 * for a disabled account, so it is a state here, not an error.
 */
export async function getFederationState(iam: IamLike): Promise<FederationState> {
  try {
    const info = await iam.send(new GetOutboundWebIdentityFederationInfoCommand({}));
    return { enabled: info.JwtVendingEnabled === true, issuer: info.IssuerIdentifier || undefined };
  } catch (err) {
    if (describeAwsError(err, "").code === "FeatureDisabled") return { enabled: false, issuer: undefined };
    throw err;
  }
}

/**
 * Enables outbound federation and returns the issuer. `FeatureEnabled` (someone enabled it
 * in between) is success: the issuer is then read back.
 */
export async function enableFederation(iam: IamLike): Promise<FederationState> {
  try {
    const answer = await iam.send(new EnableOutboundWebIdentityFederationCommand({}));
    if (answer.IssuerIdentifier) return { enabled: true, issuer: answer.IssuerIdentifier };
  } catch (err) {
    if (describeAwsError(err, "").code !== "FeatureEnabled") throw err;
  }
  return getFederationState(iam);
}

/** The ARN of the current credentials (GetCallerIdentity needs no permission). */
export async function callerArn(sts: StsCliLike): Promise<string> {
  const answer = await sts.send(new GetCallerIdentityCommand({}));
  if (!answer.Arn) throw new Error("GetCallerIdentity answered without an Arn");
  return answer.Arn;
}

export type RoleFromCaller =
  | { readonly roleArn: string; readonly note: string }
  | { readonly roleArn: undefined; readonly note: string };

/**
 * The role behind an assumed-role session: `arn:aws:sts::ACCT:assumed-role/ROLE/SESSION` is
 * `arn:aws:iam::ACCT:role/ROLE`. The session ARN drops the role's path, so a role created
 * under a path (`role/service-role/ROLE`) has to be named with `--role-arn`.
 */
export function roleFromCaller(arn: string): RoleFromCaller {
  const assumed = /^arn:(aws[\w-]*):sts::(\d{12}):assumed-role\/([^/]+)\/[^/]+$/.exec(arn);
  // IAM Identity Center's roles are people signing in, never a function's execution role.
  if (assumed && assumed[3]!.startsWith("AWSReservedSSO_")) {
    return {
      roleArn: undefined,
      note: `the current credentials are an IAM Identity Center session (${arn}), not the function's execution role: pass the execution role with --role-arn`,
    };
  }
  if (assumed) {
    return {
      roleArn: `arn:${assumed[1]}:iam::${assumed[2]}:role/${assumed[3]}`,
      note: `derived from the current session ${arn}: if that is not the function's execution role, or the role was created under a path, pass the exact ARN with --role-arn`,
    };
  }
  if (/^arn:aws[\w-]*:iam::\d{12}:role\/.+$/.test(arn)) return { roleArn: arn, note: "the current credentials are the role itself" };
  return {
    roleArn: undefined,
    note: `the current credentials are ${arn}, not a role session: in Lambda the token's subject is the function's execution role, so pass it with --role-arn`,
  };
}
