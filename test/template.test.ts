/**
 * template.yaml against the official AWS SAM schema, the build's artifacts, and the SPEC's
 * names. CloudFormation's short tags (`!Ref`, `!If`, ...) are read into their long form
 * (`{"Ref": ...}`, `{"Fn::If": [...]}`), as CloudFormation itself does.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import AjvDraft04 from "ajv-draft-04";
import { describe, expect, it } from "vitest";
import { parse, type ScalarTag, type CollectionTag, type YAMLSeq } from "yaml";
import { ARTIFACTS } from "../layer/build.mjs";
import { DEFAULTS } from "../src/config.js";
import { DIMENSIONS, METRICS } from "../src/metrics.js";
import { ROOT } from "./stack.js";

const SHARED = join(ROOT, "..", "shared");

/** Every intrinsic function's short form: `!X` → `{"Fn::X": value}` (`!Ref` and `!Condition` keep their names). */
function cloudFormationTags(): (ScalarTag | CollectionTag)[] {
  const names = ["Base64", "Cidr", "FindInMap", "GetAZs", "ImportValue", "Join", "Select", "Split", "Sub", "Transform", "If", "Not", "Equals", "And", "Or", "ToJsonString", "Length"];
  const long = (name: string) => (name === "Ref" || name === "Condition" ? name : `Fn::${name}`);
  const tags: (ScalarTag | CollectionTag)[] = [];
  for (const name of [...names, "Ref", "Condition", "GetAtt"]) {
    const key = long(name);
    tags.push({
      tag: `!${name}`,
      resolve: (value: string) => ({ [key]: name === "GetAtt" ? value.split(/\.(.*)/s).slice(0, 2) : value }),
    } as ScalarTag);
    tags.push({
      tag: `!${name}`,
      collection: "seq",
      resolve: (seq: YAMLSeq) => ({ [key]: seq.toJSON() }),
    } as unknown as CollectionTag);
  }
  return tags;
}

type Json = Record<string, unknown>;
const template = parse(readFileSync(join(ROOT, "template.yaml"), "utf8"), { customTags: cloudFormationTags() }) as Json;
const resources = template.Resources as Record<string, { Type: string; Properties: Json }>;
const ofType = (type: string) => Object.entries(resources).filter(([, r]) => r.Type === type);

/** Variable names of SPEC §2's table: every name in a row's first cell (one row names two). */
function specVariables(): Set<string> {
  const spec = readFileSync(join(SHARED, "SPEC.md"), "utf8");
  const section = spec.slice(spec.indexOf("## 2."), spec.indexOf("## 3."));
  const firstCells = [...section.matchAll(/^\| ([^|]+) \|/gm)].map((m) => m[1]!);
  return new Set(firstCells.flatMap((cell) => [...cell.matchAll(/`([A-Z0-9_]+)`/g)].map((m) => m[1]!)));
}

type Variables = Record<string, unknown>;
const globalVariables = (template.Globals as { Function: { Environment: { Variables: Variables } } }).Function.Environment.Variables;
/** Each function's environment as Lambda gets it: the Globals, overridden by the function's own. */
const functionEnvironments = () =>
  ofType("AWS::Serverless::Function").map(([name, r]) => [name, { ...globalVariables, ...((r.Properties.Environment as { Variables: Variables } | undefined)?.Variables ?? {}) }] as const);

describe("template.yaml", () => {
  it("is valid against the AWS SAM schema", () => {
    const schema = JSON.parse(readFileSync(join(SHARED, "schemas", "sam.schema.json"), "utf8")) as Json;
    // A CommonJS default export: NodeNext sees the module object, the runtime the class.
    const Ajv = ((AjvDraft04 as unknown as { default?: typeof AjvDraft04 }).default ?? AjvDraft04) as unknown as new (o: object) => { compile(s: object): ((d: unknown) => boolean) & { errors?: unknown[] | null } };
    const ajv = new Ajv({ allErrors: true, strict: false });
    const validate = ajv.compile(schema);
    const ok = validate(template);
    expect(validate.errors ?? [], JSON.stringify(validate.errors?.slice(0, 5), null, 1)).toEqual([]);
    expect(ok).toBe(true);
  });

  it("reads the short tags into their long form", () => {
    const globals = (template.Globals as { Function: { Environment: { Variables: Json } } }).Function.Environment.Variables;
    expect(globals.DATABRICKS_HOST).toEqual({ Ref: "DatabricksHost" });
    expect(globals.DATABRICKS_CLIENT_ID).toEqual({ "Fn::If": ["HasClientId", { Ref: "DatabricksClientId" }, { Ref: "AWS::NoValue" }] });
  });

  it("ships the build's artifacts: both flavours, for x86_64 and arm64", () => {
    const layers = ofType("AWS::Serverless::LayerVersion").map(([, r]) => r.Properties);
    expect(layers.map((l) => l.ContentUri).sort()).toEqual(ARTIFACTS.map((a: string) => `dist/${a}`).sort());
    const archs = (uri: string) => layers.find((l) => l.ContentUri === uri)?.CompatibleArchitectures;
    expect(archs("dist/layer.zip")).toEqual(["x86_64", "arm64"]);
    expect(archs("dist/layer-with-node-x86_64.zip")).toEqual(["x86_64"]);
    expect(archs("dist/layer-with-node-arm64.zip")).toEqual(["arm64"]);
    const plain = layers.find((l) => l.ContentUri === "dist/layer.zip");
    expect((plain?.CompatibleRuntimes as string[]).every((r) => r.startsWith("nodejs"))).toBe(true);
  });

  it("offers the plain layer to nodejs24.x and nodejs22.x first, and still to nodejs20.x (issue 14, item 7)", () => {
    const plain = ofType("AWS::Serverless::LayerVersion").find(([, r]) => r.Properties.ContentUri === "dist/layer.zip")?.[1].Properties;
    expect(plain?.CompatibleRuntimes).toEqual(["nodejs24.x", "nodejs22.x", "nodejs20.x"]);
    // The example runs on a runtime Lambda has not deprecated.
    const node = ofType("AWS::Serverless::Function").map(([, r]) => String(r.Properties.Runtime)).filter((r) => r.startsWith("nodejs"));
    for (const runtime of node) expect(["nodejs22.x", "nodejs24.x"]).toContain(runtime);
  });

  it("outputs every layer's ARN", () => {
    const outputs = Object.values(template.Outputs as Record<string, { Value: unknown }>).map((o) => o.Value);
    for (const [name] of ofType("AWS::Serverless::LayerVersion")) expect(outputs).toContainEqual({ Ref: name });
  });

  it("has Node.js and Python example functions whose code exists", () => {
    const functions = ofType("AWS::Serverless::Function").map(([, r]) => r.Properties);
    const runtimes = functions.map((f) => String(f.Runtime));
    expect(runtimes.some((r) => r.startsWith("nodejs"))).toBe(true);
    expect(runtimes.some((r) => r.startsWith("python"))).toBe(true);
    for (const f of functions) {
      const [file, fn] = String(f.Handler).split(".");
      const ext = String(f.Runtime).startsWith("python") ? ".py" : ".mjs";
      const source = readFileSync(join(ROOT, String(f.CodeUri), `${file}${ext}`), "utf8");
      expect(source).toMatch(new RegExp(`(export async function|def) ${fn}\\b`));
      expect(f.Layers).toBeDefined();
    }
    expect(existsSync(join(ROOT, "examples", "python", "requirements.txt"))).toBe(true);
  });

  it("grants sts:GetWebIdentityToken only for the audience databricks and at most 300 s", () => {
    for (const [, f] of ofType("AWS::Serverless::Function")) {
      const statements = (f.Properties.Policies as { Statement: Json[] }[]).flatMap((p) => p.Statement);
      const grant = statements.find((s) => s.Action === "sts:GetWebIdentityToken");
      expect(grant?.Condition).toEqual({
        "ForAllValues:StringEquals": { "sts:IdentityTokenAudience": "databricks" },
        NumericLessThanEquals: { "sts:DurationSeconds": 300 },
      });
    }
  });

  it("uses the SPEC's variable names, the default port, and a duration the policy allows", () => {
    const known = specVariables();
    expect(known.has("DATABRICKS_TOKEN_BROKER_ENABLED")).toBe(true);
    // DATABRICKS_METADATA_SERVICE_URL and DATABRICKS_AUTH_TYPE are in the table too, though only the SDKs act on them.
    expect(known.has("DATABRICKS_AUTH_TYPE")).toBe(true);
    const envs = [globalVariables, ...functionEnvironments().map(([, vars]) => vars)];
    for (const vars of envs) {
      for (const name of Object.keys(vars)) expect(known, name).toContain(name);
    }
    const all = Object.assign({}, ...envs) as Json;
    expect(all.DATABRICKS_METADATA_SERVICE_URL).toBe("http://localhost:2775/metadata");
    expect(all.DATABRICKS_TOKEN_BROKER_PORT ?? "2775").toBe("2775");
    expect(Number(all.DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS)).toBeLessThanOrEqual(300);
  });

  it("every function that points the SDKs at the broker also sets DATABRICKS_AUTH_TYPE=metadata-service and DATABRICKS_HOST", () => {
    // Without the auth type, databricks-sdk (Python, Go) and the CLI refuse to start beside
    // DATABRICKS_CLIENT_ID: "more than one authorization method configured" (SPEC §5).
    const pointed = functionEnvironments().filter(([, vars]) => vars.DATABRICKS_METADATA_SERVICE_URL !== undefined);
    expect(pointed.length).toBeGreaterThan(0);
    for (const [name, vars] of pointed) {
      expect(vars.DATABRICKS_AUTH_TYPE, name).toBe("metadata-service");
      expect(vars.DATABRICKS_HOST, name).toEqual({ Ref: "DatabricksHost" });
    }
  });

  it("so does every README snippet and example that sets DATABRICKS_METADATA_SERVICE_URL", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const snippets = [...readme.matchAll(/^```\w*\n([\s\S]*?)^```/gm)].map((m) => m[1]!);
    const examples = ["examples/python/app.py", "examples/node/index.mjs"].map((f) => readFileSync(join(ROOT, f), "utf8"));
    const pointed = [...snippets, ...examples].filter((text) => text.includes("DATABRICKS_METADATA_SERVICE_URL="));
    expect(pointed.length).toBeGreaterThanOrEqual(4);
    for (const text of pointed) {
      expect(text).toContain("DATABRICKS_AUTH_TYPE=metadata-service");
      expect(text).toContain("DATABRICKS_HOST");
    }
  });

  it("with BrokerMetrics=emf, writes metrics and alarms on each example function's refresh failures (issue 16, section 2)", () => {
    const parameters = template.Parameters as Record<string, Json>;
    expect(parameters.BrokerMetrics).toMatchObject({ Default: "off", AllowedValues: ["off", "emf"] });
    expect(globalVariables.DATABRICKS_TOKEN_BROKER_METRICS).toEqual({ Ref: "BrokerMetrics" });
    expect((template.Conditions as Json).MetricsOn).toEqual({ "Fn::Equals": [{ Ref: "BrokerMetrics" }, "emf"] });
    const alarms = ofType("AWS::CloudWatch::Alarm");
    const functions = ofType("AWS::Serverless::Function").map(([name]) => name);
    // One per function, each on that function's own metric: the alarm's dimensions are the records' exactly.
    expect(alarms.map(([, a]) => (a.Properties.Dimensions as { Value: unknown }[])[0]!.Value).sort()).toEqual(functions.map((f) => ({ Ref: f })).sort());
    for (const [name, alarm] of alarms) {
      expect((alarm as unknown as { Condition: string }).Condition, name).toBe("MetricsOn");
      const p = alarm.Properties;
      expect(p, name).toMatchObject({
        Namespace: DEFAULTS.metricsNamespace,
        MetricName: "RefreshFailure",
        Statistic: "Sum",
        Period: 300,
        EvaluationPeriods: 1,
        Threshold: 0,
        ComparisonOperator: "GreaterThanThreshold",
        TreatMissingData: "notBreaching",
        AlarmActions: { "Fn::If": ["HasAlarmTopic", [{ Ref: "AlarmTopicArn" }], { Ref: "AWS::NoValue" }] },
      });
      expect(METRICS).toHaveProperty(String(p.MetricName));
      expect((p.Dimensions as { Name: string }[]).map((d) => d.Name)).toEqual([...DIMENSIONS]);
      expect((p.Dimensions as { Name: string; Value: unknown }[])[1]).toEqual({ Name: "Target", Value: "default" });
    }
  });
});
