/**
 * The CDK construct (issue 16 §1, SPEC §7) synthesized with aws-cdk-lib's assertions.
 *
 * `Code.fromAsset` needs the layer zips to exist at synth but never looks inside a .zip, so
 * the tests point `layerZipDir` at a temporary directory of small placeholder zips (an empty
 * archive each) rather than building the real layers. What goes into the real zips is
 * test/layer.test.ts's and test/flavours.test.ts's business.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { App, Duration, Stack } from "aws-cdk-lib";
import { Match, Template } from "aws-cdk-lib/assertions";
import * as actions from "aws-cdk-lib/aws-cloudwatch-actions";
import * as ecr from "aws-cdk-lib/aws-ecr";
import * as lambda from "aws-cdk-lib/aws-lambda";
import * as sns from "aws-cdk-lib/aws-sns";
import { afterAll, describe, expect, it } from "vitest";
import { parseDocument } from "yaml";
import { DatabricksTokenBroker, type DatabricksTokenBrokerProps } from "../cdk/index.js";
import { ARTIFACTS } from "../layer/build.mjs";
import { DEFAULT_TARGET, DEFAULTS, parseConfig } from "../src/config.js";
import { createMetrics, type EmfRecord } from "../src/metrics.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** An empty zip archive: only the end-of-central-directory record. */
const EMPTY_ZIP = Buffer.from([0x50, 0x4b, 0x05, 0x06, ...new Array<number>(18).fill(0)]);

const zipDir = mkdtempSync(join(tmpdir(), "dtb-cdk-"));
for (const name of ARTIFACTS) writeFileSync(join(zipDir, name), EMPTY_ZIP);
afterAll(() => rmSync(zipDir, { recursive: true, force: true }));

const HOST = "https://dbc-1234.cloud.databricks.com";

function stackWithBroker(props: Partial<DatabricksTokenBrokerProps> = {}) {
  // Asset staging would copy the zips into cdk.out; the logical IDs are all we check. The
  // output directory (where synth writes its validation report) goes with the temp dir.
  const app = new App({ outdir: mkdtempSync(join(zipDir, "cdk.out-")), context: { "aws:cdk:disable-asset-staging": true } });
  const stack = new Stack(app, "Test");
  const broker = new DatabricksTokenBroker(stack, "Broker", { host: HOST, layerZipDir: zipDir, ...props });
  return { stack, broker };
}

/** True when `f` returns true or nothing, false when it returns false or throws. */
function holds(f: () => unknown): boolean {
  try {
    return f() !== false;
  } catch {
    return false;
  }
}

/** The broker's configuration for the default target plus `env`; throws where the broker refuses it. */
function brokerConfig(env: Record<string, string>) {
  const parsed = parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: "true", DATABRICKS_HOST: HOST, AWS_REGION: "eu-west-1", ...env });
  if (!parsed.enabled) throw new Error("the broker is disabled");
  return parsed.config;
}

/** A function of this runtime; its code is a placeholder zip too (inline code exists only for some runtimes). */
function fn(stack: Stack, id: string, runtime: lambda.Runtime, architecture = lambda.Architecture.X86_64) {
  return new lambda.Function(stack, id, { runtime, architecture, handler: "index.handler", code: lambda.Code.fromAsset(join(zipDir, "layer.zip")) });
}

/** The logical ID of the one LayerVersion with this compatible architectures list. */
function layerId(template: Template, runtimes: string[], architectures: string[]): string {
  const found = template.findResources("AWS::Lambda::LayerVersion", {
    Properties: { CompatibleRuntimes: Match.arrayWith(runtimes), CompatibleArchitectures: architectures },
  });
  const ids = Object.keys(found);
  expect(ids).toHaveLength(1);
  return ids[0]!;
}

function layersOf(template: Template, functionId: string): unknown {
  const resource = template.toJSON().Resources[functionId] as { Properties: { Layers?: unknown } };
  return resource.Properties.Layers;
}

const logicalId = (stack: Stack, f: lambda.Function) => stack.getLogicalId(f.node.defaultChild as lambda.CfnFunction);

describe("DatabricksTokenBroker.addFunction picks the layer", () => {
  it("gives a Python x86_64 function the x86_64 with-Node.js layer", () => {
    const { stack, broker } = stackWithBroker();
    const f = fn(stack, "Py", lambda.Runtime.PYTHON_3_13, lambda.Architecture.X86_64);
    broker.addFunction(f);
    const template = Template.fromStack(stack);
    const id = layerId(template, ["python3.13", "provided.al2023"], ["x86_64"]);
    expect(layersOf(template, logicalId(stack, f))).toEqual([{ Ref: id }]);
    template.hasResourceProperties("AWS::Lambda::LayerVersion", { LicenseInfo: "Apache-2.0 AND MIT", CompatibleArchitectures: ["x86_64"] });
  });

  it("gives an arm64 Python function the arm64 with-Node.js layer", () => {
    const { stack, broker } = stackWithBroker();
    const f = fn(stack, "Py", lambda.Runtime.PYTHON_3_12, lambda.Architecture.ARM_64);
    broker.addFunction(f);
    const template = Template.fromStack(stack);
    const id = layerId(template, ["python3.12"], ["arm64"]);
    expect(layersOf(template, logicalId(stack, f))).toEqual([{ Ref: id }]);
  });

  it("gives a Node.js 22 function the plain layer, for both architectures", () => {
    const { stack, broker } = stackWithBroker();
    const f = fn(stack, "Node", lambda.Runtime.NODEJS_22_X, lambda.Architecture.ARM_64);
    broker.addFunction(f);
    const template = Template.fromStack(stack);
    const id = layerId(template, ["nodejs22.x"], ["x86_64", "arm64"]);
    expect(layersOf(template, logicalId(stack, f))).toEqual([{ Ref: id }]);
    template.hasResourceProperties("AWS::Lambda::LayerVersion", { LicenseInfo: "Apache-2.0", CompatibleRuntimes: ["nodejs24.x", "nodejs22.x", "nodejs20.x"] });
  });

  it("gives java21 and provided.al2023 the with-Node.js layer", () => {
    const { stack, broker } = stackWithBroker();
    broker.addFunction(fn(stack, "Java", lambda.Runtime.JAVA_21, lambda.Architecture.ARM_64));
    broker.addFunction(fn(stack, "Rust", lambda.Runtime.PROVIDED_AL2023, lambda.Architecture.ARM_64));
    Template.fromStack(stack).resourceCountIs("AWS::Lambda::LayerVersion", 1);
  });

  it("creates one LayerVersion per flavour, however many functions share it", () => {
    const { stack, broker } = stackWithBroker();
    for (const i of [1, 2, 3]) {
      broker.addFunction(fn(stack, `Py${i}`, lambda.Runtime.PYTHON_3_13, lambda.Architecture.X86_64));
      broker.addFunction(fn(stack, `Arm${i}`, lambda.Runtime.PYTHON_3_13, lambda.Architecture.ARM_64));
      broker.addFunction(fn(stack, `Node${i}`, lambda.Runtime.NODEJS_24_X));
    }
    const template = Template.fromStack(stack);
    template.resourceCountIs("AWS::Lambda::LayerVersion", 3);
    template.resourceCountIs("AWS::Lambda::Function", 9);
  });

  it("creates no layer until a function needs one", () => {
    const { stack } = stackWithBroker();
    Template.fromStack(stack).resourceCountIs("AWS::Lambda::LayerVersion", 0);
  });

  it.each([
    [lambda.Runtime.PROVIDED_AL2, "provided.al2"],
    [lambda.Runtime.NODEJS_18_X, "nodejs18.x"],
    [lambda.Runtime.PYTHON_3_11, "python3.11"],
    [lambda.Runtime.JAVA_17, "java17"],
    [lambda.Runtime.DOTNET_8, "dotnet8"],
  ])("refuses %s at addFunction, naming the runtime and what to use", (runtime, name) => {
    const { stack, broker } = stackWithBroker();
    const f = fn(stack, "Old", runtime);
    expect(() => broker.addFunction(f)).toThrow(
      new RegExp(`function Test/Old uses runtime ${name.replace(".", "\\.")}, which the layer cannot serve.*use one of nodejs24\\.x, .*provided\\.al2023`),
    );
    Template.fromStack(stack).resourceCountIs("AWS::Lambda::LayerVersion", 0);
  });

  it("refuses a container-image function unless its image carries the extension, pointing to the recipe", () => {
    const { stack, broker } = stackWithBroker();
    const f = new lambda.DockerImageFunction(stack, "Image", { code: lambda.DockerImageCode.fromEcr(new ecr.Repository(stack, "Repo")) });
    expect(() => broker.addFunction(f)).toThrow(
      /function Test\/Image is a container image, which cannot take layers; copy the layer into the image \(README, "Container-image functions"; examples\/containers\), then add it with \{ extensionInImage: true \}/,
    );
    expect(() => broker.addFunction(fn(stack, "Py", lambda.Runtime.PYTHON_3_13), { extensionInImage: true })).toThrow(
      /extensionInImage is for container-image functions; function Test\/Py uses runtime python3\.13, which takes the layer/,
    );
  });

  it("equips a container-image function that carries the extension with the variables, policy and alarm, and no layer", () => {
    const { stack, broker } = stackWithBroker({ metrics: true, refreshFailureAlarm: true });
    const f = new lambda.DockerImageFunction(stack, "Image", { code: lambda.DockerImageCode.fromEcr(new ecr.Repository(stack, "Repo")) });
    broker.addFunction(f, { extensionInImage: true });
    const template = Template.fromStack(stack);
    template.resourceCountIs("AWS::Lambda::LayerVersion", 0);
    expect(layersOf(template, logicalId(stack, f))).toBeUndefined();
    template.hasResourceProperties("AWS::Lambda::Function", { PackageType: "Image", Environment: { Variables: broker.environment } });
    template.hasResourceProperties("AWS::IAM::Policy", { PolicyDocument: { Statement: [Match.objectLike({ Action: "sts:GetWebIdentityToken" })] } });
    template.resourceCountIs("AWS::CloudWatch::Alarm", 1);
  });

  it("says to build the layers when a zip is missing", () => {
    const empty = mkdtempSync(join(tmpdir(), "dtb-cdk-empty-"));
    try {
      const { stack, broker } = stackWithBroker({ layerZipDir: empty });
      expect(() => broker.addFunction(fn(stack, "Node", lambda.Runtime.NODEJS_22_X))).toThrow(/layer\.zip does not exist; build the layers first \(npm run build\)/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

describe("DatabricksTokenBroker.addFunction sets the environment", () => {
  it("sets the broker's and the SDKs' variables, and props.environment", () => {
    const { stack, broker } = stackWithBroker({
      clientId: "6f1c0a5e-0000-0000-0000-000000000000",
      accountId: "0d26daa6-0000-0000-0000-000000000000",
      environment: { DATABRICKS_TOKEN_BROKER_LOG_LEVEL: "debug" },
    });
    broker.addFunction(fn(stack, "Py", lambda.Runtime.PYTHON_3_13));
    Template.fromStack(stack).hasResourceProperties("AWS::Lambda::Function", {
      Environment: {
        Variables: {
          DATABRICKS_TOKEN_BROKER_ENABLED: "true",
          DATABRICKS_HOST: HOST,
          DATABRICKS_CLIENT_ID: "6f1c0a5e-0000-0000-0000-000000000000",
          DATABRICKS_ACCOUNT_ID: "0d26daa6-0000-0000-0000-000000000000",
          DATABRICKS_TOKEN_BROKER_AUDIENCE: "databricks",
          DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "300",
          DATABRICKS_METADATA_SERVICE_URL: "http://localhost:2775/metadata",
          DATABRICKS_AUTH_TYPE: "metadata-service",
          DATABRICKS_TOKEN_BROKER_LOG_LEVEL: "debug",
        },
      },
    });
  });

  it("leaves out DATABRICKS_CLIENT_ID and DATABRICKS_ACCOUNT_ID when not given, and keeps the function's own variables", () => {
    const { stack, broker } = stackWithBroker();
    const f = new lambda.Function(stack, "Node", {
      runtime: lambda.Runtime.NODEJS_22_X,
      handler: "index.handler",
      code: lambda.Code.fromInline("x"),
      environment: { APP_SETTING: "1" },
    });
    broker.addFunction(f);
    const template = Template.fromStack(stack).toJSON();
    const variables = template.Resources[logicalId(stack, f)].Properties.Environment.Variables as Record<string, string>;
    expect(variables.APP_SETTING).toBe("1");
    expect(Object.keys(variables)).not.toContain("DATABRICKS_CLIENT_ID");
    expect(Object.keys(variables)).not.toContain("DATABRICKS_ACCOUNT_ID");
  });

  it.each([
    [{ host: "http://dbc-1234.cloud.databricks.com" }, /host must be an https:\/\/ URL/],
    [{ stsDurationSeconds: 30 }, /stsDurationSeconds must be a whole number from 60 to 3600, got 30/],
    [{ audience: "two words" }, /audience must be one audience string without spaces/],
    [{ environment: { DATABRICKS_TOKEN_BROKER_AUDIENCE: "x" } }, /environment may hold only .* got DATABRICKS_TOKEN_BROKER_AUDIENCE/],
    [{ environment: { DATABRICKS_HOST: "x" } }, /got DATABRICKS_HOST/],
  ])("refuses props %j", (props, message) => {
    expect(() => stackWithBroker(props)).toThrow(message);
  });
});

describe("DatabricksTokenBroker.addFunction grants sts:GetWebIdentityToken", () => {
  /** template.yaml's statement, read as data (its short tags are outside the part read). */
  const samStatement = (() => {
    const doc = parseDocument(readFileSync(join(ROOT, "template.yaml"), "utf8"));
    const policies = doc.getIn(["Resources", "PythonExampleFunction", "Properties", "Policies"]) as { toJSON(): unknown };
    return (policies.toJSON() as { Statement: Record<string, unknown>[] }[])[0]!.Statement[0]!;
  })();

  it("adds the statement of template.yaml, conditions and all, to the function's role", () => {
    expect(samStatement.Condition).toEqual({
      "ForAllValues:StringEquals": { "sts:IdentityTokenAudience": "databricks" },
      NumericLessThanEquals: { "sts:DurationSeconds": 300 },
    });
    const { stack, broker } = stackWithBroker();
    const f = fn(stack, "Py", lambda.Runtime.PYTHON_3_13);
    broker.addFunction(f);
    const template = Template.fromStack(stack);
    template.hasResourceProperties("AWS::IAM::Policy", {
      PolicyDocument: { Statement: [samStatement] },
      Roles: [{ Ref: stack.getLogicalId(f.role!.node.defaultChild as never) }],
    });
  });

  it("follows the audience and STS duration props in the conditions", () => {
    const { stack, broker } = stackWithBroker({ audience: "my-audience", stsDurationSeconds: 900 });
    broker.addFunction(fn(stack, "Py", lambda.Runtime.PYTHON_3_13));
    Template.fromStack(stack).hasResourceProperties("AWS::IAM::Policy", {
      PolicyDocument: {
        Statement: [
          Match.objectLike({
            Condition: {
              "ForAllValues:StringEquals": { "sts:IdentityTokenAudience": "my-audience" },
              NumericLessThanEquals: { "sts:DurationSeconds": 900 },
            },
          }),
        ],
      },
    });
  });
});

describe("DatabricksTokenBroker's metrics and refresh-failure alarm", () => {
  /** What the broker writes for a failed refresh of the default target (src/metrics.ts), under this namespace. */
  function failureRecord(namespace: string): EmfRecord {
    const lines: string[] = [];
    const metrics = createMetrics({ namespace, functionName: "fn", targets: [DEFAULT_TARGET], write: (l) => lines.push(l) });
    const error = { name: "BrokerError", message: "denied", step: "sts", code: "AccessDenied", retryable: false };
    metrics.onRefresh({ ok: false, target: DEFAULT_TARGET, at: 0, error: error as never, failures: 1, retryInMs: 500, ms: 5 });
    return JSON.parse(lines[0]!) as EmfRecord;
  }

  it("sets DATABRICKS_TOKEN_BROKER_METRICS=emf only with metrics, and the namespace when given", () => {
    const off = stackWithBroker();
    expect(off.broker.environment).not.toHaveProperty("DATABRICKS_TOKEN_BROKER_METRICS");
    const on = stackWithBroker({ metrics: true, metricsNamespace: "Team/Data" });
    expect(on.broker.environment).toMatchObject({ DATABRICKS_TOKEN_BROKER_METRICS: "emf", DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: "Team/Data" });
    // The broker reads what the construct sets as meant.
    const parsed = parseConfig({ ...on.broker.environment, AWS_REGION: "eu-west-1" });
    expect(parsed.enabled && parsed.config).toMatchObject({ metrics: "emf", metricsNamespace: "Team/Data" });
  });

  it("creates, per function, template.yaml's alarm on the metric the broker writes, with no action unless given", () => {
    const { stack, broker } = stackWithBroker({ metrics: true, refreshFailureAlarm: true });
    const py = fn(stack, "Py", lambda.Runtime.PYTHON_3_13);
    const node = fn(stack, "Node", lambda.Runtime.NODEJS_22_X);
    broker.addFunction(py);
    broker.addFunction(node);
    const template = Template.fromStack(stack);
    const alarms = Object.values(template.findResources("AWS::CloudWatch::Alarm")) as { Properties: Record<string, unknown> }[];
    expect(alarms).toHaveLength(2);

    const sam = parseDocument(readFileSync(join(ROOT, "template.yaml"), "utf8")).getIn(["Resources", "PythonExampleRefreshFailureAlarm", "Properties"]) as { toJSON(): Record<string, unknown> };
    const samAlarm = sam.toJSON();
    const record = failureRecord(DEFAULTS.metricsNamespace);
    const definition = record._aws.CloudWatchMetrics[0]!;
    for (const f of [py, node]) {
      const alarm = alarms.find((a) => JSON.stringify(a.Properties.Dimensions).includes(logicalId(stack, f)))!;
      for (const key of ["Namespace", "MetricName", "Statistic", "Period", "EvaluationPeriods", "Threshold", "ComparisonOperator", "TreatMissingData"]) {
        expect(alarm.Properties[key], key).toEqual(samAlarm[key]);
      }
      // The alarm watches exactly what a failed refresh writes: namespace, metric, dimensions.
      expect(alarm.Properties.Namespace).toBe(definition.Namespace);
      expect(definition.Metrics.map((m) => m.Name)).toContain(alarm.Properties.MetricName);
      expect(alarm.Properties.Dimensions).toEqual([
        { Name: definition.Dimensions[0]![0], Value: { Ref: logicalId(stack, f) } },
        { Name: definition.Dimensions[0]![1], Value: (record as unknown as Record<string, string>).Target },
      ]);
      expect(alarm.Properties).not.toHaveProperty("AlarmActions");
    }
  });

  it("gives each alarm the actions, and follows metricsNamespace", () => {
    const { stack, broker } = stackWithBroker({ metrics: true, metricsNamespace: "Team/Data", refreshFailureAlarm: true, alarmActions: [] });
    const topic = new sns.Topic(stack, "Alarms");
    const second = new DatabricksTokenBroker(stack, "Broker2", {
      host: HOST,
      layerZipDir: zipDir,
      metrics: true,
      metricsNamespace: "Team/Data",
      refreshFailureAlarm: true,
      alarmActions: [new actions.SnsAction(topic)],
    });
    broker.addFunction(fn(stack, "A", lambda.Runtime.PYTHON_3_13));
    second.addFunction(fn(stack, "B", lambda.Runtime.PYTHON_3_13));
    const template = Template.fromStack(stack);
    const alarms = Object.values(template.findResources("AWS::CloudWatch::Alarm")) as { Properties: Record<string, unknown> }[];
    expect(alarms.map((a) => a.Properties.Namespace)).toEqual(["Team/Data", "Team/Data"]);
    expect(alarms.map((a) => a.Properties.AlarmActions)).toEqual([undefined, [{ Ref: stack.getLogicalId(topic.node.defaultChild as sns.CfnTopic) }]]);
  });

  it("equips a function added twice once: one layer, one statement, one alarm", () => {
    const { stack, broker } = stackWithBroker({ metrics: true, refreshFailureAlarm: true });
    const f = fn(stack, "Py", lambda.Runtime.PYTHON_3_13);
    broker.addFunction(f);
    broker.addFunction(f);
    const template = Template.fromStack(stack);
    expect(layersOf(template, logicalId(stack, f))).toHaveLength(1);
    template.resourceCountIs("AWS::CloudWatch::Alarm", 1);
    const policy = Object.values(template.findResources("AWS::IAM::Policy"))[0] as { Properties: { PolicyDocument: { Statement: unknown[] } } };
    expect(policy.Properties.PolicyDocument.Statement).toHaveLength(1);
  });

  it("creates an alarm per named target of DATABRICKS_TOKEN_BROKER_TARGETS too, on the records the broker writes for it", () => {
    const targets = { jobs: { host: "https://dbc-jobs.cloud.databricks.com" }, "serving_2": { host: "https://dbc-serving.cloud.databricks.com" } };
    const { stack, broker } = stackWithBroker({ metrics: true, refreshFailureAlarm: true, environment: { DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify(targets) } });
    const f = fn(stack, "Py", lambda.Runtime.PYTHON_3_13);
    broker.addFunction(f);
    const alarms = Template.fromStack(stack).findResources("AWS::CloudWatch::Alarm") as Record<string, { Properties: { Dimensions: { Name: string; Value: unknown }[]; AlarmDescription: unknown } }>;
    const byTarget = Object.fromEntries(Object.values(alarms).map((a) => [a.Properties.Dimensions.find((d) => d.Name === "Target")!.Value, a.Properties]));
    expect(Object.keys(byTarget).sort()).toEqual([DEFAULT_TARGET, "jobs", "serving_2"]);
    expect(JSON.stringify(byTarget.jobs!.AlarmDescription)).toContain(" for target jobs;");
    expect(f.node.tryFindChild("DatabricksTokenBrokerRefreshFailure-serving_2")).toBeDefined();
    // The broker serves exactly these targets, and writes each one's records under its name.
    const parsed = parseConfig({ ...broker.environment, AWS_REGION: "eu-west-1" });
    expect(parsed.enabled && [...parsed.config.targets.keys()].sort()).toEqual(Object.keys(byTarget).sort());
  });

  it.each([
    ["{not json", /TARGETS must be JSON like/],
    ['[{"host":"https://x"}]', /TARGETS must be a JSON object of named targets/],
    ['{"default":{"host":"https://x"}}', /names a target "default"/],
    ['{"two words":{"host":"https://x"}}', /names a target "two words"; names are 1-64 letters/],
  ])("refuses DATABRICKS_TOKEN_BROKER_TARGETS %s at synth", (targets, message) => {
    expect(() => stackWithBroker({ environment: { DATABRICKS_TOKEN_BROKER_TARGETS: targets } })).toThrow(message);
  });

  it("accepts a target name exactly when the broker does", () => {
    const names = ["jobs", "a-b_c", "X1", "x".repeat(64), "x".repeat(65), "default", "two words", "é", "a.b", ""];
    for (const name of names) {
      const environment = { DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({ [name]: { host: "https://dbc-other.cloud.databricks.com" } }) };
      const accepted = holds(() => stackWithBroker({ environment }));
      const served = holds(() => brokerConfig(environment).targets.has(name));
      expect(accepted, JSON.stringify(name)).toBe(served);
    }
  });

  it("gives metricRefreshFailure for a named target, to build other alarms on", () => {
    const { stack, broker } = stackWithBroker({ metrics: true });
    const f = fn(stack, "Py", lambda.Runtime.PYTHON_3_13);
    broker.addFunction(f);
    const metric = broker.metricRefreshFailure(f, { target: "jobs", period: Duration.minutes(10) });
    expect(metric.namespace).toBe(DEFAULTS.metricsNamespace);
    expect(metric.metricName).toBe("RefreshFailure");
    expect(metric.statistic).toBe("Sum");
    expect(metric.period.toSeconds()).toBe(600);
    expect(stack.resolve(metric.dimensions)).toEqual({ FunctionName: { Ref: logicalId(stack, f) }, Target: "jobs" });
    Template.fromStack(stack).resourceCountIs("AWS::CloudWatch::Alarm", 0);
  });

  it.each([
    [{ refreshFailureAlarm: true }, /refreshFailureAlarm needs metrics: true/],
    [{ metrics: true, alarmActions: [{ bind: () => ({ alarmActionArn: "arn:aws:sns:eu-west-1:1:t" }) }] }, /alarmActions are for the refresh-failure alarms; set refreshFailureAlarm: true/],
    [{ metrics: true, metricsNamespace: " padded" }, /metricsNamespace must be a CloudWatch namespace: .* got " padded"/],
    [{ metrics: true, metricsNamespace: "AWS/Lambda" }, /metricsNamespace must not start with AWS\//],
    [{ environment: { DATABRICKS_TOKEN_BROKER_METRICS: "emf" } }, /got DATABRICKS_TOKEN_BROKER_METRICS$/],
  ])("refuses props %j", (props, message) => {
    expect(() => stackWithBroker(props as Partial<DatabricksTokenBrokerProps>)).toThrow(message);
  });

  it("accepts a namespace only when the broker takes it as it is, so the alarm watches the records' namespace", () => {
    const namespaces = ["DatabricksTokenBroker", "Team/Data", "a", "My Broker", "x".repeat(255), "aws/lower", "", " a", "a ", "x".repeat(256), "é", "AWS/X", "tab\there"];
    for (const namespace of namespaces) {
      const accepted = holds(() => stackWithBroker({ metrics: true, metricsNamespace: namespace }));
      const asIs = holds(() => brokerConfig({ DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: namespace }).metricsNamespace === namespace);
      expect(accepted, JSON.stringify(namespace)).toBe(asIs);
    }
  });
});
