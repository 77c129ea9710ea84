/**
 * Units for what the reliability and fuzz runs found: each pins one fix in src/ where it lives,
 * so a regression names itself here in milliseconds, not as a scenario failing minutes later.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { Target } from "../src/config.js";
import { createExchange, MAX_LIFETIME_SECONDS } from "../src/exchange.js";
import { silentLogger } from "../src/log.js";
import { createStsSource } from "../src/sts.js";
import { createStsClient, MAX_STS_BODY_BYTES, webIdentityTokenPort } from "../src/sts-client.js";
import { classifyStsError } from "../src/sts-errors.js";

const T0 = Date.UTC(2026, 10, 29, 12);
const target: Target = {
  name: "default",
  host: "https://dbc-1.cloud.databricks.com",
  isAccounts: false,
  accountId: undefined,
  clientId: undefined,
  scope: "all-apis",
  tokenEndpoint: "https://dbc-1.cloud.databricks.com/oidc/v1/token",
};
const answering = (status: number, body: string) =>
  createExchange({ fetch: async () => new Response(body, { status, headers: { "content-type": "application/json" } }), now: () => T0, log: silentLogger });

describe("Databricks exchange", () => {
  it("bounds a lifetime too long to believe by the JWT's expiry, which Databricks derives it from", async () => {
    const exchange = answering(200, JSON.stringify({ access_token: "dapi-x", token_type: "Bearer", expires_in: 1e12 }));
    expect((await exchange(target, { jwt: "j.w.t", expiresAt: T0 + 300_000 })).expiresAt).toBe(T0 + 300_000);
    // A believable lifetime is taken as given (SPEC §3), JWT or no JWT.
    const plain = answering(200, JSON.stringify({ access_token: "dapi-x", token_type: "Bearer", expires_in: 3600 }));
    expect((await plain(target, { jwt: "j.w.t", expiresAt: T0 + 300_000 })).expiresAt).toBe(T0 + 3_600_000);
    expect((await exchange(target, { jwt: "j.w.t" })).expiresAt).toBe(T0 + MAX_LIFETIME_SECONDS * 1000);
  });

  it("never quotes a 200 body it cannot use: cut short, it still carries the token", async () => {
    const token = "dapi0123456789abcdef0123456789abcdef";
    const err = (await answering(200, `{"access_token":"${token}","expires_in":36`)(target, { jwt: "j.w.t" }).catch((e: unknown) => e)) as Error & { code: string; hint: string };
    expect(err.code).toBe("ERR_EXCHANGE_INVALID_RESPONSE");
    expect(`${err.message} ${err.hint}`).not.toContain(token.slice(0, 8));
    expect(err.message).toMatch(/malformed or cut-short JSON, \d+ bytes/);
  });
});

describe("STS source", () => {
  const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
  const source = (expiration: Date) =>
    createStsSource({ getWebIdentityToken: async () => ({ jwt, expiresAt: expiration.getTime() }), audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300, log: silentLogger, now: () => T0 });

  it.each([
    ["in the past", new Date(T0 - 1_000)],
    ["now", new Date(T0)],
  ])("refuses a JWT whose Expiration is %s, as a retryable invalid answer", async (_when, expiration) => {
    await expect(source(expiration)()).rejects.toMatchObject({ code: "ERR_STS_INVALID_RESPONSE", step: "sts", retryable: true });
  });

  it("takes a JWT that expires later", async () => {
    await expect(source(new Date(T0 + 60_000))()).resolves.toMatchObject({ jwt, expiresAt: T0 + 60_000 });
  });

  it.each([
    [Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" }), "ECONNREFUSED"],
    // The SDK renames a reset "TimeoutError"; the errno says what happened.
    [Object.assign(new Error("socket hang up"), { name: "TimeoutError", code: "ECONNRESET" }), "ECONNRESET"],
    [Object.assign(new Error("exceeded the configured 5000 ms requestTimeout"), { name: "TimeoutError", code: "ETIMEDOUT" }), "ETIMEDOUT"],
  ])("names a network failure by its errno: %s", (err, upstream) => {
    expect(classifyStsError(err)).toMatchObject({ code: "ERR_STS_UNAVAILABLE", upstreamCode: upstream, retryable: true });
  });
});

describe("STS client", () => {
  const servers: http.Server[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });

  async function stsAnswering(body: string, declareLength: boolean): Promise<string> {
    const server = http.createServer((req, res) => {
      req.resume();
      res.writeHead(200, { "content-type": "text/xml", ...(declareLength ? { "content-length": String(Buffer.byteLength(body)) } : {}) });
      res.end(body);
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  it.each([
    ["declared by Content-Length", true],
    ["streamed", false],
  ])("refuses a body over the limit (%s) before reading it whole", async (_how, declared) => {
    const body = `<GetWebIdentityTokenResponse><GetWebIdentityTokenResult><WebIdentityToken>${"A".repeat(MAX_STS_BODY_BYTES * 4)}</WebIdentityToken></GetWebIdentityTokenResult></GetWebIdentityTokenResponse>`;
    const restore = withEnv({ AWS_ENDPOINT_URL_STS: await stsAnswering(body, declared), AWS_ACCESS_KEY_ID: "AKIDEXAMPLE", AWS_SECRET_ACCESS_KEY: "secret", AWS_SESSION_TOKEN: "session" });
    const client = createStsClient("us-east-1");
    try {
      await expect(webIdentityTokenPort(client)({ audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300 })).rejects.toMatchObject({ code: "ERR_STS_INVALID_RESPONSE", upstreamCode: "ResponseTooLarge", retryable: true });
    } finally {
      client.destroy();
      restore();
    }
  });
});

/** Sets environment variables (the SDK reads endpoint and credentials from them at each call); returns the undo. */
function withEnv(vars: Record<string, string>): () => void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  return () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}
