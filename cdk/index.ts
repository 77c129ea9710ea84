/**
 * An AWS CDK v2 construct that does for a CDK app what template.yaml does for SAM (SPEC §7):
 * it publishes the broker's layers from the zips `npm run build` writes, and `addFunction`
 * attaches the right one, sets the function's environment, grants the conditioned
 * `sts:GetWebIdentityToken` and, when asked, creates the refresh-failure alarm (SPEC §8).
 * `aws-cdk-lib` and `constructs` are peer dependencies. `npm run build` compiles this file to
 * dist/cdk/, the package's `./cdk` export; the layer's bundle never imports it.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Duration, RemovalPolicy, Token } from "aws-cdk-lib";
import * as cloudwatch from "aws-cdk-lib/aws-cloudwatch";
import * as iam from "aws-cdk-lib/aws-iam";
import * as lambda from "aws-cdk-lib/aws-lambda";
import { Construct } from "constructs";

/** Props of {@link DatabricksTokenBroker}. */
export interface DatabricksTokenBrokerProps {
  /** `DATABRICKS_HOST`: the workspace URL, or `https://accounts.cloud.databricks.com` with `accountId`. */
  readonly host: string;
  /** `DATABRICKS_CLIENT_ID`: the service principal whose federation policy trusts the role; omit for an account-wide policy. */
  readonly clientId?: string;
  /** `DATABRICKS_ACCOUNT_ID`: required only when `host` is an accounts host. */
  readonly accountId?: string;
  /**
   * The audience of the AWS-signed JWT (`DATABRICKS_TOKEN_BROKER_AUDIENCE`), and the value
   * the role's policy allows for `sts:IdentityTokenAudience`.
   * @default "databricks"
   */
  readonly audience?: string;
  /**
   * Lifetime asked of STS for the JWT (`DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS`), and
   * the most the role's policy allows for `sts:DurationSeconds`; 60 to 3600.
   * @default 300
   */
  readonly stsDurationSeconds?: number;
  /**
   * The directory holding the zips `npm run build` writes (layer.zip,
   * layer-with-node-x86_64.zip, layer-with-node-arm64.zip).
   * @default the package's dist/, where the compiled construct (dist/cdk/index.js) sits
   */
  readonly layerZipDir?: string;
  /**
   * Turns on the broker's CloudWatch metrics (`DATABRICKS_TOKEN_BROKER_METRICS=emf`) on every
   * function added. Custom metrics cost money (README, Metrics).
   * @default false
   */
  readonly metrics?: boolean;
  /**
   * `DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE`, and the namespace of `metricRefreshFailure`.
   * @default "DatabricksTokenBroker"
   */
  readonly metricsNamespace?: string;
  /**
   * Creates, beside each function added, an alarm on any failed refresh in 5 minutes
   * (template.yaml's): one for the default target, and one for each named target of
   * `DATABRICKS_TOKEN_BROKER_TARGETS` in `environment`. Needs `metrics`.
   * @default false
   */
  readonly refreshFailureAlarm?: boolean;
  /**
   * What each refresh-failure alarm does when it fires, such as an `SnsAction`.
   * @default none
   */
  readonly alarmActions?: cloudwatch.IAlarmAction[];
  /**
   * Other `DATABRICKS_TOKEN_BROKER_*` options (README, Configuration), set on every function
   * added. Not the audience, STS duration or metrics: those are props, because the policy
   * and the alarm follow them.
   * @default none
   */
  readonly environment?: { readonly [name: string]: string };
}

/** Options of {@link DatabricksTokenBroker.addFunction}. */
export interface AddFunctionOptions {
  /**
   * The function is a container image that already carries the extension, copied from the
   * layer (README, "Container-image functions"), so no layer is attached: only the variables,
   * the policy and the alarm. Only for container-image functions.
   * @default false
   */
  readonly extensionInImage?: boolean;
}

/** Options of {@link DatabricksTokenBroker.metricRefreshFailure}. */
export interface BrokerMetricOptions extends cloudwatch.MetricOptions {
  /**
   * The target: `default` for the one `DATABRICKS_HOST` names, else a name in
   * `DATABRICKS_TOKEN_BROKER_TARGETS`.
   * @default "default"
   */
  readonly target?: string;
}

/** The three layers the build writes (layer/build.mjs ARTIFACTS). */
type Flavour = "node" | "with-node-x86_64" | "with-node-arm64";

const ZIPS: Record<Flavour, string> = {
  node: "layer.zip",
  "with-node-x86_64": "layer-with-node-x86_64.zip",
  "with-node-arm64": "layer-with-node-arm64.zip",
};

/**
 * Node.js runtimes the plain layer runs on: the bundle uses the function's own Node.js, and
 * needs 20 or later (package.json engines). nodejs18.x is refused.
 */
const NODE_RUNTIMES = [lambda.Runtime.NODEJS_24_X, lambda.Runtime.NODEJS_22_X, lambda.Runtime.NODEJS_20_X];

/**
 * Runtimes on Amazon Linux 2023, where the with-Node.js flavour's Node.js 24 runs. Those on
 * Amazon Linux 2 (provided.al2, python3.9 to 3.11, java8.al2, java11, java17) have a glibc
 * too old for it ("Lambda runtimes" in the AWS Lambda Developer Guide lists each one's OS).
 * template.yaml's CompatibleRuntimes, plus python3.14 and java25, also on AL2023.
 */
const WITH_NODE_RUNTIMES = [
  lambda.Runtime.PYTHON_3_14,
  lambda.Runtime.PYTHON_3_13,
  lambda.Runtime.PYTHON_3_12,
  lambda.Runtime.JAVA_25,
  lambda.Runtime.JAVA_21,
  lambda.Runtime.PROVIDED_AL2023,
];

const ENV_PREFIX = "DATABRICKS_TOKEN_BROKER_";
/** Where the Databricks SDKs and CLI find the broker (README, "Set up on AWS" step 4; SPEC §5). */
const METADATA_SERVICE_URL = "http://localhost:2775/metadata";
/** STS's bounds for GetWebIdentityToken's DurationSeconds, as src/config.ts checks them. */
const STS_DURATION_RANGE = [60, 3600] as const;
/** template.yaml's AllowedPattern for DatabricksHost. */
const HOST_PATTERN = /^https:\/\/[A-Za-z0-9.-]+(:[0-9]+)?\/?$/;
/** src/metrics.ts's defaults and names (SPEC §8); test/cdk.test.ts holds them equal. */
const METRICS_NAMESPACE_DEFAULT = "DatabricksTokenBroker";
const DEFAULT_TARGET = "default";
const TARGETS_VARIABLE = `${ENV_PREFIX}TARGETS`;
/** A named target's name, as src/config.ts checks it. */
const TARGET_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const REFRESH_FAILURE = "RefreshFailure";
/**
 * CloudWatch's rule for a namespace, and its prefix reserved for AWS, as src/config.ts checks
 * DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE. No space at either end: the broker would trim
 * it, and the alarm would watch a namespace no record has.
 */
const METRICS_NAMESPACE = /^[A-Za-z0-9._\/#:-]([A-Za-z0-9._\/#: -]{0,253}[A-Za-z0-9._\/#:-])?$/;
const RESERVED_NAMESPACE_PREFIX = "AWS/";
/** template.yaml's alarm: any failure in 5 minutes; no data (no refresh, no invoke) is not one. */
const ALARM_PERIOD = Duration.minutes(5);

/** Publishes the broker's layers and equips Lambda functions to use it. */
export class DatabricksTokenBroker extends Construct {
  /** The variables `addFunction` sets on each function. */
  public readonly environment: { readonly [name: string]: string };
  /** The statement `addFunction` adds to each function's role. */
  public readonly policyStatement: iam.PolicyStatement;
  private readonly props: DatabricksTokenBrokerProps;
  private readonly layerZipDir: string;
  private readonly layers = new Map<Flavour, lambda.LayerVersion>();
  private readonly added = new Set<lambda.Function>();
  /** The targets each function's broker serves: `default`, then the named ones. */
  private readonly targets: readonly string[];

  constructor(scope: Construct, id: string, props: DatabricksTokenBrokerProps) {
    super(scope, id);
    const audience = props.audience ?? "databricks";
    const stsDurationSeconds = props.stsDurationSeconds ?? 300;
    validate(props, audience, stsDurationSeconds);
    this.props = props;
    this.targets = [DEFAULT_TARGET, ...namedTargets(props.environment?.[TARGETS_VARIABLE])];
    // The compiled construct is dist/cdk/index.js; the zips are beside dist/cdk.
    this.layerZipDir = props.layerZipDir ?? join(dirname(fileURLToPath(import.meta.url)), "..");
    this.environment = Object.freeze({
      ...props.environment,
      DATABRICKS_TOKEN_BROKER_ENABLED: "true",
      DATABRICKS_HOST: props.host,
      ...(props.clientId === undefined ? {} : { DATABRICKS_CLIENT_ID: props.clientId }),
      ...(props.accountId === undefined ? {} : { DATABRICKS_ACCOUNT_ID: props.accountId }),
      DATABRICKS_TOKEN_BROKER_AUDIENCE: audience,
      DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: String(stsDurationSeconds),
      ...(props.metrics ? { DATABRICKS_TOKEN_BROKER_METRICS: "emf" } : {}),
      ...(props.metricsNamespace === undefined ? {} : { DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: props.metricsNamespace }),
      DATABRICKS_METADATA_SERVICE_URL: METADATA_SERVICE_URL,
      DATABRICKS_AUTH_TYPE: "metadata-service",
    });
    // The same statement and conditions as template.yaml's (README, "Set up on AWS" step 2).
    this.policyStatement = new iam.PolicyStatement({
      sid: "SignOwnIdentityForDatabricks",
      effect: iam.Effect.ALLOW,
      actions: ["sts:GetWebIdentityToken"],
      resources: ["*"],
      conditions: {
        "ForAllValues:StringEquals": { "sts:IdentityTokenAudience": audience },
        NumericLessThanEquals: { "sts:DurationSeconds": stsDurationSeconds },
      },
    });
  }

  /**
   * Attaches the layer for `fn`'s runtime and architecture, sets the environment, adds the
   * policy to its role and, with `refreshFailureAlarm`, creates its alarms (children of `fn`,
   * ids `DatabricksTokenBrokerRefreshFailure` and `DatabricksTokenBrokerRefreshFailure-<target>`).
   * Throws at synth for a runtime the layer cannot serve. A function added twice is equipped once.
   */
  public addFunction(fn: lambda.Function, options: AddFunctionOptions = {}): void {
    if (this.added.has(fn)) return;
    const image = fn.runtime.name === lambda.Runtime.FROM_IMAGE.name;
    if (image && !options.extensionInImage) {
      throw new Error(
        `DatabricksTokenBroker: function ${fn.node.path} is a container image, which cannot take layers; ` +
          `copy the layer into the image (README, "Container-image functions"; examples/containers), then add it with { extensionInImage: true }`,
      );
    }
    if (!image && options.extensionInImage) {
      throw new Error(`DatabricksTokenBroker: extensionInImage is for container-image functions; function ${fn.node.path} uses runtime ${fn.runtime.name}, which takes the layer`);
    }
    if (!image) fn.addLayers(this.layerFor(flavourOf(fn)));
    for (const [name, value] of Object.entries(this.environment)) fn.addEnvironment(name, value);
    fn.addToRolePolicy(this.policyStatement);
    for (const target of this.props.refreshFailureAlarm ? this.targets : []) {
      const named = target !== DEFAULT_TARGET;
      const alarm = this.metricRefreshFailure(fn, { target }).createAlarm(fn, `DatabricksTokenBrokerRefreshFailure${named ? `-${target}` : ""}`, {
        alarmDescription: `databricks-token-broker could not refresh the Databricks token of ${fn.functionName}${named ? ` for target ${target}` : ""}; see its log lines 'token refresh failed' and 'diagnosis'`,
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      alarm.addAlarmAction(...(this.props.alarmActions ?? []));
    }
    this.added.add(fn);
  }

  /**
   * The refreshes of `fn`'s token that failed: the broker's `RefreshFailure` metric, summed
   * over 5 minutes. Records exist only with `metrics` on.
   */
  public metricRefreshFailure(fn: lambda.IFunction, options: BrokerMetricOptions = {}): cloudwatch.Metric {
    const { target = DEFAULT_TARGET, ...metricOptions } = options;
    return new cloudwatch.Metric({
      namespace: this.props.metricsNamespace ?? METRICS_NAMESPACE_DEFAULT,
      metricName: REFRESH_FAILURE,
      dimensionsMap: { FunctionName: fn.functionName, Target: target },
      statistic: cloudwatch.Stats.SUM,
      period: ALARM_PERIOD,
      ...metricOptions,
    });
  }

  /** One LayerVersion per flavour, however many functions share it. */
  private layerFor(flavour: Flavour): lambda.LayerVersion {
    const existing = this.layers.get(flavour);
    if (existing) return existing;
    const zip = join(this.layerZipDir, ZIPS[flavour]);
    if (!existsSync(zip)) throw new Error(`DatabricksTokenBroker: ${zip} does not exist; build the layers first (npm run build) or set layerZipDir`);
    const node = flavour === "node";
    const layer = new lambda.LayerVersion(this, node ? "Layer" : flavour === "with-node-x86_64" ? "LayerWithNodeX86" : "LayerWithNodeArm64", {
      code: lambda.Code.fromAsset(zip),
      description: node
        ? "Databricks OAuth token broker extension (uses the runtime's Node.js)"
        : `Databricks OAuth token broker extension with Node.js (${flavour === "with-node-x86_64" ? "x86_64" : "arm64"})`,
      compatibleRuntimes: node ? NODE_RUNTIMES : WITH_NODE_RUNTIMES,
      compatibleArchitectures: node
        ? [lambda.Architecture.X86_64, lambda.Architecture.ARM_64]
        : [flavour === "with-node-x86_64" ? lambda.Architecture.X86_64 : lambda.Architecture.ARM_64],
      license: node ? "Apache-2.0" : "Apache-2.0 AND MIT",
      // As template.yaml: a version a function still uses stays when the stack changes.
      removalPolicy: RemovalPolicy.RETAIN,
    });
    this.layers.set(flavour, layer);
    return layer;
  }
}

/** The layer flavour a function needs, or an error naming its runtime and what to use instead. */
function flavourOf(fn: lambda.Function): Flavour {
  const runtime = fn.runtime.name;
  if (NODE_RUNTIMES.some((r) => r.name === runtime)) return "node";
  if (WITH_NODE_RUNTIMES.some((r) => r.name === runtime)) {
    const arch = fn.architecture.name;
    if (arch === lambda.Architecture.X86_64.name) return "with-node-x86_64";
    if (arch === lambda.Architecture.ARM_64.name) return "with-node-arm64";
    throw new Error(`DatabricksTokenBroker: function ${fn.node.path} has architecture ${arch}; the layer serves x86_64 and arm64`);
  }
  const supported = [...NODE_RUNTIMES, ...WITH_NODE_RUNTIMES].map((r) => r.name).join(", ");
  throw new Error(
    `DatabricksTokenBroker: function ${fn.node.path} uses runtime ${runtime}, which the layer cannot serve ` +
      `(Amazon Linux 2 runtimes such as provided.al2, and Node.js before 20, cannot run it); ` +
      `use one of ${supported}`,
  );
}

/**
 * The names in a `DATABRICKS_TOKEN_BROKER_TARGETS` value, refused at synth as the broker would
 * refuse them at init. The fields of each target are the broker's to check (and `doctor`'s).
 */
function namedTargets(raw: string | undefined): string[] {
  if (raw === undefined || Token.isUnresolved(raw) || raw.trim() === "") return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    throw new Error(`DatabricksTokenBroker: environment.${TARGETS_VARIABLE} must be JSON like {"name": {"host": "https://..."}}: ${(e as Error).message}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new Error(`DatabricksTokenBroker: environment.${TARGETS_VARIABLE} must be a JSON object of named targets, like {"name": {"host": "https://..."}}`);
  }
  const names = Object.keys(parsed);
  for (const name of names) {
    if (!TARGET_NAME.test(name) || name === DEFAULT_TARGET) {
      throw new Error(`DatabricksTokenBroker: environment.${TARGETS_VARIABLE} names a target ${JSON.stringify(name)}; names are 1-64 letters, digits, '-' or '_', and not "${DEFAULT_TARGET}"`);
    }
  }
  return names;
}

/** Eager checks of the props, each naming the prop. */
function validate(props: DatabricksTokenBrokerProps, audience: string, stsDurationSeconds: number): void {
  if (!Token.isUnresolved(props.host) && !HOST_PATTERN.test(props.host)) {
    throw new Error(`DatabricksTokenBroker: host must be an https:// URL with no path, got ${JSON.stringify(props.host)}`);
  }
  if (!Token.isUnresolved(audience) && (audience === "" || /\s/.test(audience))) {
    throw new Error(`DatabricksTokenBroker: audience must be one audience string without spaces, got ${JSON.stringify(audience)}`);
  }
  const [min, max] = STS_DURATION_RANGE;
  if (!Token.isUnresolved(stsDurationSeconds) && (!Number.isInteger(stsDurationSeconds) || stsDurationSeconds < min || stsDurationSeconds > max)) {
    throw new Error(`DatabricksTokenBroker: stsDurationSeconds must be a whole number from ${min} to ${max}, got ${stsDurationSeconds}`);
  }
  const managed = ["ENABLED", "AUDIENCE", "STS_DURATION_SECONDS", "METRICS", "METRICS_NAMESPACE"];
  for (const name of Object.keys(props.environment ?? {})) {
    if (!name.startsWith(ENV_PREFIX) || managed.includes(name.slice(ENV_PREFIX.length))) {
      throw new Error(
        `DatabricksTokenBroker: environment may hold only ${ENV_PREFIX}* options other than ${managed.join(", ")} (set by the construct from its props), got ${name}`,
      );
    }
  }
  const namespace = props.metricsNamespace;
  if (namespace !== undefined && !Token.isUnresolved(namespace)) {
    if (!METRICS_NAMESPACE.test(namespace)) {
      throw new Error(
        `DatabricksTokenBroker: metricsNamespace must be a CloudWatch namespace: 1 to 255 letters, digits, spaces and . - _ / # : characters, no space at either end, got ${JSON.stringify(namespace)}`,
      );
    }
    if (namespace.startsWith(RESERVED_NAMESPACE_PREFIX)) {
      throw new Error(`DatabricksTokenBroker: metricsNamespace must not start with ${RESERVED_NAMESPACE_PREFIX}, which CloudWatch reserves for AWS services, got ${JSON.stringify(namespace)}`);
    }
  }
  if (props.refreshFailureAlarm && !props.metrics) {
    throw new Error("DatabricksTokenBroker: refreshFailureAlarm needs metrics: true, as the alarm watches the broker's metrics");
  }
  if (props.alarmActions?.length && !props.refreshFailureAlarm) {
    throw new Error("DatabricksTokenBroker: alarmActions are for the refresh-failure alarms; set refreshFailureAlarm: true as well");
  }
}
