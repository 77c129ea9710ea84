/**
 * Metrics end to end (SPEC §8): the built layer under the Lambda emulator, with
 * DATABRICKS_TOKEN_BROKER_METRICS=emf, writes valid embedded-metric-format records on stdout,
 * at most one per target per refresh or INVOKE (and one at SHUTDOWN), never one per request;
 * none when metrics are off. The stack's secrets scan reads every line, records included.
 */
import { describe, expect, it } from "vitest";
import { emfProblems, isEmf } from "./emf.js";
import { stackPerTest } from "./harness.js";
import { logs, type Stack } from "./stack.js";

const stack = stackPerTest();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** 8 s tokens, refreshed from 4 s left: the second invoke below refreshes. */
const SHORT = {
  db: { expiresIn: 8 },
  env: { DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: "4", DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "2", DATABRICKS_TOKEN_BROKER_METRICS: "emf" },
};

/** One invoke in which the function asks for `n` tokens, one after the other. */
async function invokeAsking(s: Stack, n: number): Promise<void> {
  const { result } = await s.lambda.invoke(async () => {
    const statuses: number[] = [];
    for (let i = 0; i < n; i++) statuses.push((await s.token()).status);
    return statuses;
  });
  expect(result).toEqual(Array(n).fill(200));
}

type Doc = Record<string, unknown>;
const metricsOf = (doc: Doc) => ((doc._aws as { CloudWatchMetrics: { Metrics: { Name: string }[] }[] }).CloudWatchMetrics[0]?.Metrics ?? []).map((m) => m.Name);

describe("CloudWatch metrics from the extension in a Lambda environment", () => {
  it("a cold start and invokes write valid EMF records: one per refresh, one per INVOKE for the tokens served, none per request", async () => {
    const s = await stack(SHORT);
    expect(await s.lambda.init).toMatchObject({ ok: true });
    await invokeAsking(s, 3);
    await invokeAsking(s, 2);
    await sleep(4_500); // inside the refresh window, frozen meanwhile: the next INVOKE refreshes
    await invokeAsking(s, 2);
    await invokeAsking(s, 1);
    expect((await s.lambda.shutdown()).code).toBe(0);

    const lines = logs(s.lambda);
    const records = lines.filter(isEmf);
    // Every stdout line is JSON: a log line or a record.
    expect(lines).toHaveLength(s.lambda.stdout.filter((l) => l.trim() !== "").length);
    for (const r of records) expect(emfProblems(r), JSON.stringify(r)).toEqual([]);
    for (const r of records) {
      expect(r).toMatchObject({ FunctionName: s.lambda.env.AWS_LAMBDA_FUNCTION_NAME, Target: "default" });
      expect(r._aws).toMatchObject({ CloudWatchMetrics: [{ Namespace: "DatabricksTokenBroker", Dimensions: [["FunctionName", "Target"]] }] });
    }
    const refreshRecords = records.filter((r) => metricsOf(r).includes("RefreshSuccess"));
    const servedRecords = records.filter((r) => !metricsOf(r).includes("RefreshSuccess"));
    const refreshLines = lines.filter((l) => l.msg === "token refreshed" || l.msg === "token refresh failed");
    // The prefetch and the refresh at the third INVOKE, each with its record.
    expect(refreshLines).toHaveLength(2);
    expect(refreshRecords.map((r) => [r.RefreshSuccess, r.RefreshFailure])).toEqual([
      [1, 0],
      [1, 0],
    ]);
    for (const r of refreshRecords) expect(r.RefreshLatency).toEqual(expect.any(Number));
    // At most one per INVOKE (four) and one at SHUTDOWN, though eight tokens were served.
    expect(servedRecords.length).toBeLessThanOrEqual(5);
    for (const r of servedRecords) expect(metricsOf(r)).toEqual(["TokensServed"]);
    const served = s.answers.filter((a) => a.route === "/token" && a.status === 200).length;
    expect(served).toBe(8);
    expect(records.reduce((sum, r) => sum + (r.TokensServed as number), 0)).toBe(served);
    // The records carry no token, JWT or session token (the scan also runs at close).
    expect(await s.leaks()).toEqual([]);
  });

  it("writes no record when metrics are off", async () => {
    const s = await stack();
    await s.lambda.init;
    await invokeAsking(s, 2);
    await s.lambda.invoke();
    await s.lambda.shutdown();
    expect(logs(s.lambda).filter(isEmf)).toEqual([]);
    expect(s.lambda.stdout.filter((l) => l.includes("_aws"))).toEqual([]);
  });

  it("fails the init on a bad metrics setting, naming the allowed values", async () => {
    const s = await stack({ env: { DATABRICKS_TOKEN_BROKER_METRICS: "cloudwatch" } });
    expect(await s.lambda.init).toMatchObject({ ok: false });
    expect((s.lambda.initErrors[0]?.body as { errorMessage: string }).errorMessage).toMatch(/DATABRICKS_TOKEN_BROKER_METRICS: must be one of off, emf/);
  });
});
