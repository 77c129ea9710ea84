/**
 * Configuration: every variable of SPEC §2, read once from the environment into a frozen,
 * typed object. Each problem names its variable and says why; all problems are reported
 * together so one failed deploy shows every mistake.
 */
import { BrokerError } from "./errors.js";

export type SigningAlgorithm = "RS256" | "ES384";
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
/** `DATABRICKS_TOKEN_BROKER_METRICS`: off, or CloudWatch embedded-metric-format records on stdout (SPEC §8). */
export const METRICS_FORMATS = ["off", "emf"] as const;
export type MetricsFormat = (typeof METRICS_FORMATS)[number];
/** `AWS_LAMBDA_INITIALIZATION_TYPE`, which changes how the lifecycle behaves (SPEC §4). */
export type InitializationType = "on-demand" | "provisioned-concurrency" | "snap-start" | "lambda-managed-instances";

export interface Target {
  /** `default` for the target built from `DATABRICKS_*`, else the key in `DATABRICKS_TOKEN_BROKER_TARGETS`. */
  readonly name: string;
  /** Normalised origin (`https://host[:port]`), compared with `X-Databricks-Host`. */
  readonly host: string;
  readonly isAccounts: boolean;
  readonly accountId: string | undefined;
  readonly clientId: string | undefined;
  readonly scope: string;
  readonly tokenEndpoint: string;
}

export interface Config {
  readonly targets: ReadonlyMap<string, Target>;
  readonly audience: string;
  readonly signingAlgorithm: SigningAlgorithm;
  readonly stsDurationSeconds: number;
  readonly port: number;
  readonly refreshAheadSeconds: number;
  readonly minTtlSeconds: number;
  readonly waitSeconds: number;
  readonly logLevel: LogLevel;
  readonly region: string;
  readonly initializationType: InitializationType;
  readonly metrics: MetricsFormat;
  /** The CloudWatch namespace of the metric records. */
  readonly metricsNamespace: string;
}

/**
 * A setting that works but will surprise: init goes on, the extension logs it as a `warn`
 * line, and `doctor` shows it as a `!` check.
 */
export interface ConfigWarning {
  /** The variable to change. */
  readonly variable: string;
  /** What is wrong, and what the user will see because of it. */
  readonly detail: string;
  readonly fix: string;
}

export type ParsedConfig =
  | { readonly enabled: false; readonly logLevel: LogLevel; readonly enabledValue: string | undefined }
  | { readonly enabled: true; readonly config: Config; readonly warnings: readonly ConfigWarning[] };

export const DEFAULT_TARGET = "default";
const P = "DATABRICKS_TOKEN_BROKER_";

/** Defaults of SPEC §2. */
export const DEFAULTS = Object.freeze({
  scope: "all-apis",
  audience: "databricks",
  signingAlgorithm: "RS256" as SigningAlgorithm,
  stsDurationSeconds: 300,
  port: 2775,
  refreshAheadSeconds: 600,
  minTtlSeconds: 120,
  waitSeconds: 10,
  logLevel: "info" as LogLevel,
  // Custom metrics are billed per metric and month: nobody pays for them without asking.
  metrics: "off" as MetricsFormat,
  metricsNamespace: "DatabricksTokenBroker",
});

/** STS `GetWebIdentityToken` accepts `DurationSeconds` from 60 to 3600 (STS API reference). */
export const STS_DURATION_RANGE = [60, 3600] as const;
/**
 * Lambda's own Runtime API listens on 127.0.0.1:9001 inside the environment, so a broker
 * there could never bind (Lambda "Using the Lambda runtime API" documentation).
 */
const RESERVED_PORTS = new Set([9001]);
/** Longest wait that can make sense: Lambda's maximum function timeout is 900 s. */
const MAX_WAIT_SECONDS = 900;
const TARGET_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const TARGET_KEYS = new Set(["host", "client_id", "account_id", "scope", "token_endpoint"]);
/** Databricks account IDs are UUIDs; anything URL-safe is accepted so a typo shows in the error, not in the path. */
const ACCOUNT_ID = /^[A-Za-z0-9-]{1,128}$/;
const NO_SPACE = /^[\x21-\x7e]+$/;
const SCOPE = /^[\x21-\x7e]+( [\x21-\x7e]+)*$/;
/**
 * A CloudWatch namespace: up to 255 of alphanumerics, `.`, `-`, `_`, `/`, `#`, `:` and the
 * space (CloudWatch concepts, "Namespaces"); the value is trimmed, so it neither starts nor ends
 * with a space. `AWS/` is reserved for AWS's own services.
 */
const METRICS_NAMESPACE = /^[A-Za-z0-9._\/#:-]([A-Za-z0-9._\/#: -]{0,253}[A-Za-z0-9._\/#:-])?$/;
const RESERVED_NAMESPACE_PREFIX = "AWS/";

/**
 * The value of `DATABRICKS_AUTH_TYPE` that makes the Databricks SDKs and CLI use only the
 * metadata-service provider (its name in databricks-sdk-py, -go and -js).
 */
export const METADATA_AUTH_TYPE = "metadata-service";
/**
 * Variables the SDKs count as another authorization method (their `auth` attribute), by that
 * method's name. With any of them beside `DATABRICKS_METADATA_SERVICE_URL` and no
 * `DATABRICKS_AUTH_TYPE`, the SDKs' config validation refuses to start. The common ones only:
 * `DATABRICKS_CLIENT_ID` is set for every service-principal policy.
 */
const SDK_AUTH_VARIABLES: readonly (readonly [string, string])[] = [
  ["DATABRICKS_CLIENT_ID", "oauth"],
  ["DATABRICKS_CLIENT_SECRET", "oauth"],
  ["DATABRICKS_TOKEN", "pat"],
  ["DATABRICKS_USERNAME", "basic"],
  ["DATABRICKS_PASSWORD", "basic"],
];
/** The only hosts the SDKs accept in `DATABRICKS_METADATA_SERVICE_URL` (each SDK checks the hostname). */
const SDK_METADATA_HOSTS = new Set(["localhost", "127.0.0.1"]);

/** Values that switch the broker on (SPEC §2); anything else leaves it idle. */
const ENABLED_VALUES = new Set(["true", "1", "on"]);
/** Values that plainly mean off, so only anything else earns a warning. */
const DISABLED_VALUES = new Set(["", "false", "0", "off"]);

/** True when `DATABRICKS_TOKEN_BROKER_ENABLED` holds a value that is neither on nor off. */
export function isUnrecognisedSwitch(value: string | undefined): boolean {
  return value !== undefined && !DISABLED_VALUES.has(value.trim().toLowerCase()) && !ENABLED_VALUES.has(value.trim().toLowerCase());
}

/** True for hosts that only this machine can reach, where plain http is acceptable. */
export function isLoopbackHostname(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127(\.\d{1,3}){3}$/.test(h);
}

/**
 * Normalises a host as the SDKs send it in `X-Databricks-Host` (`scheme://host[:port]`):
 * scheme defaults to https, lower-case host, default port dropped, no trailing slash.
 * Returns undefined for anything that is not a bare origin.
 */
export function normalizeHost(input: string): string | undefined {
  const raw = input.trim();
  if (raw === "") return undefined;
  const withScheme = withDefaultScheme(raw);
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    return undefined;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return undefined;
  if (url.username || url.password || url.search || url.hash || (url.pathname !== "/" && url.pathname !== "")) {
    return undefined;
  }
  return url.origin;
}

/** A host as a URL: `https://` unless it names a scheme. */
function withDefaultScheme(raw: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(raw.trim()) ? raw.trim() : `https://${raw.trim()}`;
}

/** Databricks SDKs treat `accounts.` and `accounts-dod.` hosts as the account console. */
function isAccountsHost(origin: string): boolean {
  const hostname = new URL(origin).hostname;
  return hostname.startsWith("accounts.") || hostname.startsWith("accounts-dod.");
}

class Problems {
  readonly list: string[] = [];
  add(variable: string, why: string): void {
    this.list.push(`${variable}: ${why}`);
  }
}

function readWholeNumber(
  env: NodeJS.ProcessEnv,
  name: string,
  fallback: number,
  min: number,
  max: number,
  problems: Problems,
): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = raw.trim();
  if (!/^\d+$/.test(value)) {
    problems.add(name, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
    return fallback;
  }
  const n = Number(value);
  if (n < min || n > max) {
    problems.add(name, `must be from ${min} to ${max}, got ${n}`);
    return fallback;
  }
  return n;
}

function readEnum<T extends string>(
  env: NodeJS.ProcessEnv,
  name: string,
  allowed: readonly T[],
  fallback: T,
  problems: Problems,
  { normalise = (s: string) => s }: { readonly normalise?: (s: string) => string } = {},
): T {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = normalise(raw.trim());
  if ((allowed as readonly string[]).includes(value)) return value as T;
  problems.add(name, `must be one of ${allowed.join(", ")}, got ${JSON.stringify(raw)}`);
  return fallback;
}

/**
 * Anything before an `@` in a URL's authority (its user name and password), from `//` or the
 * start, up to the first `/`, `?`, `#` or space: messages quote a URL only through `quoteUrl`.
 */
const USERINFO = /(^|\/\/)[^/?#\s]*@/g;
const NO_USERINFO = "must not carry a user name or password";

/** `raw`, quoted, with any user name and password masked as `***`. */
function quoteUrl(raw: string): string {
  return JSON.stringify(raw.replace(USERINFO, "$1***@"));
}

/** True when `raw` names a user or password, or looks as if it does where it does not parse. */
function hasUserinfo(raw: string, url: URL | undefined): boolean {
  return url ? url.username !== "" || url.password !== "" : new RegExp(USERINFO.source).test(raw);
}

/** A URL the broker (or the AWS SDK) may send a token request to: https, or http on loopback only. */
function checkEndpoint(variable: string, raw: string, problems: Problems): string | undefined {
  const url = URL.canParse(raw.trim()) ? new URL(raw.trim()) : undefined;
  if (hasUserinfo(raw, url)) {
    problems.add(variable, `${NO_USERINFO}, got ${quoteUrl(raw)}`);
    return undefined;
  }
  if (url === undefined) {
    problems.add(variable, `must be an absolute URL, got ${quoteUrl(raw)}`);
    return undefined;
  }
  if (url.protocol === "https:" || (url.protocol === "http:" && isLoopbackHostname(url.hostname))) return url.href;
  problems.add(variable, `must use https (plain http only for loopback addresses), got ${quoteUrl(raw)}`);
  return undefined;
}

/**
 * Why `raw` is not a bare host, saying exactly what to drop: a workspace URL copied from the
 * browser carries the workspace ID (`?o=123`) or a page's path, which the broker cannot use.
 */
function notBareHost(raw: string): string {
  const withScheme = withDefaultScheme(raw);
  const url = URL.canParse(withScheme) ? new URL(withScheme) : undefined;
  if (url === undefined || (url.protocol !== "https:" && url.protocol !== "http:")) {
    return `must be a bare URL such as https://dbc-1234.cloud.databricks.com, got ${quoteUrl(raw)}`;
  }
  const extra = [
    url.pathname !== "/" && url.pathname !== "" ? `the path ${JSON.stringify(url.pathname)}` : undefined,
    url.search ? `the query ${JSON.stringify(url.search)}` : undefined,
    url.hash ? `the fragment ${JSON.stringify(url.hash)}` : undefined,
  ].filter((part) => part !== undefined);
  // The corrected value must pass the next check too, so a remote host gets https.
  const origin = url.protocol === "http:" && !isLoopbackHostname(url.hostname) ? `https://${url.host}` : url.origin;
  return `must be the host's bare URL, without a path, query or fragment: remove ${extra.join(" and ")}; the value to set is ${origin} (got ${quoteUrl(raw)})`;
}

/** A target's host as its normalised origin: https, or http on loopback only. */
function checkHost(variable: string, raw: string | undefined, problems: Problems): string | undefined {
  if (raw === undefined || raw.trim() === "") {
    problems.add(variable, "is required: the workspace URL (https://<workspace>.cloud.databricks.com) or an accounts host");
    return undefined;
  }
  const withScheme = withDefaultScheme(raw);
  if (hasUserinfo(raw, URL.canParse(withScheme) ? new URL(withScheme) : undefined)) {
    problems.add(variable, `${NO_USERINFO}, got ${quoteUrl(raw)}`);
    return undefined;
  }
  const host = normalizeHost(raw);
  if (host === undefined) {
    problems.add(variable, notBareHost(raw));
    return undefined;
  }
  if (host.startsWith("http:") && !isLoopbackHostname(new URL(host).hostname)) {
    problems.add(variable, `must use https (plain http only for loopback addresses), got ${quoteUrl(raw)}`);
    return undefined;
  }
  return host;
}

interface TargetInput {
  host: string | undefined;
  clientId: string | undefined;
  accountId: string | undefined;
  scope: string | undefined;
  tokenEndpoint: string | undefined;
}

/** Checks one target; `names` gives the variable name of each field for the messages. */
function buildTarget(
  name: string,
  input: TargetInput,
  names: Record<keyof TargetInput, string>,
  defaultScope: string,
  problems: Problems,
): Target | undefined {
  const before = problems.list.length;
  const host = checkHost(names.host, input.host, problems);
  const isAccounts = host !== undefined && isAccountsHost(host);
  const accountId = input.accountId?.trim() || undefined;
  if (accountId !== undefined && !ACCOUNT_ID.test(accountId)) {
    problems.add(names.accountId, `must be the Databricks account ID (a UUID), got ${JSON.stringify(input.accountId)}`);
  } else if (isAccounts && accountId === undefined && input.tokenEndpoint === undefined) {
    problems.add(names.accountId, `is required with an accounts host (${host})`);
  }
  const clientId = input.clientId?.trim() || undefined;
  if (clientId !== undefined && !NO_SPACE.test(clientId)) {
    problems.add(names.clientId, `must be the service principal's application ID, got ${JSON.stringify(input.clientId)}`);
  }
  const scope = input.scope === undefined || input.scope.trim() === "" ? defaultScope : input.scope.trim();
  // The default scope was checked, and reported, under its own variable (readScope).
  if (scope !== defaultScope && !SCOPE.test(scope)) problems.add(names.scope, scopeProblem(input.scope ?? ""));
  let tokenEndpoint: string | undefined;
  if (input.tokenEndpoint !== undefined && input.tokenEndpoint.trim() !== "") {
    tokenEndpoint = checkEndpoint(names.tokenEndpoint, input.tokenEndpoint, problems);
  } else if (host !== undefined) {
    // Databricks OAuth endpoints (docs: "Authenticate with an identity provider token").
    tokenEndpoint = isAccounts ? `${host}/oidc/accounts/${accountId ?? ""}/v1/token` : `${host}/oidc/v1/token`;
  }
  if (problems.list.length > before || host === undefined || tokenEndpoint === undefined) return undefined;
  return Object.freeze({ name, host, isAccounts, accountId, clientId, scope, tokenEndpoint });
}

const TARGETS_VARIABLE = `${P}TARGETS`;

/** The named targets of `DATABRICKS_TOKEN_BROKER_TARGETS`, each checked as the default target is. */
function parseTargets(raw: string | undefined, defaultScope: string, problems: Problems): Target[] {
  const targets: Target[] = [];
  for (const [name, value] of readTargetEntries(raw, problems)) {
    const at = `${TARGETS_VARIABLE}.${name}`;
    const input = targetInput(at, name, value, problems);
    if (input === undefined) continue;
    const target = buildTarget(name, input, targetFieldVariables(at), defaultScope, problems);
    if (target) targets.push(target);
  }
  return targets;
}

/** The entries of the TARGETS JSON object; none when it is unset or not such an object. */
function readTargetEntries(raw: string | undefined, problems: Problems): [string, unknown][] {
  if (raw === undefined || raw.trim() === "") return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    // V8 quotes the text around the error, which may hold a URL's password.
    const why = raw.includes("@") ? (e as Error).message.replace(/"[\s\S]*"/, "(text not quoted)") : (e as Error).message;
    problems.add(TARGETS_VARIABLE, `must be JSON like {"name": {"host": "https://..."}}: ${why}`);
    return [];
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    problems.add(TARGETS_VARIABLE, 'must be a JSON object of named targets, like {"name": {"host": "https://..."}}');
    return [];
  }
  return Object.entries(parsed as Record<string, unknown>);
}

/** One TARGETS entry as a TargetInput, or undefined when its name or shape is wrong. */
function targetInput(at: string, name: string, value: unknown, problems: Problems): TargetInput | undefined {
  if (!TARGET_NAME.test(name)) {
    problems.add(at, "target names are 1-64 letters, digits, '-' or '_'");
    return undefined;
  }
  if (name === DEFAULT_TARGET) {
    problems.add(at, `"${DEFAULT_TARGET}" is the target built from DATABRICKS_HOST; choose another name`);
    return undefined;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    problems.add(at, 'must be an object like {"host": "https://..."}');
    return undefined;
  }
  const fields = value as Record<string, unknown>;
  if (!checkTargetFields(at, fields, problems)) return undefined;
  const str = (k: string) => fields[k] as string | undefined;
  return {
    host: str("host"),
    clientId: str("client_id"),
    accountId: str("account_id"),
    scope: str("scope"),
    tokenEndpoint: str("token_endpoint"),
  };
}

/** True when every field is a known key with a string value; names each one that is not. */
function checkTargetFields(at: string, fields: Record<string, unknown>, problems: Problems): boolean {
  let ok = true;
  for (const [key, v] of Object.entries(fields)) {
    if (!TARGET_KEYS.has(key)) {
      problems.add(`${at}.${key}`, `unknown key; expected ${[...TARGET_KEYS].join(", ")}`);
      ok = false;
    } else if (typeof v !== "string") {
      problems.add(`${at}.${key}`, "must be a string");
      ok = false;
    }
  }
  return ok;
}

function targetFieldVariables(at: string): Record<keyof TargetInput, string> {
  return {
    host: `${at}.host`,
    clientId: `${at}.client_id`,
    accountId: `${at}.account_id`,
    scope: `${at}.scope`,
    tokenEndpoint: `${at}.token_endpoint`,
  };
}

const SET_AUTH_TYPE = `set DATABRICKS_AUTH_TYPE=${METADATA_AUTH_TYPE} on the function`;

/**
 * What the Databricks SDKs in the function will make of the variables that point them at the
 * broker (SPEC §5): each a setting the broker itself does not need, but without which the SDKs
 * fail or hide the broker's errors. The SDKs read the same environment as the extension.
 */
function sdkWarnings(env: NodeJS.ProcessEnv, port: number, targets: ReadonlyMap<string, Target>): ConfigWarning[] {
  const url = env.DATABRICKS_METADATA_SERVICE_URL;
  // The SDKs compare the value exactly (no trimming, no case folding), so the broker does too.
  const authType = env.DATABRICKS_AUTH_TYPE;
  const setUrl = `set DATABRICKS_METADATA_SERVICE_URL=http://localhost:${port}/metadata on the function`;
  if (url === undefined || url.trim() === "") {
    if (authType !== METADATA_AUTH_TYPE) return [];
    return [
      {
        variable: "DATABRICKS_METADATA_SERVICE_URL",
        detail: `DATABRICKS_AUTH_TYPE is ${METADATA_AUTH_TYPE} but DATABRICKS_METADATA_SERVICE_URL is not set: the Databricks SDKs and CLI will not find the broker`,
        fix: setUrl,
      },
    ];
  }

  const warnings: ConfigWarning[] = [];
  const authWarning = authTypeWarning(env, authType);
  if (authWarning) warnings.push(authWarning);
  const wrong = metadataUrlProblems(url, port, targets, env.DATABRICKS_HOST);
  if (wrong.length > 0) {
    warnings.push({
      variable: "DATABRICKS_METADATA_SERVICE_URL",
      detail: `DATABRICKS_METADATA_SERVICE_URL does not reach the broker's metadata route: ${wrong.join("; ")}`,
      fix: setUrl,
    });
  }
  return warnings;
}

/** What a `DATABRICKS_AUTH_TYPE` other than metadata-service does beside a set metadata URL. */
function authTypeWarning(env: NodeJS.ProcessEnv, authType: string | undefined): ConfigWarning | undefined {
  if (authType === undefined || authType === "") return missingAuthTypeWarning(env);
  if (authType === METADATA_AUTH_TYPE) return undefined;
  return {
    variable: "DATABRICKS_AUTH_TYPE",
    detail: `DATABRICKS_AUTH_TYPE is ${JSON.stringify(authType)}, not ${METADATA_AUTH_TYPE}: the Databricks SDKs and CLI will not ask the broker at DATABRICKS_METADATA_SERVICE_URL`,
    fix: `${SET_AUTH_TYPE}, or unset DATABRICKS_METADATA_SERVICE_URL if the SDKs are not meant to use the broker`,
  };
}

function missingAuthTypeWarning(env: NodeJS.ProcessEnv): ConfigWarning {
  const others = SDK_AUTH_VARIABLES.filter(([name]) => env[name] !== undefined && env[name]?.trim() !== "");
  if (others.length === 0) {
    return {
      variable: "DATABRICKS_AUTH_TYPE",
      detail: `DATABRICKS_METADATA_SERVICE_URL is set without DATABRICKS_AUTH_TYPE: whenever the broker cannot serve a token, the Go SDK and the Databricks CLI hide its error behind "cannot configure default credentials"`,
      fix: SET_AUTH_TYPE,
    };
  }
  // Worded as the SDKs word it (config validation in databricks-sdk-py and -go; the JS SDK
  // does not count the URL as a method of its own, so it does not refuse).
  const methods = [...new Set([METADATA_AUTH_TYPE, ...others.map(([, method]) => method)])].sort().join(" and ");
  return {
    variable: "DATABRICKS_AUTH_TYPE",
    detail: `DATABRICKS_METADATA_SERVICE_URL is set without DATABRICKS_AUTH_TYPE: with ${others.map(([name]) => name).join(" and ")} also set, the Databricks SDKs for Python and Go and the Databricks CLI refuse to start ("validate: more than one authorization method configured: ${methods}")`,
    fix: SET_AUTH_TYPE,
  };
}


/**
 * Why `raw` would not reach `/metadata` of this broker as the SDKs call it; empty when it would.
 * The SDKs treat the URL as a secret (another metadata service may carry one in its path), so
 * the reasons quote neither the URL nor its path, only its scheme, host and port.
 */
function metadataUrlProblems(raw: string, port: number, targets: ReadonlyMap<string, Target>, sdkHost: string | undefined): string[] {
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    return ["it is not a URL"];
  }
  const problems: string[] = [];
  if (url.username || url.password) problems.push("it carries a user name or password, which the broker takes none of");
  if (url.protocol !== "http:") problems.push(`the broker serves plain http, not ${url.protocol.replace(/:$/, "")}`);
  if (!SDK_METADATA_HOSTS.has(url.hostname)) problems.push(`the SDKs accept only localhost or 127.0.0.1 as its host, got ${url.hostname}`);
  const urlPort = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  if (urlPort !== port) problems.push(`it names port ${urlPort}, but the broker listens on ${port} (DATABRICKS_TOKEN_BROKER_PORT)`);
  const route = /^\/metadata(?:\/([^/]+))?$/.exec(url.pathname);
  if (!route) {
    problems.push("its path is not /metadata or /metadata/{target}");
  } else if (route[1] !== undefined) {
    let name: string;
    try {
      name = decodeURIComponent(route[1]);
    } catch {
      name = route[1];
    }
    const target = targets.get(name);
    const host = sdkHost === undefined ? undefined : normalizeHost(sdkHost);
    if (!target) {
      problems.push(`it names a target that is not configured (configured: ${[...targets.keys()].join(", ")})`);
    } else if (host !== undefined && target.host !== host) {
      // The SDKs send DATABRICKS_HOST as X-Databricks-Host; the broker answers 403 to another host.
      problems.push(`it names target ${JSON.stringify(name)}, whose host ${target.host} is not DATABRICKS_HOST (${host}), which the SDKs send: the broker would answer 403`);
    }
  }
  return problems;
}

/**
 * The log level alone, for the lines the process writes before (or apart from) the whole
 * configuration: Node.js's own warnings. An invalid value is `info`; parseConfig reports it.
 */
export function readLogLevel(env: NodeJS.ProcessEnv): LogLevel {
  const value = env[`${P}LOG_LEVEL`]?.trim().toLowerCase();
  return LOG_LEVELS.find((l) => l === value) ?? DEFAULTS.logLevel;
}

/**
 * Reads the configuration from `env`. A disabled broker checks nothing else, so a function
 * can carry the layer switched off without any of its variables.
 * @throws BrokerError with code `ERR_CONFIG`, whose message lists every bad variable.
 */
export function parseConfig(env: NodeJS.ProcessEnv): ParsedConfig {
  const problems = new Problems();
  const logLevel = readEnum(env, `${P}LOG_LEVEL`, LOG_LEVELS, DEFAULTS.logLevel, problems, {
    normalise: (s) => s.toLowerCase(),
  });
  const enabledValue = env[`${P}ENABLED`];
  if (!ENABLED_VALUES.has((enabledValue ?? "").trim().toLowerCase())) {
    return Object.freeze({ enabled: false, logLevel: problems.list.length ? DEFAULTS.logLevel : logLevel, enabledValue });
  }

  const options = readBrokerOptions(env, problems);
  const targets = readTargets(env, options.scope, problems);
  const region = readRegion(env, problems);
  checkStsEndpoint(env, problems);
  const initializationType = readInitializationType(env);
  const { metrics, metricsNamespace } = readMetrics(env, problems);
  throwIfAny(problems);
  const warnings = [...signingWarnings(options.signingAlgorithm), ...sdkWarnings(env, options.port, targets)];

  return Object.freeze({
    enabled: true,
    warnings: Object.freeze(warnings),
    config: Object.freeze({
      targets,
      audience: options.audience,
      signingAlgorithm: options.signingAlgorithm,
      stsDurationSeconds: options.stsDurationSeconds,
      port: options.port,
      refreshAheadSeconds: options.refreshAheadSeconds,
      minTtlSeconds: options.minTtlSeconds,
      waitSeconds: options.waitSeconds,
      logLevel,
      region,
      initializationType,
      metrics,
      metricsNamespace,
    }),
  });
}

/** The broker's own `DATABRICKS_TOKEN_BROKER_*` options, besides the switch, the log level and the targets. */
interface BrokerOptions {
  readonly scope: string;
  readonly audience: string;
  readonly signingAlgorithm: SigningAlgorithm;
  readonly stsDurationSeconds: number;
  readonly port: number;
  readonly minTtlSeconds: number;
  readonly refreshAheadSeconds: number;
  readonly waitSeconds: number;
}

/** The order of the reads is the order of their problems in the error message. */
function readBrokerOptions(env: NodeJS.ProcessEnv, problems: Problems): BrokerOptions {
  const audience = readAudience(env, problems);
  const signingAlgorithm = readEnum(env, `${P}SIGNING_ALGORITHM`, ["RS256", "ES384"] as const, DEFAULTS.signingAlgorithm, problems, {
    normalise: (s) => s.toUpperCase(),
  });
  const stsDurationSeconds = readWholeNumber(env, `${P}STS_DURATION_SECONDS`, DEFAULTS.stsDurationSeconds, ...STS_DURATION_RANGE, problems);
  const port = readPort(env, problems);
  const { minTtlSeconds, refreshAheadSeconds } = readTokenLifetimes(env, problems);
  const waitSeconds = readWaitSeconds(env, problems);
  const scope = readScope(env, problems);
  return { scope, audience, signingAlgorithm, stsDurationSeconds, port, minTtlSeconds, refreshAheadSeconds, waitSeconds };
}

function readAudience(env: NodeJS.ProcessEnv, problems: Problems): string {
  const audience = env[`${P}AUDIENCE`]?.trim() || DEFAULTS.audience;
  if (!NO_SPACE.test(audience)) problems.add(`${P}AUDIENCE`, `must be one audience string without spaces, got ${JSON.stringify(audience)}`);
  return audience;
}

function readPort(env: NodeJS.ProcessEnv, problems: Problems): number {
  const port = readWholeNumber(env, `${P}PORT`, DEFAULTS.port, 1, 65535, problems);
  if (RESERVED_PORTS.has(port)) problems.add(`${P}PORT`, `${port} is Lambda's Runtime API port; choose another`);
  return port;
}

function readTokenLifetimes(env: NodeJS.ProcessEnv, problems: Problems): { minTtlSeconds: number; refreshAheadSeconds: number } {
  const minTtlSeconds = readWholeNumber(env, `${P}MIN_TTL_SECONDS`, DEFAULTS.minTtlSeconds, 0, 86_400, problems);
  const refreshAheadSeconds = readWholeNumber(env, `${P}REFRESH_AHEAD_SECONDS`, DEFAULTS.refreshAheadSeconds, 0, 86_400, problems);
  if (refreshAheadSeconds < minTtlSeconds) problems.add(...lifetimeProblem(env, minTtlSeconds, refreshAheadSeconds));
  return { minTtlSeconds, refreshAheadSeconds };
}

/**
 * The rule REFRESH_AHEAD_SECONDS ≥ MIN_TTL_SECONDS broken, told against the variable the user
 * set: one left at its default is named as the default, not as a value the user gave.
 */
function lifetimeProblem(env: NodeJS.ProcessEnv, minTtl: number, refreshAhead: number): [string, string] {
  const isSet = (name: string) => (env[name]?.trim() ?? "") !== "";
  const min = `${P}MIN_TTL_SECONDS`;
  const ahead = `${P}REFRESH_AHEAD_SECONDS`;
  const why = "a token would become unservable before its background refresh starts";
  if (isSet(min) && !isSet(ahead)) {
    return [min, `must not be above ${ahead} (${refreshAhead}, its default), got ${minTtl}: ${why}; lower it to ${refreshAhead} or less, or set ${ahead} to ${minTtl} or more`];
  }
  const minSource = isSet(min) ? `${minTtl}` : `${minTtl}, its default`;
  return [ahead, `must not be below ${min} (${minSource}), got ${refreshAhead}: ${why}; set it to ${minTtl} or more${isSet(min) ? `, or lower ${min}` : ""}`];
}

/** Seconds above 0, fractions allowed. */
function readWaitSeconds(env: NodeJS.ProcessEnv, problems: Problems): number {
  const raw = env[`${P}WAIT_SECONDS`];
  if (raw === undefined || raw.trim() === "") return DEFAULTS.waitSeconds;
  const n = Number(raw.trim());
  if (!/^\d+(\.\d+)?$/.test(raw.trim()) || !(n > 0) || n > MAX_WAIT_SECONDS) {
    problems.add(`${P}WAIT_SECONDS`, `must be a number of seconds above 0 and at most ${MAX_WAIT_SECONDS}, got ${JSON.stringify(raw)}`);
    return DEFAULTS.waitSeconds;
  }
  return n;
}

/** The scope of the default target, and of each named target that sets none. */
function readScope(env: NodeJS.ProcessEnv, problems: Problems): string {
  const scope = env[`${P}SCOPE`]?.trim() || DEFAULTS.scope;
  if (!SCOPE.test(scope)) problems.add(`${P}SCOPE`, scopeProblem(scope));
  return scope;
}

/** What is wrong with a scope list, and the value that would be right where one can be told. */
function scopeProblem(raw: string): string {
  const fixed = raw.trim().split(/\s+/).join(" ");
  if (fixed !== "" && SCOPE.test(fixed)) {
    return `must be OAuth scopes separated by single spaces, got ${JSON.stringify(raw)}: set it to ${JSON.stringify(fixed)}`;
  }
  return `must be space-separated OAuth scopes (printable characters, no quotes needed), got ${JSON.stringify(raw)}`;
}

/** The `default` target from the `DATABRICKS_*` variables, then the named ones. */
function readTargets(env: NodeJS.ProcessEnv, scope: string, problems: Problems): Map<string, Target> {
  const targets = new Map<string, Target>();
  const defaultTarget = buildTarget(
    DEFAULT_TARGET,
    {
      host: env.DATABRICKS_HOST,
      clientId: env.DATABRICKS_CLIENT_ID,
      accountId: env.DATABRICKS_ACCOUNT_ID,
      scope,
      tokenEndpoint: env[`${P}TOKEN_ENDPOINT`],
    },
    {
      host: "DATABRICKS_HOST",
      clientId: "DATABRICKS_CLIENT_ID",
      accountId: "DATABRICKS_ACCOUNT_ID",
      scope: `${P}SCOPE`,
      tokenEndpoint: `${P}TOKEN_ENDPOINT`,
    },
    scope,
    problems,
  );
  if (defaultTarget) targets.set(DEFAULT_TARGET, defaultTarget);
  for (const t of parseTargets(env[TARGETS_VARIABLE], scope, problems)) targets.set(t.name, t);
  return targets;
}

/** The region, or "" after reporting that there is none. */
function readRegion(env: NodeJS.ProcessEnv, problems: Problems): string {
  const region = env.AWS_REGION?.trim() || env.AWS_DEFAULT_REGION?.trim() || undefined;
  // GetWebIdentityToken has no global endpoint, so the regional one needs a region.
  if (region === undefined) problems.add("AWS_REGION", "is required (Lambda sets it; outside Lambda set it to the function's region)");
  return region ?? "";
}

/**
 * The AWS SDK sends the signed STS request, and gets the JWT back, at the first of these that
 * is set and not empty (its own order), so it follows the token endpoints' rule.
 */
const STS_ENDPOINT_VARIABLES = ["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"] as const;

function checkStsEndpoint(env: NodeJS.ProcessEnv, problems: Problems): void {
  const variable = STS_ENDPOINT_VARIABLES.find((name) => env[name]);
  if (variable !== undefined) checkEndpoint(variable, env[variable] ?? "", problems);
}

/** The metrics switch and namespace; a namespace set beside metrics off is checked all the same, so turning them on later cannot fail. */
function readMetrics(env: NodeJS.ProcessEnv, problems: Problems): { metrics: MetricsFormat; metricsNamespace: string } {
  const metrics = readEnum(env, `${P}METRICS`, METRICS_FORMATS, DEFAULTS.metrics, problems, { normalise: (s) => s.toLowerCase() });
  const name = `${P}METRICS_NAMESPACE`;
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return { metrics, metricsNamespace: DEFAULTS.metricsNamespace };
  const namespace = raw.trim();
  if (!METRICS_NAMESPACE.test(namespace)) {
    problems.add(name, `must be a CloudWatch namespace: 1 to 255 letters, digits, spaces and . - _ / # : characters, got ${JSON.stringify(raw)}`);
  } else if (namespace.startsWith(RESERVED_NAMESPACE_PREFIX)) {
    problems.add(name, `must not start with ${RESERVED_NAMESPACE_PREFIX}, which CloudWatch reserves for AWS services, got ${JSON.stringify(raw)}`);
  }
  return { metrics, metricsNamespace: namespace };
}

function readInitializationType(env: NodeJS.ProcessEnv): InitializationType {
  return readEnum(
    env,
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    ["on-demand", "provisioned-concurrency", "snap-start", "lambda-managed-instances"] as const,
    "on-demand",
    new Problems(), // Lambda sets it; an unknown future value falls back to on-demand rather than failing init.
  );
}

function throwIfAny(problems: Problems): void {
  if (problems.list.length === 0) return;
  throw new BrokerError("ERR_CONFIG", `invalid configuration: ${problems.list.join("; ")}`, {
    step: "config",
    retryable: false,
    hint: "fix the named environment variables of the function",
  });
}

function signingWarnings(signingAlgorithm: SigningAlgorithm): ConfigWarning[] {
  if (signingAlgorithm !== "ES384") return [];
  return [
    {
      variable: `${P}SIGNING_ALGORITHM`,
      detail: `${P}SIGNING_ALGORITHM is ES384: STS signs it, but Databricks documents only RS256 and ES256 for federation policies, so the exchange may be refused (invalid_grant)`,
      fix: `set ${P}SIGNING_ALGORITHM=RS256 (the default) unless ES384 is known to work with this workspace`,
    },
  ];
}
