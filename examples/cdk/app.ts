/**
 * A CDK app that deploys the repository's two example functions with the broker: the Node.js
 * one (examples/node) on arm64 and the Python one (examples/python) on x86_64, each equipped
 * by DatabricksTokenBroker.addFunction, with the broker's metrics and an alarm per function.
 *
 *   npx cdk synth -c databricksHost=https://<workspace> [-c databricksClientId=<uuid>]
 *
 * (README, "With AWS CDK"). examples/python/app.py imports databricks-sdk, which a real app
 * bundles with the function (PythonFunction of @aws-cdk/aws-lambda-python-alpha, or the
 * asset's `bundling`); this one leaves it out so that `cdk synth` needs no Docker.
 */
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
    code: lambda.Code.fromAsset(join(examples, "python"), { exclude: ["__pycache__"] }),
  }),
];
for (const fn of functions) {
  broker.addFunction(fn);
  // The role is the subject of the Databricks federation policy (README, "Set up on AWS" step 3).
  new CfnOutput(stack, `${fn.node.id}RoleArn`, { value: fn.role!.roleArn });
}
