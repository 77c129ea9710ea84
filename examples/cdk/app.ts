/**
 * A CDK app that deploys the repository's two example functions with the broker: the Node.js
 * one (examples/node) on arm64 and the Python one (examples/python) on x86_64, each equipped
 * by DatabricksTokenBroker.addFunction, with the broker's metrics and an alarm per function.
 *
 *   npx cdk synth -c databricksHost=https://<workspace> [-c databricksClientId=<uuid>]
 *
 * (README, "With AWS CDK"). The Python function is bundled with its requirements
 * (databricks-sdk): by this machine's pip when it has one, else in Docker.
 */
import { spawnSync } from "node:child_process";
import { cpSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { App, CfnOutput, Stack } from "aws-cdk-lib";
import * as actions from "aws-cdk-lib/aws-cloudwatch-actions";
import * as lambda from "aws-cdk-lib/aws-lambda";
import * as sns from "aws-cdk-lib/aws-sns";
import { DatabricksTokenBroker } from "databricks-token-broker/cdk";

const examples = join(dirname(fileURLToPath(import.meta.url)), "..");
const app = new App();
const host: unknown = app.node.tryGetContext("databricksHost");
const clientId: unknown = app.node.tryGetContext("databricksClientId");
if (typeof host !== "string") {
  throw new Error("Give the workspace URL: cdk synth -c databricksHost=https://<workspace> (and -c databricksClientId=<uuid> for a service principal's federation policy)");
}

const stack = new Stack(app, "DatabricksTokenBrokerExample");
const alarmTopic = new sns.Topic(stack, "BrokerAlarms");
const broker = new DatabricksTokenBroker(stack, "DatabricksTokenBroker", {
  host,
  ...(typeof clientId === "string" ? { clientId } : {}),
  metrics: true,
  refreshFailureAlarm: true,
  alarmActions: [new actions.SnsAction(alarmTopic)],
});

const functions = [
  new lambda.Function(stack, "NodeExample", {
    runtime: lambda.Runtime.NODEJS_22_X,
    architecture: lambda.Architecture.ARM_64,
    handler: "index.handler",
    code: lambda.Code.fromAsset(join(examples, "node")),
  }),
  new lambda.Function(stack, "PythonExample", {
    runtime: lambda.Runtime.PYTHON_3_13,
    architecture: lambda.Architecture.X86_64,
    handler: "app.handler",
    code: pythonCode(join(examples, "python"), lambda.Runtime.PYTHON_3_13, lambda.Architecture.X86_64),
  }),
];
for (const fn of functions) {
  broker.addFunction(fn);
  // The role is the subject of the Databricks federation policy (README, "Set up on AWS" step 3).
  new CfnOutput(stack, `${fn.node.id}RoleArn`, { value: fn.role!.roleArn });
}

/**
 * `dir` with the packages of its requirements.txt, for Lambda's `runtime` on `architecture`.
 * Local pip first, asked for wheels of Lambda's platform (manylinux2014, the runtime's Python)
 * rather than this machine's, so that a Mac or another Python builds the same function; where
 * that fails, the CDK's Docker bundling in the runtime's own build image.
 */
function pythonCode(dir: string, runtime: lambda.Runtime, architecture: lambda.Architecture): lambda.Code {
  const pythonVersion = runtime.name.replace(/^python/, "");
  const platform = `manylinux2014_${architecture === lambda.Architecture.ARM_64 ? "aarch64" : "x86_64"}`;
  return lambda.Code.fromAsset(dir, {
    exclude: ["__pycache__"],
    bundling: {
      image: runtime.bundlingImage,
      platform: architecture.dockerPlatform,
      command: ["bash", "-c", "pip install --no-cache-dir -r requirements.txt -t /asset-output && cp -a app.py /asset-output/"],
      local: {
        tryBundle(outputDir) {
          const pip = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:"];
          const target = ["--platform", platform, "--implementation", "cp", "--python-version", pythonVersion, "--target", outputDir];
          const r = spawnSync("python3", [...pip, ...target, "-r", join(dir, "requirements.txt")], { stdio: ["ignore", "inherit", "inherit"] });
          if (r.error || r.status !== 0) {
            process.stderr.write(`python3 -m pip could not bundle ${dir} (${r.error?.message ?? `exit ${r.status}`}); trying Docker\n`);
            // Docker installs into the same directory: leave it nothing half-installed.
            for (const entry of readdirSync(outputDir)) rmSync(join(outputDir, entry), { recursive: true, force: true });
            return false;
          }
          cpSync(join(dir, "app.py"), join(outputDir, "app.py"));
          return true;
        },
      },
    },
  });
}
