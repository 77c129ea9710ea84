import { afterEach, describe, expect, it } from "vitest";
import { buildApp, METADATA_WAIT_MS } from "../src/app.js";
import { parseConfig } from "../src/config.js";
import { BrokerError } from "../src/errors.js";
import type { AccessToken } from "../src/exchange.js";
import { silentLogger } from "../src/log.js";
import { TokenCache } from "../src/token-cache.js";

const SESSION = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN";
const HOST = "https://dbc-1234.cloud.databricks.com";
const T0 = Date.UTC(2026, 10, 29, 12);

function setup(fail?: () => BrokerError, session: { token: string | undefined } = { token: SESSION }, countServed?: (target: string) => void) {
  const parsed = parseConfig({
    DATABRICKS_TOKEN_BROKER_ENABLED: "true",
    DATABRICKS_HOST: HOST,
    AWS_REGION: "us-east-1",
    DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: "0.2",
    DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({ acct: { host: "https://accounts.cloud.databricks.com", account_id: "acc-1" } }),
  });
  if (!parsed.enabled) throw new Error("config");
  let n = 0;
  const clock = { t: T0 };
  const cache = new TokenCache({
    targets: parsed.config.targets,
    refreshAheadSeconds: 600,
    minTtlSeconds: 120,
    now: () => clock.t,
    source: async (target): Promise<AccessToken> => {
      if (fail) throw fail();
      n += 1;
      return { accessToken: `dapi-${target.name}-${n}`, tokenType: "Bearer", scope: target.scope, issuedAt: clock.t, expiresAt: clock.t + 3_600_000 };
    },
  });
  const app = buildApp({ config: parsed.config, cache, sessionToken: session.token, log: silentLogger, now: () => clock.t, countServed });
  apps.push(app);
  return { app, clock };
}

const apps: ReturnType<typeof buildApp>[] = [];
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

const auth = { "x-aws-session-token": SESSION };
const meta = { "x-databricks-metadata-version": "1", "x-databricks-host": HOST };

describe("GET /token", () => {
  it("200 with the token, its lifetime and target, and no-store", async () => {
    const { app, clock } = setup();
    const r = await app.inject({ url: "/token", headers: auth });
    expect(r.statusCode).toBe(200);
    expect(r.headers["cache-control"]).toBe("no-store");
    expect(r.headers["content-type"]).toMatch(/^application\/json/);
    expect(r.json()).toEqual({
      access_token: "dapi-default-1",
      token_type: "Bearer",
      expires_in: 3600,
      expires_on: Math.floor((T0 + 3_600_000) / 1000),
      scope: "all-apis",
      target: "default",
    });
    clock.t += 1000;
    expect((await app.inject({ url: "/token", headers: auth })).json().expires_in).toBe(3599);
  });

  it("answers the new token once the cache holds it, and each target and route its own", async () => {
    const { app, clock } = setup();
    expect((await app.inject({ url: "/token", headers: auth })).json().access_token).toBe("dapi-default-1");
    expect((await app.inject({ url: "/token/acct", headers: auth })).json()).toMatchObject({ access_token: expect.stringMatching(/^dapi-acct-/), target: "acct" });
    expect((await app.inject({ url: "/metadata", headers: meta })).json()).toEqual({ access_token: "dapi-default-1", token_type: "Bearer", expires_on: Math.floor((T0 + 3_600_000) / 1000) });
    // 100 s left, under the minimum TTL: the next answer must carry a fresh token.
    clock.t += 3_500_000;
    const fresh = (await app.inject({ url: "/token", headers: auth })).json();
    expect(fresh).toMatchObject({ access_token: expect.not.stringMatching(/^dapi-default-1$/), expires_in: 3600 });
    expect((await app.inject({ url: "/metadata", headers: meta })).json()).toMatchObject({ access_token: fresh.access_token });
    expect((await app.inject({ url: "/token", headers: auth })).json()).toMatchObject({ access_token: fresh.access_token, target: "default" });
  });

  it("serves named targets", async () => {
    const { app } = setup();
    const r = await app.inject({ url: "/token/acct", headers: auth });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toMatchObject({ access_token: "dapi-acct-1", target: "acct" });
  });

  it("401 without the session token, 403 with a wrong or near-miss one", async () => {
    const { app } = setup();
    const missing = await app.inject({ url: "/token" });
    expect(missing.statusCode).toBe(401);
    expect(missing.json()).toMatchObject({ error: "unauthorized" });
    for (const wrong of ["nope", SESSION.slice(0, -1), `${SESSION}x`, SESSION.toLowerCase(), ` ${SESSION}`]) {
      const r = await app.inject({ url: "/token", headers: { "x-aws-session-token": wrong } });
      expect(r.statusCode, wrong).toBe(403);
      expect(r.json()).toMatchObject({ error: "forbidden" });
      expect(r.body).not.toContain("dapi-");
    }
  });

  it("403 when the environment has no session token to check against", async () => {
    const { app } = setup(undefined, { token: undefined });
    expect((await app.inject({ url: "/token", headers: auth })).statusCode).toBe(403);
  });

  it("404 for an unknown target", async () => {
    const { app } = setup();
    const r = await app.inject({ url: "/token/nope", headers: auth });
    expect(r.statusCode).toBe(404);
    expect(r.json()).toMatchObject({ error: "not_found" });
    expect(r.json().message).toMatch(/default, acct/);
  });

  it.each(["-1", "3601", "abc", "1.5", "", "99999"])("400 for min_ttl=%s", async (v) => {
    const { app } = setup();
    const r = await app.inject({ url: `/token?min_ttl=${v}`, headers: auth });
    expect(r.statusCode).toBe(400);
    expect(r.json()).toMatchObject({ error: "bad_request" });
  });

  it("400 for a repeated min_ttl", async () => {
    const { app } = setup();
    expect((await app.inject({ url: "/token?min_ttl=1&min_ttl=2", headers: auth })).statusCode).toBe(400);
  });

  it("honours min_ttl", async () => {
    const { app, clock } = setup();
    await app.inject({ url: "/token", headers: auth });
    clock.t += 30 * 60_000;
    const r = await app.inject({ url: "/token?min_ttl=3000", headers: auth });
    expect(r.json()).toMatchObject({ access_token: "dapi-default-2", expires_in: 3600 });
    const ok = await app.inject({ url: "/token?min_ttl=0", headers: auth });
    expect(ok.json().access_token).toBe("dapi-default-2");
  });

  it("503 naming the step, the upstream code and a hint; no token in it", async () => {
    const { app } = setup(
      () => new BrokerError("ERR_STS_ACCESS_DENIED", "STS denied GetWebIdentityToken", { step: "sts", retryable: false, upstreamCode: "AccessDenied", hint: "allow sts:GetWebIdentityToken" }),
    );
    const r = await app.inject({ url: "/token", headers: auth });
    expect(r.statusCode).toBe(503);
    expect(r.headers["cache-control"]).toBe("no-store");
    const body = r.json();
    expect(body).toMatchObject({ error: "token_unavailable", step: "sts", code: "ERR_STS_ACCESS_DENIED", upstream_code: "AccessDenied", hint: "allow sts:GetWebIdentityToken" });
    expect(body.message).toMatch(/^no valid token for target default: sts AccessDenied: .*Hint: allow/);
  });

  it("503 when no token arrives within the wait", async () => {
    const { app } = setup(() => new BrokerError("ERR_EXCHANGE_UNAVAILABLE", "Databricks 503", { step: "exchange", retryable: true, upstreamCode: "HTTP 503" }));
    const r = await app.inject({ url: "/token", headers: auth });
    expect(r.statusCode).toBe(503);
    expect(r.json()).toMatchObject({ step: "exchange", upstream_code: "HTTP 503" });
  });
});

describe("GET /metadata", () => {
  it("200 in the metadata-service shape", async () => {
    const { app } = setup();
    const r = await app.inject({ url: "/metadata", headers: meta });
    expect(r.statusCode).toBe(200);
    expect(r.headers["cache-control"]).toBe("no-store");
    expect(r.json()).toEqual({ access_token: "dapi-default-1", token_type: "Bearer", expires_on: Math.floor((T0 + 3_600_000) / 1000) });
  });

  it("compares the host normalised", async () => {
    const { app } = setup();
    for (const host of ["https://DBC-1234.cloud.databricks.com/", "dbc-1234.cloud.databricks.com", "https://dbc-1234.cloud.databricks.com:443"]) {
      const r = await app.inject({ url: "/metadata", headers: { ...meta, "x-databricks-host": host } });
      expect(r.statusCode, host).toBe(200);
    }
    expect((await app.inject({ url: "/metadata/acct", headers: { ...meta, "x-databricks-host": "https://accounts.cloud.databricks.com" } })).statusCode).toBe(200);
  });

  it("400 without version 1", async () => {
    const { app } = setup();
    for (const headers of [{ "x-databricks-host": HOST }, { ...meta, "x-databricks-metadata-version": "2" }]) {
      const r = await app.inject({ url: "/metadata", headers });
      expect(r.statusCode).toBe(400);
      expect(r.json()).toMatchObject({ error: "bad_request" });
    }
  });

  it("403 with a missing or different host", async () => {
    const { app } = setup();
    for (const host of [undefined, "https://evil.example.com", "http://dbc-1234.cloud.databricks.com", "https://dbc-1234.cloud.databricks.com:8443"]) {
      const headers: Record<string, string> = { "x-databricks-metadata-version": "1" };
      if (host) headers["x-databricks-host"] = host;
      const r = await app.inject({ url: "/metadata", headers });
      expect(r.statusCode, String(host)).toBe(403);
      expect(r.body).not.toContain("dapi-");
    }
    expect((await app.inject({ url: "/metadata/acct", headers: meta })).statusCode).toBe(403);
  });

  it("404 for an unknown target", async () => {
    const { app } = setup();
    expect((await app.inject({ url: "/metadata/nope", headers: meta })).statusCode).toBe(404);
  });
});

describe("how long a request waits", () => {
  /** A cache that records the wait each request is given, and has no token to give. */
  function waits(waitSeconds: string | undefined) {
    const parsed = parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: "true", DATABRICKS_HOST: HOST, AWS_REGION: "us-east-1", DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: waitSeconds });
    if (!parsed.enabled) throw new Error("config");
    const given: number[] = [];
    const cache = {
      has: (name: string) => name === "default",
      health: () => ({}),
      get: async (_name: string, { waitMs }: { waitMs: number }): Promise<AccessToken> => {
        given.push(waitMs);
        throw new BrokerError("ERR_TOKEN_WAIT_TIMEOUT", `no token for target default within ${waitMs} ms`, { step: "token", retryable: true, hint: "raise DATABRICKS_TOKEN_BROKER_WAIT_SECONDS" });
      },
    };
    const app = buildApp({ config: parsed.config, cache, sessionToken: SESSION, log: silentLogger, now: () => T0 });
    apps.push(app);
    return { app, given };
  }

  it("/metadata at most 8 s, inside the SDKs' 10 s timeout; /token the full DATABRICKS_TOKEN_BROKER_WAIT_SECONDS", async () => {
    expect(METADATA_WAIT_MS).toBe(8_000);
    for (const [wait, metadata, token] of [
      [undefined, 8_000, 10_000],
      ["60", 8_000, 60_000],
      ["8", 8_000, 8_000],
      ["3", 3_000, 3_000],
      ["0.2", 200, 200],
    ] as const) {
      const { app, given } = waits(wait);
      expect((await app.inject({ url: "/metadata", headers: meta })).statusCode).toBe(503);
      expect((await app.inject({ url: "/token", headers: auth })).statusCode).toBe(503);
      expect(given, String(wait)).toEqual([metadata, token]);
    }
  });

  it("a /metadata wait cut short by the SDKs' timeout says so, rather than to raise the wait", async () => {
    const { app } = waits(undefined);
    const metadata = (await app.inject({ url: "/metadata", headers: meta })).json();
    expect(metadata).toMatchObject({ error: "token_unavailable", step: "token", code: "ERR_TOKEN_WAIT_TIMEOUT", hint: expect.stringMatching(/\/metadata waits at most 8 s, inside the Databricks SDKs' 10 s timeout/) });
    expect(metadata.message).toMatch(/within 8000 ms/);
    // Where the wait itself is below 8 s, raising it is the right hint.
    expect((await app.inject({ url: "/token", headers: auth })).json().hint).toBe("raise DATABRICKS_TOKEN_BROKER_WAIT_SECONDS");
    expect((await waits("3").app.inject({ url: "/metadata", headers: meta })).json().hint).toBe("raise DATABRICKS_TOKEN_BROKER_WAIT_SECONDS");
  });

  it("a retry due in 9 s: /metadata answers 503 with the failed step at once, /token waits for it and gets the token", async () => {
    const parsed = parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: "true", DATABRICKS_HOST: HOST, AWS_REGION: "us-east-1" });
    if (!parsed.enabled) throw new Error("config");
    const clock = { t: T0 };
    const slept: number[] = [];
    let calls = 0;
    const cache = new TokenCache({
      targets: parsed.config.targets,
      refreshAheadSeconds: 600,
      minTtlSeconds: 120,
      now: () => clock.t,
      // The fake clock moves instead of real time passing.
      sleep: async (ms) => {
        slept.push(ms);
        clock.t += ms;
      },
      source: async (target): Promise<AccessToken> => {
        calls += 1;
        if (calls === 1) {
          throw new BrokerError("ERR_EXCHANGE_UNAVAILABLE", "Databricks answered 429", { step: "exchange", retryable: true, upstreamCode: "HTTP 429", retryAfterMs: 9_000 });
        }
        return { accessToken: `dapi-${calls}`, tokenType: "Bearer", scope: target.scope, issuedAt: clock.t, expiresAt: clock.t + 3_600_000 };
      },
    });
    const app = buildApp({ config: parsed.config, cache, sessionToken: SESSION, log: silentLogger, now: () => clock.t });
    apps.push(app);

    const metadata = await app.inject({ url: "/metadata", headers: meta });
    expect(metadata.statusCode).toBe(503);
    expect(metadata.json()).toMatchObject({ step: "exchange", code: "ERR_EXCHANGE_UNAVAILABLE", upstream_code: "HTTP 429" });
    expect(slept).toEqual([]);
    expect(clock.t).toBe(T0);

    const token = await app.inject({ url: "/token", headers: auth });
    expect(token.statusCode).toBe(200);
    expect(token.json().access_token).toBe("dapi-2");
    expect(slept).toEqual([9_000]);
  });
});

describe("every route", () => {
  it("/health reports per target and never a token", async () => {
    const { app } = setup();
    const token = (await app.inject({ url: "/token", headers: auth })).json().access_token as string;
    const r = await app.inject({ url: "/health" });
    expect(r.statusCode).toBe(200);
    expect(r.headers["cache-control"]).toBe("no-store");
    const body = r.json();
    expect(body.status).toBe("degraded"); // acct has not been fetched yet
    expect(body.targets.default).toMatchObject({ state: "fresh", refreshes: 1, last_error: null });
    expect(body.targets.acct).toMatchObject({ state: "empty" });
    expect(r.body).not.toContain(token);
  });

  it("404 JSON for unknown routes", async () => {
    const { app } = setup();
    const r = await app.inject({ url: "/nope" });
    expect(r.statusCode).toBe(404);
    expect(r.headers["cache-control"]).toBe("no-store");
    expect(r.json()).toMatchObject({ error: "not_found" });
  });

  it.each(["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] as const)("405 for %s", async (method) => {
    const { app } = setup();
    for (const url of ["/token", "/token/acct", "/metadata", "/health"]) {
      const r = await app.inject({ method, url, headers: auth });
      expect(r.statusCode, url).toBe(405);
      expect(r.headers.allow).toBe("GET");
      expect(r.headers["cache-control"]).toBe("no-store");
      if (method !== "HEAD") expect(r.json()).toMatchObject({ error: "method_not_allowed" });
    }
  });

  it("400 for anything that came through a proxy", async () => {
    const { app } = setup();
    for (const url of ["/token", "/metadata", "/health"]) {
      const r = await app.inject({ url, headers: { ...auth, ...meta, "x-forwarded-for": "10.0.0.1" } });
      expect(r.statusCode, url).toBe(400);
      expect(r.json()).toMatchObject({ error: "bad_request" });
      expect(r.body).not.toContain("dapi-");
    }
  });
});

describe("counting tokens served, for the metrics (SPEC §8)", () => {
  it("counts each token answered, by target, on both routes, and nothing else", async () => {
    const served: string[] = [];
    const { app } = setup(undefined, { token: SESSION }, (target) => served.push(target));
    expect((await app.inject({ url: "/token", headers: auth })).statusCode).toBe(200); // waits for the first token
    expect((await app.inject({ url: "/token", headers: auth })).statusCode).toBe(200); // the cached one
    expect((await app.inject({ url: "/token/acct", headers: auth })).statusCode).toBe(200);
    expect((await app.inject({ url: "/metadata", headers: meta })).statusCode).toBe(200);
    expect((await app.inject({ url: "/token" })).statusCode).toBe(401);
    expect((await app.inject({ url: "/token/nope", headers: auth })).statusCode).toBe(404);
    expect((await app.inject({ url: "/metadata", headers: { ...meta, "x-databricks-host": "https://other.cloud.databricks.com" } })).statusCode).toBe(403);
    expect((await app.inject({ url: "/health" })).statusCode).toBe(200);
    expect(served).toEqual(["default", "default", "acct", "default"]);
  });

  it("counts no 503", async () => {
    const served: string[] = [];
    const { app } = setup(() => new BrokerError("ERR_STS_UNAVAILABLE", "STS is down", { step: "sts", retryable: true }), { token: SESSION }, (t) => served.push(t));
    expect((await app.inject({ url: "/token", headers: auth })).statusCode).toBe(503);
    expect(served).toEqual([]);
  });
});
