import { describe, expect, it } from "vitest";
import { normalizeHost, parseConfig } from "../src/config.js";

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

describe("parseConfig", () => {
  it("stays off unless the switch is true, 1 or on, and then checks nothing else", () => {
    for (const v of [undefined, "", "false", "0", "off", "yes", "enabled"]) {
      expect(parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: v, DATABRICKS_HOST: "not a url" }).enabled).toBe(false);
    }
    for (const v of ["true", "1", "on", "TRUE", " On "]) expect(parseConfig({ ...base, DATABRICKS_TOKEN_BROKER_ENABLED: v }).enabled).toBe(true);
  });

  it("applies the SPEC defaults and derives the workspace token endpoint", () => {
    const c = enabled(base);
    expect(c).toMatchObject({
      audience: "databricks",
      signingAlgorithm: "RS256",
      stsDurationSeconds: 300,
      port: 2775,
      refreshAheadSeconds: 600,
      minTtlSeconds: 120,
      waitSeconds: 10,
      logLevel: "info",
      region: "eu-west-1",
      initializationType: "on-demand",
    });
    expect(c.targets.get("default")).toMatchObject({
      host: "https://dbc-1234.cloud.databricks.com",
      tokenEndpoint: "https://dbc-1234.cloud.databricks.com/oidc/v1/token",
      scope: "all-apis",
      clientId: undefined,
      isAccounts: false,
    });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("derives the account token endpoint for an accounts host", () => {
    const c = enabled({ ...base, DATABRICKS_HOST: "accounts.cloud.databricks.com", DATABRICKS_ACCOUNT_ID: "0d26daa6-5e44-4c97-a497-ef015f91254a" });
    expect(c.targets.get("default")?.tokenEndpoint).toBe("https://accounts.cloud.databricks.com/oidc/accounts/0d26daa6-5e44-4c97-a497-ef015f91254a/v1/token");
    expect(problem({ ...base, DATABRICKS_HOST: "https://accounts.azuredatabricks.net" })).toMatch(/DATABRICKS_ACCOUNT_ID: is required with an accounts host/);
  });

  it("parses named targets and inherits the scope", () => {
    const c = enabled({
      ...base,
      DATABRICKS_TOKEN_BROKER_SCOPE: "sql",
      DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({
        acct: { host: "https://accounts.cloud.databricks.com", account_id: "abc-123" },
        other: { host: "https://dbc-2.cloud.databricks.com", client_id: "sp-2", scope: "all-apis" },
      }),
    });
    expect([...c.targets.keys()]).toEqual(["default", "acct", "other"]);
    expect(c.targets.get("acct")).toMatchObject({ scope: "sql", isAccounts: true, tokenEndpoint: "https://accounts.cloud.databricks.com/oidc/accounts/abc-123/v1/token" });
    expect(c.targets.get("other")).toMatchObject({ scope: "all-apis", clientId: "sp-2" });
  });

  it.each([
    [{ DATABRICKS_HOST: undefined }, /DATABRICKS_HOST: is required/],
    [{ DATABRICKS_HOST: "http://dbc-1.cloud.databricks.com" }, /DATABRICKS_HOST: must use https/],
    [{ DATABRICKS_HOST: "https://dbc-1.cloud.databricks.com/some/path" }, /DATABRICKS_HOST: must be a bare URL/],
    [{ DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM: "HS256" }, /DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM: must be one of RS256, ES384/],
    [{ DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "59" }, /DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: must be from 60 to 3600/],
    [{ DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "5m" }, /DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: must be a whole number/],
    [{ DATABRICKS_TOKEN_BROKER_PORT: "70000" }, /DATABRICKS_TOKEN_BROKER_PORT: must be from 1 to 65535/],
    [{ DATABRICKS_TOKEN_BROKER_PORT: "9001" }, /DATABRICKS_TOKEN_BROKER_PORT: 9001 is Lambda's Runtime API port/],
    [{ DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: "60" }, /DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: must not be below DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS/],
    [{ DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "-1" }, /DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: must be a whole number/],
    [{ DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: "0" }, /DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: must be a number of seconds above 0/],
    [{ DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: "http://10.0.0.5/oidc/v1/token" }, /DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: must use https/],
    [{ DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: "not a url" }, /DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: must be an absolute URL/],
    [{ DATABRICKS_TOKEN_BROKER_TARGETS: "{not json" }, /DATABRICKS_TOKEN_BROKER_TARGETS: must be JSON/],
    [{ DATABRICKS_TOKEN_BROKER_TARGETS: "[]" }, /DATABRICKS_TOKEN_BROKER_TARGETS: must be a JSON object/],
    [{ DATABRICKS_TOKEN_BROKER_TARGETS: '{"default": {"host": "https://x.com"}}' }, /DATABRICKS_TOKEN_BROKER_TARGETS.default: "default" is the target/],
    [{ DATABRICKS_TOKEN_BROKER_TARGETS: '{"a b": {"host": "https://x.com"}}' }, /DATABRICKS_TOKEN_BROKER_TARGETS.a b: target names/],
    [{ DATABRICKS_TOKEN_BROKER_TARGETS: '{"x": {"hots": "https://x.com"}}' }, /DATABRICKS_TOKEN_BROKER_TARGETS.x.hots: unknown key/],
    [{ DATABRICKS_TOKEN_BROKER_TARGETS: '{"x": {"client_id": "a"}}' }, /DATABRICKS_TOKEN_BROKER_TARGETS.x.host: is required/],
    [{ DATABRICKS_TOKEN_BROKER_TARGETS: '{"x": {"host": 5}}' }, /DATABRICKS_TOKEN_BROKER_TARGETS.x.host: must be a string/],
    [{ DATABRICKS_TOKEN_BROKER_LOG_LEVEL: "verbose" }, /DATABRICKS_TOKEN_BROKER_LOG_LEVEL: must be one of debug, info, warn, error/],
    [{ DATABRICKS_TOKEN_BROKER_AUDIENCE: "two words" }, /DATABRICKS_TOKEN_BROKER_AUDIENCE: must be one audience/],
    [{ DATABRICKS_CLIENT_ID: "has space" }, /DATABRICKS_CLIENT_ID: must be the service principal's application ID/],
    [{ DATABRICKS_ACCOUNT_ID: "../../x" }, /DATABRICKS_ACCOUNT_ID: must be the Databricks account ID/],
    [{ AWS_REGION: undefined }, /AWS_REGION: is required/],
  ])("names the bad variable: %o", (override, message) => {
    expect(problem({ ...base, ...override })).toMatch(message);
  });

  it("reports every bad variable at once", () => {
    const m = problem({ ...base, DATABRICKS_TOKEN_BROKER_PORT: "x", DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM: "none", DATABRICKS_HOST: "" });
    expect(m).toMatch(/DATABRICKS_TOKEN_BROKER_PORT/);
    expect(m).toMatch(/DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM/);
    expect(m).toMatch(/DATABRICKS_HOST/);
  });

  it("accepts plain http for loopback stand-ins only", () => {
    expect(enabled({ ...base, DATABRICKS_HOST: "http://127.0.0.1:8080" }).targets.get("default")?.tokenEndpoint).toBe("http://127.0.0.1:8080/oidc/v1/token");
    expect(enabled({ ...base, DATABRICKS_HOST: "http://localhost:8080" }).targets.get("default")?.host).toBe("http://localhost:8080");
  });

  it("knows the Lambda initialization types", () => {
    expect(enabled({ ...base, AWS_LAMBDA_INITIALIZATION_TYPE: "snap-start" }).initializationType).toBe("snap-start");
    expect(enabled({ ...base, AWS_LAMBDA_INITIALIZATION_TYPE: "lambda-managed-instances" }).initializationType).toBe("lambda-managed-instances");
    expect(enabled({ ...base, AWS_LAMBDA_INITIALIZATION_TYPE: "something-new" }).initializationType).toBe("on-demand");
  });
});

describe("normalizeHost", () => {
  it.each([
    ["https://DBC-1.cloud.databricks.com/", "https://dbc-1.cloud.databricks.com"],
    ["dbc-1.cloud.databricks.com", "https://dbc-1.cloud.databricks.com"],
    ["https://dbc-1.cloud.databricks.com:443", "https://dbc-1.cloud.databricks.com"],
    ["https://dbc-1.cloud.databricks.com:8443", "https://dbc-1.cloud.databricks.com:8443"],
    ["http://127.0.0.1:9000", "http://127.0.0.1:9000"],
  ])("%s → %s", (input, output) => expect(normalizeHost(input)).toBe(output));

  it.each(["", "https://x.com/path", "https://x.com?q=1", "ftp://x.com", "https://user:pw@x.com", "http://[bad"])("refuses %s", (input) => {
    expect(normalizeHost(input)).toBeUndefined();
  });
});
