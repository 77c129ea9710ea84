/**
 * CloudWatch metrics (SPEC §8): the embedded-metric-format records, each checked against a JSON
 * Schema written from the EMF specification. The two variables are tested in config.test.ts.
 */
import { describe, expect, it } from "vitest";
import { BrokerError } from "../src/errors.js";
import { createMetrics, emfRecord, refreshRecord } from "../src/metrics.js";
import type { RefreshOutcome } from "../src/token-cache.js";
import { emfProblems } from "./emf.js";

const scope = { namespace: "DatabricksTokenBroker", functionName: "orders-api" };
const AT = 1_764_700_000_000;
const TOKEN = "dapi-secret-access-token-0123456789abcdef";
const success: RefreshOutcome = {
  ok: true,
  target: "default",
  at: AT,
  ms: 412,
  token: { accessToken: TOKEN, tokenType: "Bearer", scope: "all-apis", expiresAt: AT + 3_600_000, issuedAt: AT - 412 },
};
const failure = (target = "default"): RefreshOutcome => ({
  ok: false,
  target,
  at: AT,
  ms: 87,
  failures: 2,
  retryInMs: 1500,
  error: new BrokerError("ERR_EXCHANGE_REJECTED", "Databricks refused the exchange", { step: "exchange", retryable: false, upstreamCode: "invalid_grant" }),
});

describe("the EMF schema of the tests", () => {
  const example = {
    _aws: { Timestamp: 1574109732004, CloudWatchMetrics: [{ Namespace: "lambda-function-metrics", Dimensions: [["functionVersion"]], Metrics: [{ Name: "time", Unit: "Milliseconds" }] }] },
    functionVersion: "$LATEST",
    time: 100,
    requestId: "989ffbf8-9ace-4817-a57c-e4dd734019ee",
  };
  const directive = example._aws.CloudWatchMetrics[0]!;

  it("accepts the specification's own example", () => {
    expect(emfProblems(example)).toEqual([]);
  });

  it.each([
    ["no Timestamp", { ...example, _aws: { CloudWatchMetrics: example._aws.CloudWatchMetrics } }],
    ["a Timestamp in seconds with a fraction", { ...example, _aws: { ...example._aws, Timestamp: 1574109732.004 } }],
    ["a member the directive does not define", { ...example, _aws: { ...example._aws, CloudWatchMetrics: [{ ...directive, StepName: "x" }] } }],
    ["an unknown unit", { ...example, _aws: { ...example._aws, CloudWatchMetrics: [{ ...directive, Metrics: [{ Name: "time", Unit: "Millis" }] }] } }],
    ["a namespace over 255 characters", { ...example, _aws: { ...example._aws, CloudWatchMetrics: [{ ...directive, Namespace: "n".repeat(256) }] } }],
    ["a missing dimension target", { ...example, functionVersion: undefined }],
    ["a dimension target that is not a string", { ...example, functionVersion: 1 }],
    ["a metric target that is not a number", { ...example, time: "100" }],
  ])("refuses a document with %s", (_why, doc) => {
    expect(emfProblems(JSON.parse(JSON.stringify(doc)))).not.toEqual([]);
  });
});

describe("EMF records", () => {
  it("of a refresh: outcome, latency and tokens served, by FunctionName and Target", () => {
    const record = refreshRecord(scope, success, 5);
    expect(emfProblems(JSON.parse(JSON.stringify(record)))).toEqual([]);
    expect(record).toEqual({
      _aws: {
        Timestamp: AT,
        CloudWatchMetrics: [
          {
            Namespace: "DatabricksTokenBroker",
            Dimensions: [["FunctionName", "Target"]],
            Metrics: [
              { Name: "RefreshSuccess", Unit: "Count" },
              { Name: "RefreshFailure", Unit: "Count" },
              { Name: "RefreshLatency", Unit: "Milliseconds" },
              { Name: "TokensServed", Unit: "Count" },
            ],
          },
        ],
      },
      FunctionName: "orders-api",
      Target: "default",
      RefreshSuccess: 1,
      RefreshFailure: 0,
      RefreshLatency: 412,
      TokensServed: 5,
    });
    expect(JSON.stringify(record)).not.toContain(TOKEN);
  });

  it("of a failure: its step and codes as properties, never as dimensions", () => {
    const record = refreshRecord(scope, failure(), 0);
    expect(emfProblems(JSON.parse(JSON.stringify(record)))).toEqual([]);
    expect(record).toMatchObject({ RefreshSuccess: 0, RefreshFailure: 1, RefreshLatency: 87, TokensServed: 0, step: "exchange", code: "ERR_EXCHANGE_REJECTED", upstreamCode: "invalid_grant" });
    expect(record._aws.CloudWatchMetrics[0]!.Dimensions).toEqual([["FunctionName", "Target"]]);
    expect(JSON.stringify(record)).not.toContain("Databricks refused");
  });

  it("keep their dimensions and metrics over a property of the same name", () => {
    const record = emfRecord(scope, "default", AT, { TokensServed: 2 }, { Target: "spoofed", TokensServed: "x" });
    expect(record).toMatchObject({ Target: "default", TokensServed: 2 });
    expect(emfProblems(JSON.parse(JSON.stringify(record)))).toEqual([]);
  });
});

/** A recorder whose records are parsed back from the lines it wrote. */
function recorder(targets = ["default", "other"]) {
  const lines: string[] = [];
  let now = AT;
  const metrics = createMetrics({ ...scope, targets, write: (l) => lines.push(l), now: () => now });
  const records = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  return { metrics, lines, records, tick: (ms: number) => (now += ms) };
}

describe("createMetrics", () => {
  it("writes one JSON line per refresh, with the tokens served since the last record, then counts from zero", () => {
    const { metrics, lines, records } = recorder();
    for (let i = 0; i < 3; i++) metrics.served("default");
    metrics.served("other");
    metrics.onRefresh(success);
    metrics.onRefresh(failure());
    expect(lines).toHaveLength(2);
    for (const l of lines) expect(l).toMatch(/^\{[^\n]*\}\n$/);
    expect(records().map((r) => [r.Target, r.RefreshSuccess, r.TokensServed])).toEqual([
      ["default", 1, 3],
      ["default", 0, 0],
    ]);
    for (const r of records()) expect(emfProblems(r)).toEqual([]);
  });

  it("at a flush, writes a TokensServed record per target that served tokens and had no refresh since the last flush", () => {
    const { metrics, records, tick } = recorder();
    metrics.served("default");
    metrics.served("default");
    metrics.onRefresh(failure("other"));
    metrics.served("other");
    tick(1000);
    metrics.flush();
    // "other" refreshed in this window: its token carries to its next record.
    expect(records().slice(1)).toEqual([expect.objectContaining({ Target: "default", TokensServed: 2 })]);
    const [flushed] = records().slice(1);
    expect((flushed!._aws as { Timestamp: number }).Timestamp).toBe(AT + 1000);
    expect((flushed!._aws as { CloudWatchMetrics: { Metrics: unknown[] }[] }).CloudWatchMetrics[0]!.Metrics).toEqual([{ Name: "TokensServed", Unit: "Count" }]);
    expect(emfProblems(flushed)).toEqual([]);
    metrics.flush();
    expect(records().slice(2)).toEqual([expect.objectContaining({ Target: "other", TokensServed: 1 })]);
    metrics.flush();
    expect(records()).toHaveLength(3);
  });

  it("at the last flush, writes the tokens served of a target that refreshed meanwhile too", () => {
    const { metrics, records } = recorder();
    metrics.onRefresh(success);
    metrics.served("default");
    metrics.flush({ last: true });
    expect(records().map((r) => [r.Target, r.TokensServed])).toEqual([
      ["default", 0],
      ["default", 1],
    ]);
  });

  it("writes nothing for requests alone, nor for a target it does not know", () => {
    const { metrics, lines } = recorder(["default"]);
    for (let i = 0; i < 1000; i++) metrics.served("default");
    metrics.served("nope");
    expect(lines).toEqual([]);
    metrics.flush();
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ TokensServed: 1000 });
  });
});
