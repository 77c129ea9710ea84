/**
 * The pipeline in-process against the stand-ins: the real STSClient to the STS stand-in,
 * real fetch to the Databricks stand-in, which verifies each JWT through discovery + JWKS.
 */
import { STSClient } from "@aws-sdk/client-sts";
import { stsClientConfig, webIdentityTokenPort } from "../src/sts-client.js";
import { afterEach, describe, expect, it } from "vitest";
import { createTokenCache } from "../src/pipeline.js";
import { parseConfig } from "../src/config.js";
import { silentLogger } from "../src/log.js";
import { CLIENT_ID } from "./stack.js";
import { EXAMPLE_CREDENTIALS } from "./standins/credentials.js";
import { startDatabricks, type DatabricksStandIn } from "./standins/databricks.js";
import { startSts, type StsStandIn } from "./standins/sts.js";

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

async function setup(env: Record<string, string> = {}, stsOptions: Parameters<typeof startSts>[0] = {}, clientOptions: { systemClockOffset?: number } = {}) {
  const sts: StsStandIn = await startSts({ region: "us-east-1", ...stsOptions });
  const db: DatabricksStandIn = await startDatabricks({
    policy: { issuer: sts.issuer, audiences: ["databricks"], subject: sts.settings.roleArn, servicePrincipalId: CLIENT_ID },
  });
  closers.push(() => sts.close(), () => db.close());
  const parsed = parseConfig({
    DATABRICKS_TOKEN_BROKER_ENABLED: "1",
    DATABRICKS_HOST: db.url,
    DATABRICKS_CLIENT_ID: CLIENT_ID,
    AWS_REGION: "us-east-1",
    ...env,
  });
  if (!parsed.enabled) throw new Error("config");
  const client = new STSClient({
    region: "us-east-1",
    endpoint: sts.url,
    maxAttempts: 1,
    credentials: EXAMPLE_CREDENTIALS,
    ...clientOptions,
  });
  const cache = createTokenCache(parsed.config, { getWebIdentityToken: webIdentityTokenPort(client), fetch: (u, i) => fetch(u, i), log: silentLogger });
  return { sts, db, cache };
}

describe("pipeline against the stand-ins", () => {
  it("500 concurrent askers at a cold start → 1 STS call and 1 exchange", async () => {
    const { sts, db, cache } = await setup();
    const tokens = await Promise.all(Array.from({ length: 500 }, () => cache.get("default", { waitMs: 10_000 })));
    expect(new Set(tokens.map((t) => t.accessToken)).size).toBe(1);
    expect(sts.calls).toHaveLength(1);
    expect(db.exchanges).toHaveLength(1);
    expect(db.exchanges[0]).toMatchObject({ ok: true, clientId: CLIENT_ID });
  });

  it("asks STS with the configured audience, algorithm and duration", async () => {
    const { sts, cache } = await setup({ DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "900" });
    await cache.get("default", { waitMs: 10_000 });
    expect(sts.calls[0]).toMatchObject({ audience: ["databricks"], signingAlgorithm: "RS256", durationSeconds: 900 });
  });

  it("asks for less when the role session ends sooner (SessionDurationEscalation)", async () => {
    // A 75 s JWT gives a token of 75 s at most: servable only under a lower minimum TTL.
    const { sts, cache } = await setup({ DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "30" }, { sessionExpiresAt: Date.now() + 100_000 });
    await cache.get("default", { waitMs: 10_000 });
    expect(sts.calls.map((c) => [c.durationSeconds, c.ok])).toEqual([
      [300, false],
      [150, false],
      [75, true],
    ]);
  });

  it("a JWT shortened under the minimum TTL gives a token that can never be served: ERR_TOKEN_LIFETIME_TOO_SHORT", async () => {
    // Databricks derives the token's life from the JWT's, so with the default 120 s minimum the
    // 75 s JWT the session allows is of no use: the failure says so rather than serving it.
    const { db, cache } = await setup({}, { sessionExpiresAt: Date.now() + 100_000 });
    await expect(cache.get("default", { waitMs: 10_000 })).rejects.toMatchObject({ code: "ERR_TOKEN_LIFETIME_TOO_SHORT", step: "token" });
    expect(db.exchanges.filter((e) => e.ok)).toHaveLength(1);
  });

  it("reports a federation policy mismatch as invalid_grant with the policy hint", async () => {
    const { db, cache } = await setup();
    db.settings.policy = { ...db.settings.policy, subject: "arn:aws:iam::123456789012:role/someone-else" };
    await expect(cache.get("default", { waitMs: 10_000 })).rejects.toMatchObject({
      code: "ERR_EXCHANGE_INVALID_GRANT",
      step: "exchange",
      upstreamCode: "invalid_grant",
      hint: expect.stringMatching(/subject must be the execution role's ARN/),
    });
  });

  it("retries a connection reset once at once (a socket closed during a freeze), nothing else", async () => {
    const { sts, db, cache } = await setup();
    sts.addFault({ kind: "reset" }, 1);
    db.addFault({ kind: "reset" }, 1);
    await cache.get("default", { waitMs: 10_000 });
    // The exchange's retry asks STS for a fresh JWT: one JWT is never sent twice.
    expect(sts.calls.map((c) => c.ok)).toEqual([false, true, true]);
    expect(db.exchanges.map((e) => e.ok)).toEqual([false, true]);
    // At once, not after a backoff step (at least 250 ms).
    expect(sts.calls[2]!.time - db.exchanges[0]!.time).toBeLessThan(250);
  });

  it("never sends one JWT to two exchanges of its own: every refresh asks STS anew", async () => {
    const { sts, db, cache } = await setup({ DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "0" });
    await cache.get("default", { waitMs: 10_000 });
    await cache.get("default", { waitMs: 10_000, minTtlSeconds: 3_600 });
    const jtis = db.exchanges.map((e) => e.claims?.jti);
    expect(new Set(jtis).size).toBe(jtis.length);
    expect(sts.calls.filter((c) => c.ok)).toHaveLength(db.exchanges.length);
  });

  // An answer cut after Databricks did the exchange (a "drop": headers sent, body cut) makes a
  // resend of the same JWT a replay, refused invalid_grant (permanent: no token for the 30 s
  // cooldown, a hint blaming the policy). The stale retry therefore asks STS for a fresh JWT.
  it("a retry after an exchange cut mid-answer gets its token (it needs a fresh JWT)", async () => {
    const { sts, db, cache } = await setup();
    db.addFault({ kind: "drop", afterBytes: 20 }, 1);
    await cache.get("default", { waitMs: 10_000 });
    expect(db.exchanges.map((e) => e.ok)).toEqual([true, true]);
    const jtis = db.exchanges.map((e) => e.claims?.jti);
    expect(new Set(jtis).size).toBe(2);
    expect(sts.calls.map((c) => c.ok)).toEqual([true, true]);
  });

  it("a stale STS connection is retried once, not again by the exchange's retry", async () => {
    const { sts, db, cache } = await setup();
    sts.addFault({ kind: "reset" }, 2);
    const started = Date.now();
    await cache.get("default", { waitMs: 10_000 });
    // Two resets: the one immediate retry, then the backoff's attempt.
    expect(sts.calls.map((c) => c.ok)).toEqual([false, false, true]);
    expect(db.exchanges.map((e) => e.ok)).toEqual([true]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it("a clock 16 minutes slow: STS refuses with Signature expired, the SDK takes STS's time, the retry passes", async () => {
    const { sts, cache } = await setup({}, {}, { systemClockOffset: -16 * 60_000 });
    await cache.get("default", { waitMs: 10_000 });
    expect(sts.calls.map((c) => [c.ok, c.error])).toEqual([
      [false, "SignatureDoesNotMatch"],
      [true, undefined],
    ]);
  });

  it("leaves other transient failures to the backoff", async () => {
    const { sts, cache } = await setup();
    sts.addFault({ kind: "error", code: "InternalFailure", status: 500 }, 1);
    const started = Date.now();
    await cache.get("default", { waitMs: 10_000 });
    expect(sts.calls.map((c) => c.ok)).toEqual([false, true]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250); // the first backoff step, not an instant retry
  });

  it("reports a disabled account as OutboundWebIdentityFederationDisabled", async () => {
    const { cache } = await setup({}, { enabled: false });
    await expect(cache.get("default", { waitMs: 10_000 })).rejects.toMatchObject({
      code: "ERR_STS_FEDERATION_DISABLED",
      upstreamCode: "OutboundWebIdentityFederationDisabled",
      retryable: false,
    });
  });
});

describe("a stalled upstream", () => {
  it("STS that sends its headers and a few bytes, then nothing: the call fails as a timeout within STS_TIMEOUT_MS, and is retried", async () => {
    const sts: StsStandIn = await startSts({ region: "us-east-1" });
    closers.push(() => sts.close());
    // The SDK's own requestTimeout ends when the headers arrive: only the port's signal covers the body.
    const client = new STSClient({ ...stsClientConfig("us-east-1"), endpoint: sts.url, credentials: EXAMPLE_CREDENTIALS });
    const port = webIdentityTokenPort(client, { timeoutMs: 400 });
    sts.setFault({ kind: "stall", afterBytes: 40 }, 1);
    const started = Date.now();
    const err = await port({ audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300 }).catch((e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(err).toMatchObject({ code: "ERR_STS_UNAVAILABLE", step: "sts", upstreamCode: "timeout", retryable: true });
    expect((err as Error).message).toMatch(/did not answer within 400 ms/);
    // The next call, on a fresh connection, is answered.
    await expect(port({ audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300 })).resolves.toMatchObject({ jwt: expect.any(String) });
  });
});
