/**
 * `doctor`: the broker's chain run once, one step at a time, with the current credentials and
 * environment — configuration, the account's federation switch, the STS JWT, its claims
 * against what a federation policy needs, the exchange, and one authenticated call — each
 * marked with how it went and, when it failed, how to fix it. It never prints a token.
 */
import { type Config, type ConfigWarning, parseConfig, type Target } from "../config.js";
import { decodeJwtClaims, explainExchangeFailure, failedCheck, formatCheck, type Check } from "../diagnosis.js";
import { BrokerError, isBrokerError } from "../errors.js";
import { createExchange, type AccessToken, type Exchange, type FetchLike } from "../exchange.js";
import { fingerprint, redact, silentLogger } from "../log.js";
import { createStsSource, type StsJwt, type StsSource } from "../sts.js";
import type { DoctorArgs } from "./args.js";
import { type AwsClients, credentialSources, describeAwsError, getFederationState, isCredentialsFailure, missingCredentials, type ResolvedRegion, resolveRegion, sharedFiles } from "./aws.js";
import { claimChecks, expectedSubject } from "./doctor-claims.js";
import { executionRolePolicy } from "./policies.js";

export interface DoctorDeps {
  env: NodeJS.ProcessEnv;
  /** AWS clients for the configured region. */
  clients: (region: string) => AwsClients;
  fetch: FetchLike;
  now?: () => number;
}

export interface DoctorReport {
  /** No step failed (warnings and skipped steps allowed). */
  readonly ok: boolean;
  readonly checks: readonly Check[];
}

/** The steps in the order they run; a step not reached is reported as skipped. */
const STEPS = ["configuration", "federation", "sts", "claims.iss", "claims.aud", "claims.sub", "claims.exp", "exchange", "api"] as const;
type Step = (typeof STEPS)[number];

/**
 * The authenticated call: the caller's own identity, which every workspace principal may
 * read (Databricks SCIM API, `GET /api/2.0/preview/scim/v2/Me`).
 */
export const ME_PATH = "/api/2.0/preview/scim/v2/Me";
/** The CLI waits this long for the workspace; it answers /Me in well under a second. */
const API_TIMEOUT_MS = 10_000;
const P = "DATABRICKS_TOKEN_BROKER_";

class Checklist {
  readonly checks: Check[] = [];
  add(c: Check): void {
    // Upstream messages are quoted into details; none may carry a JWT out.
    this.checks.push({ ...c, detail: redact(c.detail), ...(c.fix !== undefined ? { fix: redact(c.fix) } : {}) });
  }
  /** Ends the run at `from`: it and every later step that has no check yet are reported as not reached. */
  stopAt(from: Step): DoctorReport {
    for (const step of STEPS.slice(STEPS.indexOf(from))) {
      if (!this.checks.some((c) => c.step === step)) this.add({ step, status: "skip", detail: "not reached: fix the failed step above first" });
    }
    return this.report();
  }
  report(): DoctorReport {
    return { ok: !this.checks.some((c) => c.status === "fail"), checks: this.checks };
  }
}

/** Runs the chain once; every outcome, failure included, is a check in the report. */
export async function runDoctor(args: DoctorArgs & { region?: string | undefined }, deps: DoctorDeps): Promise<DoctorReport> {
  const now = deps.now ?? Date.now;
  const list = new Checklist();
  // On a laptop the region is often only in the profile: found as the AWS CLI finds it.
  const region = args.region !== undefined ? { region: args.region, source: "--region" } : await resolveRegion(deps.env);
  const env: NodeJS.ProcessEnv = { ...deps.env, ...(region ? { AWS_REGION: region.region } : {}) };

  const config = configStep(list, env, region);
  if (!config) return list.stopAt("federation");
  const clients = deps.clients(config.region);
  // Without credentials nothing below can be asked: say so once, and where the SDK looked.
  const noCredentials = await missingCredentials(clients.sts);
  if (noCredentials !== undefined) {
    list.add({ step: "federation", status: "skip", detail: "not read: no AWS credentials were found (the sts step below says where the AWS SDK looked)" });
    list.add(noCredentialsCheck(noCredentials, env));
    return list.stopAt("claims.iss");
  }
  const issuer = await federationStep(list, clients.iam);
  const getJwt = stsSourceFor(config, clients, now);
  const first = await stsStep(list, getJwt, { config, now, env });
  if (!first) return list.stopAt("claims.iss");
  const claims = decodeJwtClaims(first.jwt);
  if (!claims) {
    list.add({ step: "claims.iss", status: "fail", detail: "STS answered a token whose payload is not JSON", fix: "check AWS_ENDPOINT_URL_STS if it is set" });
    return list.stopAt("claims.aud");
  }
  const expected = await expectedSubject(args, clients);
  for (const check of claimChecks(claims, { config, issuer, expected, nowMs: now() })) list.add(check);
  await exchangeSteps(list, { config, getJwt, first, fetch: deps.fetch, now });
  return list.report();
}

function describeConfig(config: Config, region: ResolvedRegion | undefined): string {
  const targets = [...config.targets.values()].map(
    (t) => `${t.name} → ${t.tokenEndpoint} (${t.clientId !== undefined ? `client_id ${t.clientId}` : "no client_id: account-wide policy"}, scope ${t.scope})`,
  );
  const from = region && region.source !== "AWS_REGION" ? ` (from ${region.source})` : "";
  const metrics = config.metrics === "emf" ? `metrics emf in namespace ${config.metricsNamespace}` : "metrics off";
  return `${targets.join("; ")}; JWT audience ${config.audience}, ${config.signingAlgorithm}, ${config.stsDurationSeconds} s; region ${config.region}${from}; ${metrics}`;
}

/** The fix for a configuration the broker refuses; for a missing region, where the doctor looked. */
function configFix(err: BrokerError, env: NodeJS.ProcessEnv, region: ResolvedRegion | undefined): string | undefined {
  if (region !== undefined || !/(^|; |: )AWS_REGION: /.test(err.message)) return err.hint;
  const { profile, configFile } = sharedFiles(env);
  const where = `looked in AWS_REGION, AWS_DEFAULT_REGION and profile ${profile}${env.AWS_PROFILE?.trim() ? " (AWS_PROFILE)" : ""} in ${configFile}`;
  return `${err.hint ? `${err.hint}; ` : ""}AWS_REGION: no region found (${where}): set AWS_REGION to the function's region, pass --region, or add region = <the function's region> to that profile`;
}

/** The `configuration` step: the configuration, or undefined once the step's failure is in `list`. */
function configStep(list: Checklist, env: NodeJS.ProcessEnv, region: ResolvedRegion | undefined): Config | undefined {
  let config: Config;
  let warnings: readonly ConfigWarning[];
  try {
    // The doctor checks the chain even where the switch is off (on a laptop, say), and says so.
    const parsed = parseConfig({ ...env, [`${P}ENABLED`]: "true" });
    if (!parsed.enabled) throw new Error("parseConfig ignored the switch");
    config = parsed.config;
    warnings = parsed.warnings;
  } catch (err) {
    if (!isBrokerError(err)) throw err;
    const fix = configFix(err, env, region);
    list.add({ step: "configuration", status: "fail", detail: err.message, ...(fix ? { fix } : {}) });
    return undefined;
  }
  list.add({ step: "configuration", status: "pass", detail: describeConfig(config, region) });
  if (!parseConfig(env).enabled) {
    list.add({
      step: "configuration",
      status: "warn",
      detail: `${P}ENABLED is ${env[`${P}ENABLED`] === undefined ? "not set" : JSON.stringify(env[`${P}ENABLED`])}: in Lambda the extension would stay idle (checked here as if it were true)`,
      fix: `set ${P}ENABLED=true on the function`,
    });
  }
  // The same warnings the extension logs at init, the SDKs' variables among them.
  for (const w of warnings) list.add({ step: "configuration", status: "warn", detail: w.detail, fix: w.fix });
  return config;
}

/** The `federation` step: the account's issuer URL, when IAM reports it. */
async function federationStep(list: Checklist, iam: AwsClients["iam"]): Promise<string | undefined> {
  try {
    const state = await getFederationState(iam);
    if (state.enabled) {
      list.add({ step: "federation", status: "pass", detail: `outbound web identity federation is enabled; issuer URL ${state.issuer ?? "(not reported)"}` });
      return state.issuer;
    }
    list.add({
      step: "federation",
      status: "fail",
      detail: "outbound web identity federation is disabled for this AWS account",
      fix: "databricks-token-broker setup --enable (as an account administrator), or aws iam enable-outbound-web-identity-federation",
    });
  } catch (err) {
    if (isCredentialsFailure(err)) {
      list.add({ step: "federation", status: "skip", detail: "not read: no AWS credentials were found (the sts step below says where the AWS SDK looked)" });
      return undefined;
    }
    const p = describeAwsError(err, "iam:GetOutboundWebIdentityFederationInfo");
    // Execution roles rarely may read IAM, so a denial here is expected, not a fault.
    list.add({
      step: "federation",
      status: p.code === "AccessDenied" ? "skip" : "warn",
      detail: `the account's federation state could not be read (${p.code}: ${p.message}); the STS step below shows it`,
      ...(p.code === "AccessDenied" ? {} : { fix: p.fix }),
    });
  }
  return undefined;
}

/** Nothing reached STS: said so, with where the SDK's chain looked, rather than what STS "answered". */
function noCredentialsCheck(err: unknown, env: NodeJS.ProcessEnv): Check {
  const message = err instanceof Error ? err.message : String(err);
  return {
    step: "sts",
    status: "fail",
    detail: `no AWS credentials were found, so STS was not called (${message})`,
    fix: `the AWS SDK looked in ${credentialSources(env)}: give one of them the execution role's credentials (a profile with role_arn, aws sso login for an SSO profile, or run inside the function)`,
  };
}

/** The JWTs as the broker gets them, without its logging. */
function stsSourceFor(config: Config, clients: AwsClients, now: () => number): StsSource {
  return createStsSource({
    getWebIdentityToken: clients.getWebIdentityToken,
    audience: config.audience,
    signingAlgorithm: config.signingAlgorithm,
    durationSeconds: config.stsDurationSeconds,
    log: silentLogger,
    now,
  });
}

/** The `sts` step: the first JWT, or undefined once the step's failure is in `list`. */
async function stsStep(list: Checklist, getJwt: StsSource, { config, now, env }: { config: Config; now: () => number; env: NodeJS.ProcessEnv }): Promise<StsJwt | undefined> {
  let first: StsJwt;
  try {
    first = await getJwt();
  } catch (err) {
    // The source rejects with BrokerErrors only.
    const e = err as BrokerError;
    if (isCredentialsFailure(e.cause)) {
      list.add(noCredentialsCheck(e.cause, env));
      return undefined;
    }
    const check = failedCheck(e);
    const credentials = describeAwsError(e.cause ?? err, "sts:GetWebIdentityToken");
    if (e.code === "ERR_STS_ACCESS_DENIED") {
      list.add({ ...check, fix: `${check.fix ?? ""}. The policy: ${JSON.stringify(executionRolePolicy({ audience: config.audience, durationSeconds: config.stsDurationSeconds }))}` });
    } else if (e.code === "ERR_STS_CREDENTIALS" || ["NoCredentials", "NoRegion"].includes(credentials.code)) {
      // The CLI's own credentials and clock, not the Lambda session the broker's hint speaks of.
      list.add({ ...check, fix: credentials.fix });
    } else {
      list.add(check);
    }
    return undefined;
  }
  const lifetime = Math.round((first.expiresAt - now()) / 1000);
  list.add({ step: "sts", status: "pass", detail: `GetWebIdentityToken signed a ${config.signingAlgorithm} JWT that expires in ${lifetime} s` });
  return first;
}

interface ExchangeStepsOptions {
  readonly config: Config;
  readonly getJwt: StsSource;
  /** The `sts` step's JWT, for the first target. */
  readonly first: StsJwt;
  readonly fetch: FetchLike;
  readonly now: () => number;
}

/** The `exchange` and `api` steps, for every target in turn. */
async function exchangeSteps(list: Checklist, { config, getJwt, first, fetch, now }: ExchangeStepsOptions): Promise<void> {
  const exchange = createExchange({ fetch, now, log: silentLogger });
  let unused: StsJwt | undefined = first;
  for (const target of config.targets.values()) {
    // A JWT is used once: token endpoints may treat its jti as single-use.
    const subject = unused ?? (await nextJwt(list, getJwt, target));
    unused = undefined;
    if (subject) await targetSteps(list, target, { subject, exchange, minTtlSeconds: config.minTtlSeconds, fetch, now });
  }
}

/** A fresh JWT for `target`, or undefined once its failure is in `list`. */
async function nextJwt(list: Checklist, getJwt: StsSource, target: Target): Promise<StsJwt | undefined> {
  try {
    return await getJwt();
  } catch (err) {
    list.add(failedCheck(err as BrokerError, target.name));
    return undefined;
  }
}

interface TargetStepsOptions {
  readonly subject: StsJwt;
  readonly exchange: Exchange;
  readonly minTtlSeconds: number;
  readonly fetch: FetchLike;
  readonly now: () => number;
}

/** One target's exchange, then its authenticated call with the token. */
async function targetSteps(list: Checklist, target: Target, { subject, exchange, minTtlSeconds, fetch, now }: TargetStepsOptions): Promise<void> {
  let token: AccessToken;
  try {
    // No expiresAt, as before exchange took it: tokenCheck bounds the lifetime by the JWT itself.
    token = await exchange(target, subject);
  } catch (err) {
    const subjectInDoubt = list.checks.some((c) => c.step === "claims.sub" && c.status !== "pass");
    list.add(exchangeFailedCheck(err, target, { jwt: subject.jwt, subjectInDoubt }));
    list.add({ step: "api", target: target.name, status: "skip", detail: "not reached: fix the exchange first" });
    return;
  }
  list.add(tokenCheck(target, token, { subject, minTtlSeconds, nowMs: now() }));
  list.add(await apiCheck(target, token, fetch));
}

/** The `exchange` step's failure, with the broker's diagnosis of why Databricks refused. */
function exchangeFailedCheck(err: unknown, target: Target, { jwt, subjectInDoubt }: { jwt: string; subjectInDoubt: boolean }): Check {
  const e = explainExchangeFailure(err, jwt, target);
  const check = failedCheck(isBrokerError(e) ? e : new BrokerError("ERR_EXCHANGE_UNAVAILABLE", String(e), { step: "exchange", retryable: true }), target.name);
  // With someone else's credentials the token's subject is theirs: a policy mismatch says nothing yet.
  const foreign = subjectInDoubt && isBrokerError(e) && e.code === "ERR_EXCHANGE_INVALID_GRANT";
  return foreign ? { ...check, fix: `first run the doctor with the execution role's credentials (see claims.sub): this token's subject is the current credentials'. Then: ${check.fix ?? ""}` } : check;
}

/** The `exchange` step's verdict on an issued token: could the broker serve it? */
function tokenCheck(target: Target, token: AccessToken, { subject, minTtlSeconds, nowMs }: { subject: StsJwt; minTtlSeconds: number; nowMs: number }): Check {
  // As the broker does: a token is not believed to outlive the JWT it came from.
  const left = Math.round((Math.min(token.expiresAt, subject.expiresAt) - nowMs) / 1000);
  if (left <= minTtlSeconds) {
    return {
      step: "exchange",
      target: target.name,
      status: "fail",
      detail: `Databricks issued a token (sha256 ${fingerprint(token.accessToken)}) that lives ${left} s, not more than ${P}MIN_TTL_SECONDS (${minTtlSeconds} s), so the broker could never serve it`,
      fix: `lower ${P}MIN_TTL_SECONDS (and ${P}REFRESH_AHEAD_SECONDS) below the token lifetime, or raise ${P}STS_DURATION_SECONDS`,
    };
  }
  return { step: "exchange", target: target.name, status: "pass", detail: `Databricks issued a Bearer token (sha256 ${fingerprint(token.accessToken)}) for scope ${token.scope}, valid ${left} s` };
}

/** The one authenticated call; accounts hosts have no workspace API to ask. */
async function apiCheck(target: Target, token: AccessToken, fetch: FetchLike): Promise<Check> {
  const at = { step: "api", target: target.name } as const;
  if (target.isAccounts) return { ...at, status: "skip", detail: "accounts host: no workspace API to call" };
  let res: Response;
  let text: string;
  try {
    res = await fetch(`${target.host}${ME_PATH}`, {
      method: "GET",
      headers: { authorization: `Bearer ${token.accessToken}`, accept: "application/json" },
      redirect: "error",
      signal: AbortSignal.timeout(API_TIMEOUT_MS),
    });
    text = await res.text();
  } catch (err) {
    return { ...at, status: "fail", detail: `GET ${target.host}${ME_PATH} failed: ${(err as Error).message}`, fix: "the workspace could not be reached from here: check DATABRICKS_HOST and the network" };
  }
  let body: Record<string, unknown> = {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed !== null && typeof parsed === "object") body = parsed as Record<string, unknown>;
  } catch {
    // Not JSON: the status alone is reported.
  }
  if (res.ok) {
    const who = typeof body.userName === "string" ? body.userName : typeof body.displayName === "string" ? body.displayName : "an unnamed principal";
    return { ...at, status: "pass", detail: `GET ${ME_PATH} → ${res.status}: the token works, as ${who}` };
  }
  const message = typeof body.message === "string" ? body.message : typeof body.error_description === "string" ? body.error_description : res.statusText;
  return {
    ...at,
    status: "fail",
    detail: `GET ${ME_PATH} → ${res.status}: ${message}`,
    fix:
      res.status === 401 || res.status === 403
        ? "Databricks issued the token but this workspace refuses it: assign the service principal to this workspace (account console → Workspaces → Permissions), and check that DATABRICKS_HOST is that workspace"
        : res.status >= 500
          ? "a Databricks fault; run the doctor again"
          : "DATABRICKS_HOST may not be a Databricks workspace URL",
  };
}

/** The report as text: one line per step, a fix under each failure, a verdict at the end. */
export function renderDoctor(report: DoctorReport): string {
  const failed = report.checks.filter((c) => c.status === "fail").length;
  const verdict = failed === 0 ? "✓ every step passed" : `✗ ${failed} step${failed > 1 ? "s" : ""} failed: fix the first one, then run the doctor again`;
  return `databricks-token-broker doctor\n${report.checks.map(formatCheck).join("\n")}\n\n${verdict}\n`;
}
