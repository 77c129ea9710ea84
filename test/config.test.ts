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
    [{ DATABRICKS_HOST: "https://dbc-1.cloud.databricks.com/some/path" }, /DATABRICKS_HOST: must be the host's bare URL/],
    [{ DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM: "HS256" }, /DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM: must be one of RS256, ES384/],
    [{ DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "59" }, /DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: must be from 60 to 3600/],
    [{ DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "5m" }, /DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: must be a whole number/],
    [{ DATABRICKS_TOKEN_BROKER_PORT: "70000" }, /DATABRICKS_TOKEN_BROKER_PORT: must be from 1 to 65535/],
    [{ DATABRICKS_TOKEN_BROKER_PORT: "9001" }, /DATABRICKS_TOKEN_BROKER_PORT: 9001 is Lambda's Runtime API port/],
    [{ DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: "60" }, /DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: must not be below DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS \(120, its default\), got 60/],
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

describe("messages that say what to change (issue 14, item 6)", () => {
  it.each([
    ["https://adb-1234567890123456.7.azuredatabricks.net/?o=1234567890123456", 'remove the query "?o=1234567890123456"; the value to set is https://adb-1234567890123456.7.azuredatabricks.net '],
    ["https://dbc-1.cloud.databricks.com/browse/folders/42", 'remove the path "/browse/folders/42"; the value to set is https://dbc-1.cloud.databricks.com '],
    ["https://dbc-1.cloud.databricks.com/sql/editor?o=5#tab", 'remove the path "/sql/editor" and the query "?o=5" and the fragment "#tab"; the value to set is https://dbc-1.cloud.databricks.com '],
    // The corrected value must pass the https rule as well.
    ["http://dbc-1.cloud.databricks.com/x", 'remove the path "/x"; the value to set is https://dbc-1.cloud.databricks.com '],
  ])("a DATABRICKS_HOST copied from the browser (%s) names what to remove and the value to set", (host, says) => {
    const m = problem({ ...base, DATABRICKS_HOST: host });
    expect(m).toContain(`DATABRICKS_HOST: must be the host's bare URL, without a path, query or fragment: ${says}(got ${JSON.stringify(host)})`);
  });

  it("a named target's host gets the same advice, under its own name", () => {
    const m = problem({ ...base, DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({ t: { host: "https://dbc-2.cloud.databricks.com/?o=2" } }) });
    expect(m).toContain('DATABRICKS_TOKEN_BROKER_TARGETS.t.host: must be the host\'s bare URL, without a path, query or fragment: remove the query "?o=2"; the value to set is https://dbc-2.cloud.databricks.com ');
  });

  it("a scope with two spaces is reported once, with the value to set", () => {
    const m = problem({ ...base, DATABRICKS_TOKEN_BROKER_SCOPE: "all-apis  sql" });
    expect(m).toBe('invalid configuration: DATABRICKS_TOKEN_BROKER_SCOPE: must be OAuth scopes separated by single spaces, got "all-apis  sql": set it to "all-apis sql"');
    // A named target without a scope of its own inherits the bad one: still one problem.
    const withTarget = problem({ ...base, DATABRICKS_TOKEN_BROKER_SCOPE: "all-apis  sql", DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({ t: { host: "https://dbc-2.cloud.databricks.com" } }) });
    expect(withTarget.match(/SCOPE/g)).toHaveLength(1);
    const own = problem({ ...base, DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({ t: { host: "https://dbc-2.cloud.databricks.com", scope: "sql\tall-apis" } }) });
    expect(own).toBe('invalid configuration: DATABRICKS_TOKEN_BROKER_TARGETS.t.scope: must be OAuth scopes separated by single spaces, got "sql\\tall-apis": set it to "sql all-apis"');
  });

  it("MIN_TTL_SECONDS above the default refresh window names MIN_TTL_SECONDS, the variable set, and the rule", () => {
    const m = problem({ ...base, DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "700" });
    expect(m).toBe(
      "invalid configuration: DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: must not be above DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS (600, its default), got 700: a token would become unservable before its background refresh starts; lower it to 600 or less, or set DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS to 700 or more",
    );
  });

  it("with both set, REFRESH_AHEAD_SECONDS below MIN_TTL_SECONDS is one problem naming both values", () => {
    const m = problem({ ...base, DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "300", DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: "200" });
    expect(m).toBe(
      "invalid configuration: DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: must not be below DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS (300), got 200: a token would become unservable before its background refresh starts; set it to 300 or more, or lower DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS",
    );
  });
});

describe("AWS endpoint variables (issue 12, item 10)", () => {
  // The AWS SDK sends the signed STS request (and gets the JWT back) wherever these point.
  it.each([
    [{ AWS_ENDPOINT_URL_STS: "http://sts.example.com" }, /AWS_ENDPOINT_URL_STS: must use https/],
    [{ AWS_ENDPOINT_URL_STS: "http://10.0.0.5:4566" }, /AWS_ENDPOINT_URL_STS: must use https/],
    [{ AWS_ENDPOINT_URL: "http://localstack:4566" }, /AWS_ENDPOINT_URL: must use https/],
    [{ AWS_ENDPOINT_URL_STS: "not a url" }, /AWS_ENDPOINT_URL_STS: must be an absolute URL/],
    // The SDK takes AWS_ENDPOINT_URL_STS first, so that is the one to blame.
    [{ AWS_ENDPOINT_URL_STS: "http://sts.example.com", AWS_ENDPOINT_URL: "https://sts.example.com" }, /AWS_ENDPOINT_URL_STS: must use https/],
  ])("refuses plain http off loopback: %o", (override, message) => {
    expect(problem({ ...base, ...override })).toMatch(message);
  });

  it("accepts https, http on loopback, and an AWS_ENDPOINT_URL that the STS one overrides", () => {
    for (const env of [
      { AWS_ENDPOINT_URL_STS: "https://sts.eu-west-1.amazonaws.com" },
      { AWS_ENDPOINT_URL_STS: "http://127.0.0.1:4566" },
      { AWS_ENDPOINT_URL_STS: "http://localhost:4566", AWS_ENDPOINT_URL: "http://localstack:4566" },
      { AWS_ENDPOINT_URL: "https://vpce-1.sts.eu-west-1.vpce.amazonaws.com" },
      { AWS_ENDPOINT_URL_STS: "", AWS_ENDPOINT_URL: "http://[::1]:4566" },
    ]) {
      expect(enabled({ ...base, ...env }).region).toBe("eu-west-1");
    }
  });

  it("a disabled broker checks them not", () => {
    expect(parseConfig({ AWS_ENDPOINT_URL_STS: "http://sts.example.com" }).enabled).toBe(false);
  });
});

describe("URLs with a user name or password (issue 12, item 11)", () => {
  const SECRET = "hunter2-Pa55word";
  it.each([
    ["DATABRICKS_HOST", { DATABRICKS_HOST: `https://admin:${SECRET}@dbc-1.cloud.databricks.com` }],
    ["DATABRICKS_HOST", { DATABRICKS_HOST: `admin:${SECRET}@dbc-1.cloud.databricks.com` }],
    ["DATABRICKS_HOST", { DATABRICKS_HOST: `http://admin:${SECRET}@dbc-1.cloud.databricks.com` }],
    ["DATABRICKS_HOST", { DATABRICKS_HOST: `https://admin:${SECRET}@dbc 1.cloud.databricks.com` }],
    ["DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT", { DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: `https://admin:${SECRET}@dbc-1.cloud.databricks.com/oidc/v1/token` }],
    ["DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT", { DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: `http://admin:${SECRET}@10.0.0.5/oidc/v1/token` }],
    ["DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT", { DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: `https://admin:${SECRET}@bad host/oidc/v1/token` }],
    ["DATABRICKS_TOKEN_BROKER_TARGETS.x.host", { DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({ x: { host: `https://admin:${SECRET}@dbc-2.cloud.databricks.com` } }) }],
    ["DATABRICKS_TOKEN_BROKER_TARGETS.x.token_endpoint", { DATABRICKS_TOKEN_BROKER_TARGETS: JSON.stringify({ x: { host: "https://dbc-2.cloud.databricks.com", token_endpoint: `https://admin:${SECRET}@dbc-2.cloud.databricks.com/oidc/v1/token` } }) }],
    ["AWS_ENDPOINT_URL_STS", { AWS_ENDPOINT_URL_STS: `https://admin:${SECRET}@sts.example.com` }],
    ["AWS_ENDPOINT_URL_STS", { AWS_ENDPOINT_URL_STS: `http://admin:${SECRET}@sts.example.com` }],
    ["AWS_ENDPOINT_URL", { AWS_ENDPOINT_URL: `https://admin:${SECRET}@sts.example.com` }],
  ])("refuses it in %s and never quotes it", (variable, override) => {
    const m = problem({ ...base, ...override });
    expect(m).toContain(`${variable}: `);
    expect(m).not.toContain(SECRET);
    expect(m).not.toContain("admin");
  });

  it("in DATABRICKS_TOKEN_BROKER_TARGETS that is not JSON: the parser's quote of the text is dropped", () => {
    // V8 quotes about ten characters either side of an unexpected token.
    const m = problem({ ...base, DATABRICKS_TOKEN_BROKER_TARGETS: '{"x": {"host": ["https://admin:Pa55@h", x]}}' });
    expect(m).toMatch(/DATABRICKS_TOKEN_BROKER_TARGETS: must be JSON/);
    expect(m).not.toContain("Pa55");
  });

  it("says why, and quotes the rest of the URL with the user name and password masked", () => {
    const m = problem({ ...base, DATABRICKS_HOST: `https://admin:${SECRET}@dbc-1.cloud.databricks.com` });
    expect(m).toMatch(/DATABRICKS_HOST: must not carry a user name or password/);
    expect(m).toContain("https://***@dbc-1.cloud.databricks.com");
  });

  it("in DATABRICKS_METADATA_SERVICE_URL, which the broker does not read, a warning that quotes neither", () => {
    const p = parseConfig({ ...base, DATABRICKS_AUTH_TYPE: "metadata-service", DATABRICKS_METADATA_SERVICE_URL: `http://admin:${SECRET}@localhost:2775/metadata` });
    if (!p.enabled) throw new Error("expected enabled");
    expect(p.warnings).toEqual([expect.objectContaining({ variable: "DATABRICKS_METADATA_SERVICE_URL", detail: expect.stringMatching(/user name or password/) })]);
    expect(JSON.stringify(p.warnings)).not.toContain(SECRET);
  });
});

describe("configuration warnings", () => {
  const URL = "http://localhost:2775/metadata";
  const SP = { ...base, DATABRICKS_CLIENT_ID: "5e1a0000-0000-4000-8000-000000000001" };
  function warnings(env: NodeJS.ProcessEnv) {
    const p = parseConfig(env);
    if (!p.enabled) throw new Error("expected enabled");
    return p.warnings;
  }

  it("none for the README's settings, or without any SDK variable", () => {
    expect(warnings(base)).toEqual([]);
    expect(warnings(SP)).toEqual([]);
    expect(warnings({ ...SP, DATABRICKS_METADATA_SERVICE_URL: URL, DATABRICKS_AUTH_TYPE: "metadata-service" })).toEqual([]);
    expect(warnings({ ...base, DATABRICKS_METADATA_SERVICE_URL: "http://127.0.0.1:2775/metadata/default", DATABRICKS_AUTH_TYPE: "metadata-service" })).toEqual([]);
    expect(warnings({ ...base, DATABRICKS_TOKEN_BROKER_PORT: "3000", DATABRICKS_METADATA_SERVICE_URL: "http://localhost:3000/metadata", DATABRICKS_AUTH_TYPE: "metadata-service" })).toEqual([]);
  });

  it("the service-principal set-up without DATABRICKS_AUTH_TYPE: names the SDKs' refusal and the fix", () => {
    expect(warnings({ ...SP, DATABRICKS_METADATA_SERVICE_URL: URL })).toEqual([
      {
        variable: "DATABRICKS_AUTH_TYPE",
        detail:
          'DATABRICKS_METADATA_SERVICE_URL is set without DATABRICKS_AUTH_TYPE: with DATABRICKS_CLIENT_ID also set, the Databricks SDKs for Python and Go and the Databricks CLI refuse to start ("validate: more than one authorization method configured: metadata-service and oauth")',
        fix: "set DATABRICKS_AUTH_TYPE=metadata-service on the function",
      },
    ]);
    // Named as the SDKs name them: every method, sorted.
    const [w] = warnings({ ...SP, DATABRICKS_TOKEN: "dapi-not-a-real-token", DATABRICKS_METADATA_SERVICE_URL: URL });
    expect(w?.detail).toContain("with DATABRICKS_CLIENT_ID and DATABRICKS_TOKEN also set");
    expect(w?.detail).toContain("more than one authorization method configured: metadata-service and oauth and pat");
    expect(w?.detail).not.toContain("dapi-not-a-real-token");
  });

  it("an account-wide policy without DATABRICKS_AUTH_TYPE: the Go SDK and the CLI hide the broker's errors", () => {
    expect(warnings({ ...base, DATABRICKS_METADATA_SERVICE_URL: URL, DATABRICKS_CLIENT_ID: "  " })).toEqual([
      {
        variable: "DATABRICKS_AUTH_TYPE",
        detail: expect.stringContaining('the Go SDK and the Databricks CLI hide its error behind "cannot configure default credentials"'),
        fix: "set DATABRICKS_AUTH_TYPE=metadata-service on the function",
      },
    ]);
  });

  it.each(["pat", "oauth-m2m", "Metadata-Service", "metadata-service "])("DATABRICKS_AUTH_TYPE=%j: the SDKs would not ask the broker", (authType) => {
    const [w, ...rest] = warnings({ ...SP, DATABRICKS_METADATA_SERVICE_URL: URL, DATABRICKS_AUTH_TYPE: authType });
    expect(rest).toEqual([]);
    expect(w).toMatchObject({ variable: "DATABRICKS_AUTH_TYPE", detail: expect.stringContaining(`DATABRICKS_AUTH_TYPE is ${JSON.stringify(authType)}`), fix: expect.stringMatching(/^set DATABRICKS_AUTH_TYPE=metadata-service on the function/) });
  });

  it("DATABRICKS_AUTH_TYPE=metadata-service without the URL: the SDKs cannot find the broker", () => {
    expect(warnings({ ...SP, DATABRICKS_AUTH_TYPE: "metadata-service" })).toEqual([
      { variable: "DATABRICKS_METADATA_SERVICE_URL", detail: expect.stringContaining("will not find the broker"), fix: "set DATABRICKS_METADATA_SERVICE_URL=http://localhost:2775/metadata on the function" },
    ]);
  });

  it.each([
    ["http://localhost:2776/metadata", /it names port 2776, but the broker listens on 2775 \(DATABRICKS_TOKEN_BROKER_PORT\)/],
    ["http://localhost/metadata", /it names port 80, but the broker listens on 2775/],
    ["https://localhost:2775/metadata", /the broker serves plain http, not https/],
    ["http://[::1]:2775/metadata", /the SDKs accept only localhost or 127.0.0.1 as its host, got \[::1\]/],
    ["http://169.254.170.2:2775/metadata", /accept only localhost or 127.0.0.1/],
    ["http://localhost:2775/token", /its path is not \/metadata or \/metadata\/\{target\}/],
    ["http://localhost:2775/metadata/", /its path is not/],
    ["http://localhost:2775/metadata/nope", /it names a target that is not configured \(configured: default, acct\)/],
    ["http://localhost:2775/metadata/acct", /it names target "acct", whose host https:\/\/accounts.cloud.databricks.com is not DATABRICKS_HOST \(https:\/\/dbc-1234.cloud.databricks.com\).*403/],
    ["localhost:2775/metadata", /./],
    ["not a url", /it is not a URL/],
  ])("DATABRICKS_METADATA_SERVICE_URL=%s does not reach the broker", (url, why) => {
    const targets = JSON.stringify({ acct: { host: "https://accounts.cloud.databricks.com", account_id: "acc-1" } });
    const all = warnings({ ...SP, DATABRICKS_TOKEN_BROKER_TARGETS: targets, DATABRICKS_METADATA_SERVICE_URL: url, DATABRICKS_AUTH_TYPE: "metadata-service" });
    expect(all).toEqual([
      {
        variable: "DATABRICKS_METADATA_SERVICE_URL",
        detail: expect.stringMatching(/^DATABRICKS_METADATA_SERVICE_URL does not reach the broker's metadata route: /),
        fix: "set DATABRICKS_METADATA_SERVICE_URL=http://localhost:2775/metadata on the function",
      },
    ]);
    expect(all[0]?.detail).toMatch(why);
    // The SDKs treat the URL as a secret: its path is never quoted.
    expect(all[0]?.detail).not.toMatch(/\/token|\/nope/);
  });

  it("ES384: accepted, with a warning that Databricks documents RS256 and ES256", () => {
    expect(warnings({ ...base, DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM: "es384" })).toEqual([
      { variable: "DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM", detail: expect.stringMatching(/ES384.*RS256 and ES256/), fix: expect.stringContaining("DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM=RS256") },
    ]);
  });

  it("never fail the configuration, and a disabled broker checks none of them", () => {
    expect(warnings({ ...SP, DATABRICKS_METADATA_SERVICE_URL: "http://evil.example:1/x", DATABRICKS_AUTH_TYPE: "pat" })).toHaveLength(2);
    expect(parseConfig({ DATABRICKS_METADATA_SERVICE_URL: URL, DATABRICKS_CLIENT_ID: "x" })).not.toHaveProperty("warnings");
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
