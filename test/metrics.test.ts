/**
 * CloudWatch metrics (SPEC §8): the two variables that switch them on and name their namespace,
 * and the embedded-metric-format records, each checked against a JSON Schema written from the
 * EMF specification.
 */
import { describe, expect, it } from "vitest";
import { parseConfig } from "../src/config.js";

const base = { DATABRICKS_TOKEN_BROKER_ENABLED: "true", DATABRICKS_HOST: "https://dbc-1234.cloud.databricks.com", AWS_REGION: "eu-west-1" };

function enabled(env: NodeJS.ProcessEnv) {
  const p = parseConfig(env);
  if (!p.enabled) throw new Error("expected enabled");
  return p.config;
}

function problem(env: NodeJS.ProcessEnv): string {
  try {
    parseConfig(env);
  } catch (e) {
    expect(e).toMatchObject({ code: "ERR_CONFIG", step: "config", retryable: false });
    return (e as Error).message;
  }
  throw new Error("expected a configuration error");
}

describe("DATABRICKS_TOKEN_BROKER_METRICS and _METRICS_NAMESPACE", () => {
  it("are off, in namespace DatabricksTokenBroker, unless set", () => {
    expect(enabled(base)).toMatchObject({ metrics: "off", metricsNamespace: "DatabricksTokenBroker" });
    expect(enabled({ ...base, DATABRICKS_TOKEN_BROKER_METRICS: " ", DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: "" })).toMatchObject({ metrics: "off", metricsNamespace: "DatabricksTokenBroker" });
  });

  it("turn on with emf, in any case, and take a namespace CloudWatch allows", () => {
    expect(enabled({ ...base, DATABRICKS_TOKEN_BROKER_METRICS: "emf" }).metrics).toBe("emf");
    expect(enabled({ ...base, DATABRICKS_TOKEN_BROKER_METRICS: " EMF " }).metrics).toBe("emf");
    expect(enabled({ ...base, DATABRICKS_TOKEN_BROKER_METRICS: "off" }).metrics).toBe("off");
    for (const ns of ["Team/Databricks-Broker_1.0", "a", "x:y#z", "My Broker", "n".repeat(255), "aws/lowercase-is-not-reserved"]) {
      expect(enabled({ ...base, DATABRICKS_TOKEN_BROKER_METRICS: "emf", DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: ns }).metricsNamespace).toBe(ns);
    }
    expect(enabled({ ...base, DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: "  Padded  " }).metricsNamespace).toBe("Padded");
  });

  it.each(["on", "true", "1", "cloudwatch", "prometheus"])("refuse %j, naming the allowed values", (value) => {
    expect(problem({ ...base, DATABRICKS_TOKEN_BROKER_METRICS: value })).toContain(`DATABRICKS_TOKEN_BROKER_METRICS: must be one of off, emf, got ${JSON.stringify(value)}`);
  });

  it.each([
    ["AWS/Lambda", /must not start with AWS\//],
    ["n".repeat(256), /1 to 255 letters/],
    ["Broker|Metrics", /1 to 255 letters, digits, spaces and \. - _ \/ # : characters/],
    ["Brökers", /must be a CloudWatch namespace/],
    ["tab\there", /must be a CloudWatch namespace/],
  ])("refuse the namespace %j, even with metrics off", (ns, why) => {
    expect(problem({ ...base, DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: ns })).toMatch(new RegExp(`DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: .*${why.source}`));
  });

  it("report both with the other bad variables in one message", () => {
    const message = problem({ ...base, DATABRICKS_TOKEN_BROKER_PORT: "x", DATABRICKS_TOKEN_BROKER_METRICS: "yes", DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: "AWS/X" });
    expect(message).toMatch(/DATABRICKS_TOKEN_BROKER_PORT: .*DATABRICKS_TOKEN_BROKER_METRICS: .*DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: /);
  });

  it("are not checked while the broker is disabled", () => {
    expect(parseConfig({ DATABRICKS_TOKEN_BROKER_METRICS: "yes", DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: "AWS/X" }).enabled).toBe(false);
  });
});
