/**
 * examples/cdk synthesized by the real `cdk` CLI (issue 16 §1), with the construct installed
 * as a user installs it: `npm pack` of a fresh build, unpacked into the app's node_modules.
 * aws-cdk-lib, constructs and tsx are the repository's own, linked in, so the app and the
 * construct share one aws-cdk-lib as npm would give them. No Docker and no AWS account: the
 * stack is environment-agnostic, its assets are files, and the Python function is bundled by
 * local pip (the peers' virtual environment first on PATH), from the wheels the peer installer
 * downloaded, with no index.
 *
 * The CLI is kept off the network: no notices (`--no-notices`), no telemetry and no version
 * check (their switches below), no instance metadata and no credentials, so it never asks AWS
 * for a default account; and `npx`, which runs the app, neither installs nor checks for a newer
 * npm.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { cp, mkdir, mkdtemp, readdir, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ARTIFACTS, buildAll, buildCdk, ROOT } from "../layer/build.mjs";
import { EXAMPLE_WHEELS, PYTHON } from "./peers/paths.mjs";

const run = promisify(execFile);
const HOST = "https://dbc-1234abcd-5678.cloud.databricks.com";
const CLIENT_ID = "6f1c0a5e-0000-4000-8000-000000000000";
const STACK = "DatabricksTokenBrokerExample";

let tmp: string;
let app: string;
let pkg: string;
let packed: { files: { path: string }[] };

/** What `npm pack` puts in the tarball: the construct, the zips and the CLI of `bin`. */
const PACKED = ["package.json", "README.md", "LICENSE", "dist/cdk/index.js", "dist/cdk/index.d.ts", ...ARTIFACTS.map((a) => `dist/${a}`), "dist/layer/databricks-token-broker/cli.mjs"];

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), "dtb-cdk-example-"));
  // The package as `npm pack` sees it after `npm ci && npm run build`.
  const stage = join(tmp, "package");
  await mkdir(stage);
  await cp(join(ROOT, "package.json"), join(stage, "package.json"));
  for (const file of ["README.md", "LICENSE"]) await cp(join(ROOT, file), join(stage, file));
  await buildAll({ dist: join(stage, "dist") });
  await buildCdk(join(stage, "dist", "cdk"));
  const { stdout } = await run("npm", ["pack", "--json", "--pack-destination", tmp], { cwd: stage, maxBuffer: 16 << 20 });
  packed = (JSON.parse(stdout) as { files: { path: string }[]; filename: string }[])[0]!;

  // The app beside the example functions it deploys, as in the repository.
  const examples = join(tmp, "examples");
  for (const dir of ["cdk", "node", "python"]) await cp(join(ROOT, "examples", dir), join(examples, dir), { recursive: true, filter: (p) => !p.includes("__pycache__") });
  app = join(examples, "cdk");
  const modules = join(app, "node_modules");
  pkg = join(modules, "databricks-token-broker");
  await mkdir(pkg, { recursive: true });
  await run("tar", ["-xzf", join(tmp, "databricks-token-broker-0.1.0.tgz"), "-C", pkg, "--strip-components=1"]);
  for (const name of ["aws-cdk-lib", "constructs", "tsx"]) await symlink(join(ROOT, "node_modules", name), join(modules, name));
  await mkdir(join(modules, ".bin"));
  await symlink("../tsx/dist/cli.mjs", join(modules, ".bin", "tsx"));
}, 300_000);

afterAll(() => (tmp ? rm(tmp, { recursive: true, force: true }) : undefined));

/** `cdk synth` in the app, off the network; resolves with the exit code and output. */
async function synth(...args: string[]) {
  const env: NodeJS.ProcessEnv = {
    PATH: `${dirname(PYTHON)}:${process.env.PATH ?? ""}`,
    PIP_NO_INDEX: "1",
    PIP_FIND_LINKS: EXAMPLE_WHEELS,
    HOME: tmp,
    CDK_HOME: join(tmp, "cdk-home"),
    CDK_DISABLE_CLI_TELEMETRY: "true",
    CDK_DISABLE_VERSION_CHECK: "true",
    AWS_EC2_METADATA_DISABLED: "true",
    AWS_CONFIG_FILE: join(tmp, "no-aws-config"),
    AWS_SHARED_CREDENTIALS_FILE: join(tmp, "no-aws-credentials"),
    npm_config_cache: join(tmp, "npm-cache"),
    npm_config_offline: "true",
    npm_config_update_notifier: "false",
  };
  const cdk = join(ROOT, "node_modules", ".bin", "cdk");
  try {
    const { stdout, stderr } = await run(cdk, ["synth", "--no-notices", "--output", join(tmp, "cdk.out"), ...args], { cwd: app, env, maxBuffer: 64 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: err.code ?? -1, stdout: err.stdout ?? "", stderr: err.stderr ?? "" };
  }
}

type Resource = { Type: string; Properties: Record<string, unknown> };

describe("examples/cdk under the real cdk CLI", () => {
  it("packs what the ./cdk export and the bin need, and nothing else of dist/", () => {
    expect(packed.files.map((f) => f.path).sort()).toEqual([...PACKED].sort());
  });

  it("says which context to give when the workspace URL is missing", async () => {
    const { code, stderr } = await synth();
    expect(code).not.toBe(0);
    expect(stderr).toContain("Give the workspace URL: cdk synth -c databricksHost=https://<workspace>");
  }, 120_000);

  it("synthesizes both functions with their layer, variables, policy and alarm, stages the built zips as the layers and bundles the Python function with databricks-sdk", async () => {
    const { code, stderr } = await synth("-c", `databricksHost=${HOST}`, "-c", `databricksClientId=${CLIENT_ID}`);
    expect(code, stderr).toBe(0);
    const out = join(tmp, "cdk.out");
    const template = JSON.parse(await readFile(join(out, `${STACK}.template.json`), "utf8")) as { Resources: Record<string, Resource>; Outputs: Record<string, unknown> };
    const of = (type: string) => Object.entries(template.Resources).filter(([, r]) => r.Type === type);

    const layers = of("AWS::Lambda::LayerVersion");
    expect(layers.map(([, l]) => l.Properties.CompatibleArchitectures)).toEqual([["x86_64", "arm64"], ["x86_64"]]);
    const [plainId, withNodeId] = layers.map(([id]) => id);

    // Each layer's asset is the zip the build wrote, byte for byte.
    const assets = JSON.parse(await readFile(join(out, `${STACK}.assets.json`), "utf8")) as { files: Record<string, { source: { path: string } }> };
    const sha = async (file: string) => createHash("sha256").update(await readFile(file)).digest("hex");
    for (const [[, layer], zip] of [[layers[0]!, "layer.zip"], [layers[1]!, "layer-with-node-x86_64.zip"]] as const) {
      const key = String((layer.Properties.Content as { S3Key: string }).S3Key).replace(/\.zip$/, "");
      expect(await sha(join(out, assets.files[key]!.source.path)), zip).toBe(await sha(join(pkg, "dist", zip)));
    }

    const functions = Object.fromEntries(of("AWS::Lambda::Function").map(([id, f]) => [id.replace(/[0-9A-F]{8}$/, ""), f.Properties]));
    // The Python function carries its handler and databricks-sdk, with compiled parts for
    // Lambda's python3.13 on x86_64, not for this machine's Python.
    const pythonKey = String((functions.PythonExample!.Code as { S3Key: string }).S3Key).replace(/\.zip$/, "");
    const bundle = join(out, assets.files[pythonKey]!.source.path);
    const files = (await readdir(bundle, { recursive: true })).map(String);
    expect(files).toEqual(expect.arrayContaining(["app.py", join("databricks", "sdk", "__init__.py"), join("requests", "__init__.py")]));
    expect(files.filter((f) => f.includes("databricks_sdk-") && f.endsWith("METADATA"))).toHaveLength(1);
    const compiled = files.filter((f) => f.endsWith(".so"));
    expect(compiled.length).toBeGreaterThan(0);
    for (const so of compiled) expect(so).toMatch(/\.(cpython-313-x86_64-linux-gnu|abi3)\.so$/);
    expect(functions.NodeExample).toMatchObject({ Runtime: "nodejs22.x", Architectures: ["arm64"], Layers: [{ Ref: plainId }] });
    expect(functions.PythonExample).toMatchObject({ Runtime: "python3.13", Architectures: ["x86_64"], Layers: [{ Ref: withNodeId }] });
    for (const f of Object.values(functions)) {
      expect((f.Environment as { Variables: unknown }).Variables).toEqual({
        DATABRICKS_TOKEN_BROKER_ENABLED: "true",
        DATABRICKS_HOST: HOST,
        DATABRICKS_CLIENT_ID: CLIENT_ID,
        DATABRICKS_TOKEN_BROKER_AUDIENCE: "databricks",
        DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "300",
        DATABRICKS_TOKEN_BROKER_METRICS: "emf",
        DATABRICKS_METADATA_SERVICE_URL: "http://localhost:2775/metadata",
        DATABRICKS_AUTH_TYPE: "metadata-service",
      });
    }

    const policies = of("AWS::IAM::Policy").map(([, p]) => (p.Properties.PolicyDocument as { Statement: unknown[] }).Statement);
    expect(policies).toHaveLength(2);
    for (const statements of policies) {
      expect(statements).toEqual([
        {
          Sid: "SignOwnIdentityForDatabricks",
          Effect: "Allow",
          Action: "sts:GetWebIdentityToken",
          Resource: "*",
          Condition: { "ForAllValues:StringEquals": { "sts:IdentityTokenAudience": "databricks" }, NumericLessThanEquals: { "sts:DurationSeconds": 300 } },
        },
      ]);
    }

    const topicId = of("AWS::SNS::Topic")[0]?.[0];
    expect(topicId).toBeDefined();
    const alarms = of("AWS::CloudWatch::Alarm").map(([, a]) => a.Properties);
    expect(alarms).toHaveLength(2);
    for (const alarm of alarms) {
      expect(alarm).toMatchObject({ Namespace: "DatabricksTokenBroker", MetricName: "RefreshFailure", Threshold: 0, AlarmActions: [{ Ref: topicId }] });
    }
    expect(Object.keys(template.Outputs).sort()).toEqual(["NodeExampleRoleArn", "PythonExampleRoleArn"]);
  }, 180_000);
});
