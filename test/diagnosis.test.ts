/**
 * The diagnosis shared by the extension and `doctor`: claims decoding, which policy setting a
 * refused exchange points at, the checklist; and, inside the extension, the diagnosis logged
 * once per failure code and the 503 that carries its summary.
 */
import { STSClient } from "@aws-sdk/client-sts";
import { webIdentityTokenPort } from "../src/sts-client.js";
import { afterEach, describe, expect, it } from "vitest";
import { buildApp } from "../src/app.js";
import { createTokenCache } from "../src/pipeline.js";
import { roleFromCaller } from "../src/cli/aws.js";
import { federationPolicyCommand, putRolePolicyCommand, shellQuote } from "../src/cli/policies.js";
import { parseConfig, type Target } from "../src/config.js";
import { decodeJwtClaims, diagnoseRefreshFailure, explainExchangeFailure, formatCheck } from "../src/diagnosis.js";
import { BrokerError } from "../src/errors.js";
import { createLogger } from "../src/log.js";
import { DOCTOR_COMMAND, logRefreshes } from "../src/refresh-log.js";
import { CLIENT_ID } from "./stack.js";
import { startDatabricks, type DatabricksStandIn } from "./standins/databricks.js";
import { startSts, type StsStandIn } from "./standins/sts.js";

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwtOf = (claims: unknown) => `${b64({ alg: "RS256", typ: "JWT" })}.${b64(claims)}.c2lnbmF0dXJl`;
const CLAIMS = { iss: "https://abc.tokens.sts.global.api.aws", sub: "arn:aws:iam::123456789012:role/fn", aud: "databricks", exp: 2_000_000_000, iat: 1_999_999_700, jti: "x" };
const TARGET: Target = {
  name: "default",
  host: "https://dbc-1.cloud.databricks.com",
  isAccounts: false,
  accountId: undefined,
  clientId: "app-id-1",
  scope: "all-apis",
  tokenEndpoint: "https://dbc-1.cloud.databricks.com/oidc/v1/token",
};
const grant = (description: string, endpoint = TARGET.tokenEndpoint) =>
  new BrokerError("ERR_EXCHANGE_INVALID_GRANT", `Databricks ${endpoint} answered 400: ${description}`, { step: "exchange", retryable: false, upstreamCode: "invalid_grant", hint: "generic" });

describe("decodeJwtClaims", () => {
  it("reads iss, sub, aud (string or list), exp and iat, and nothing else", () => {
    expect(decodeJwtClaims(jwtOf(CLAIMS))).toEqual({ iss: CLAIMS.iss, sub: CLAIMS.sub, aud: ["databricks"], exp: CLAIMS.exp, iat: CLAIMS.iat });
    expect(decodeJwtClaims(jwtOf({ ...CLAIMS, aud: ["a", 3, "b"] }))?.aud).toEqual(["a", "b"]);
  });

  it.each([["not a jwt"], ["a.b"], [`x.${Buffer.from("[1,2]").toString("base64url")}.y`], ["x.!!!.y"], [`x.${Buffer.from("{nope").toString("base64url")}.y`]])("%j → undefined", (s) => {
    expect(decodeJwtClaims(s)).toBeUndefined();
  });
});

describe("explainExchangeFailure", () => {
  it.each([
    ["The token issuer (iss) 'x' does not match any federation policy", /the policy's issuer must be the account's outbound-federation issuer URL, "https:\/\/abc\.tokens\.sts\.global\.api\.aws"/],
    ["The token audience (aud) [databricks] is not accepted by the federation policy", /the policy's audiences must include DATABRICKS_TOKEN_BROKER_AUDIENCE, "databricks"; add it to/],
    ["The token subject (sub) 'x' does not match the federation policy", /the policy's subject must be the execution role's ARN, "arn:aws:iam::123456789012:role\/fn"; set it on the federation policy of service principal app-id-1 \(DATABRICKS_CLIENT_ID\)/],
    ["The subject_token has expired (exp)", /clock/],
    ["No key in the issuer's JWKS matches the subject_token's kid", /algorithm or signature/],
    ["The subject_token is signed with ES384; supported algorithms are RS256, ES256", /SIGNING_ALGORITHM=RS256/],
    ["Token federation failed", /no federation policy accepts this JWT: check the federation policy of service principal app-id-1 .*issuer URL, "https:\/\/abc.*audiences must include DATABRICKS_TOKEN_BROKER_AUDIENCE, "databricks".*subject must be the execution role's ARN, "arn:aws:iam::123456789012:role\/fn"/],
  ])("invalid_grant %j → a hint naming the setting and its value", (description, hint) => {
    const e = explainExchangeFailure(grant(description), jwtOf(CLAIMS), TARGET) as BrokerError;
    expect(e).toMatchObject({ code: "ERR_EXCHANGE_INVALID_GRANT", step: "exchange", upstreamCode: "invalid_grant", retryable: false, message: grant(description).message });
    expect(e.hint).toMatch(hint);
    expect(e.cause).toBeInstanceOf(BrokerError);
  });

  it("reads only Databricks' description, not words in the endpoint's URL", () => {
    const e = explainExchangeFailure(grant("Token federation failed", "https://sub.iss.example/oidc/v1/token"), jwtOf(CLAIMS), TARGET) as BrokerError;
    expect(e.hint).toMatch(/^no federation policy accepts this JWT/);
  });

  it("invalid_client names DATABRICKS_CLIENT_ID, or asks for it when unset", () => {
    const err = new BrokerError("ERR_EXCHANGE_INVALID_CLIENT", "x", { step: "exchange", retryable: false, upstreamCode: "invalid_client" });
    expect((explainExchangeFailure(err, jwtOf(CLAIMS), TARGET) as BrokerError).hint).toMatch(/DATABRICKS_CLIENT_ID "app-id-1" is not the application ID/);
    expect((explainExchangeFailure(err, jwtOf(CLAIMS), { ...TARGET, clientId: undefined }) as BrokerError).hint).toMatch(/set DATABRICKS_CLIENT_ID to its application ID/);
  });

  it("passes every other error through untouched, and never puts the JWT in the hint", () => {
    const other = new BrokerError("ERR_EXCHANGE_UNAVAILABLE", "down", { step: "exchange", retryable: true });
    const plain = new Error("boom");
    expect(explainExchangeFailure(other, jwtOf(CLAIMS), TARGET)).toBe(other);
    expect(explainExchangeFailure(plain, jwtOf(CLAIMS), TARGET)).toBe(plain);
    expect(explainExchangeFailure(grant("x"), "not-a-jwt", TARGET)).toMatchObject({ hint: "generic" });
    const jwt = jwtOf(CLAIMS);
    expect((explainExchangeFailure(grant("x"), jwt, TARGET) as BrokerError).summary()).not.toContain(jwt.split(".")[1]);
  });
});

describe("the checklist", () => {
  it("a failed refresh: earlier steps passed, the failed one carries the fix, later ones did not run", () => {
    const e = new BrokerError("ERR_STS_ACCESS_DENIED", "STS denied", { step: "sts", retryable: false, upstreamCode: "AccessDenied", hint: "allow it" });
    expect(diagnoseRefreshFailure(e, "default").map(formatCheck)).toEqual([
      "✓ configuration [default]: configuration read and checked",
      "✗ sts [default]: AccessDenied: STS denied\n    fix: allow it",
      "- exchange [default]: not reached",
      "- token [default]: not reached",
    ]);
  });

  it("formatCheck redacts a JWT an upstream message echoed", () => {
    const jwt = jwtOf(CLAIMS);
    const line = formatCheck({ step: "exchange", status: "fail", detail: `bad token ${jwt}`, fix: `not ${jwt}` });
    expect(line).not.toContain(jwt);
    expect(line).toContain("[redacted-jwt]");
  });
});

describe("set-up helpers", () => {
  it("shellQuote survives a single quote and leaves plain words alone", () => {
    expect(shellQuote("arn:aws:iam::1:role/x")).toBe("arn:aws:iam::1:role/x");
    expect(shellQuote(`it's {"a":1}`)).toBe(`'it'\\''s {"a":1}'`);
  });

  it("the Databricks command takes the numeric ID as its argument and the policy as --json oidc_policy", () => {
    expect(federationPolicyCommand({ issuer: "https://i", audience: "aud'x", subject: "arn:aws:iam::1:role/r", servicePrincipalId: "42" })).toBe(
      `databricks account service-principal-federation-policy create 42 --json '{"oidc_policy":{"issuer":"https://i","audiences":["aud'\\''x"],"subject":"arn:aws:iam::1:role/r"}}'`,
    );
    expect(putRolePolicyCommand("arn:aws:iam::1:role/path/name", {})).toBe("aws iam put-role-policy --role-name name --policy-name databricks-token-broker --policy-document '{}'");
  });

  it.each([
    ["arn:aws:sts::123456789012:assumed-role/fn-role/my-fn", "arn:aws:iam::123456789012:role/fn-role"],
    ["arn:aws-cn:sts::123456789012:assumed-role/r/s", "arn:aws-cn:iam::123456789012:role/r"],
    ["arn:aws:iam::123456789012:role/path/r", "arn:aws:iam::123456789012:role/path/r"],
    ["arn:aws:iam::123456789012:user/alice", undefined],
    ["arn:aws:iam::123456789012:root", undefined],
  ])("roleFromCaller(%s) → %s", (arn, role) => {
    expect(roleFromCaller(arn).roleArn).toBe(role);
  });
});

describe("inside the extension", () => {
  const closers: (() => Promise<void>)[] = [];
  afterEach(async () => {
    await Promise.all(closers.splice(0).map((c) => c()));
  });

  async function broker() {
    const sts: StsStandIn = await startSts({ region: "us-east-1" });
    const db: DatabricksStandIn = await startDatabricks({ policy: { issuer: sts.issuer, audiences: ["databricks"], subject: "arn:aws:iam::123456789012:role/other", servicePrincipalId: CLIENT_ID } });
    closers.push(() => sts.close(), () => db.close());
    const parsed = parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: "1", DATABRICKS_HOST: db.url, DATABRICKS_CLIENT_ID: CLIENT_ID, AWS_REGION: "us-east-1", DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: "2" });
    if (!parsed.enabled) throw new Error("config");
    const client = new STSClient({ region: "us-east-1", endpoint: sts.url, maxAttempts: 1, credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret", sessionToken: "session" } });
    const lines: Record<string, unknown>[] = [];
    const raw: string[] = [];
    const log = createLogger({ level: "debug", write: (l) => (raw.push(l), lines.push(JSON.parse(l) as Record<string, unknown>)) });
    // The stand-ins keep real time; the broker's clock jumps past its 30 s cooldown between tries.
    const clock = { offset: 0 };
    const now = () => Date.now() + clock.offset;
    const cache = createTokenCache(parsed.config, { getWebIdentityToken: webIdentityTokenPort(client), fetch: (u, i) => fetch(u, i), log, now, onRefresh: logRefreshes(log) });
    return { sts, db, cache, config: parsed.config, lines, raw, clock, now, log };
  }

  it("a failed refresh logs the doctor's checklist once per failure code, and every failure its one line", async () => {
    const b = await broker();
    const attempt = async () => {
      await expect(b.cache.get("default", { waitMs: 2_000 })).rejects.toBeInstanceOf(BrokerError);
      b.clock.offset += 31_000;
    };
    await attempt();
    await attempt();
    const diagnoses = () => b.lines.filter((l) => l.msg === "diagnosis");
    expect(b.lines.filter((l) => l.msg === "token refresh failed")).toHaveLength(2);
    expect(diagnoses()).toHaveLength(1);
    const [d] = diagnoses();
    expect(d).toMatchObject({ level: "error", target: "default", doctor: DOCTOR_COMMAND, summary: expect.stringMatching(/^exchange invalid_grant: /) });
    expect(d!.checks).toEqual([
      "✓ configuration [default]: configuration read and checked",
      "✓ sts [default]: STS GetWebIdentityToken signed a JWT",
      expect.stringMatching(/^✗ exchange \[default\]: invalid_grant: Databricks .* answered 400: The token subject \(sub\)/),
      `    fix: the token's subject does not match: the policy's subject must be the execution role's ARN, "${b.sts.settings.roleArn}"; set it on the federation policy of service principal ${CLIENT_ID} (DATABRICKS_CLIENT_ID)`,
      "- token [default]: not reached",
    ]);

    // Another failure code is diagnosed afresh.
    b.db.settings.policy = { ...b.db.settings.policy, subject: b.sts.settings.roleArn, servicePrincipalId: "someone-else" };
    await attempt();
    expect(diagnoses()).toHaveLength(2);
    expect(diagnoses()[1]!.summary).toMatch(/^exchange invalid_client: .*Hint: DATABRICKS_CLIENT_ID/);

    // No log line carries a JWT or a token.
    const secrets = [...b.sts.issued.map((i) => i.token), ...b.db.issuedTokens.map((t) => t.token)];
    for (const l of b.raw) {
      expect(l).not.toMatch(/eyJ[A-Za-z0-9_-]{2,}\.eyJ/);
      for (const s of secrets) expect(l.includes(s)).toBe(false);
    }
  });

  it("the 503 message carries the diagnosis' one-line summary: the failed step, the code and the policy value to set", async () => {
    const b = await broker();
    const app = buildApp({ config: b.config, cache: b.cache, sessionToken: "the-session-token-of-the-function", log: b.log, now: b.now });
    closers.push(() => app.close());
    const r = await app.inject({ url: "/token", headers: { "x-aws-session-token": "the-session-token-of-the-function" } });
    expect(r.statusCode).toBe(503);
    const diagnosis = b.lines.find((l) => l.msg === "diagnosis");
    const body = r.json<{ error: string; message: string }>();
    expect(body.message).toContain(diagnosis!.summary as string);
    expect(body.message).toMatch(/exchange invalid_grant: .* Hint: the token's subject does not match: the policy's subject must be the execution role's ARN, "arn:aws:iam::123456789012:role\/broker-test"/);
    expect(body.message).not.toMatch(/eyJ[A-Za-z0-9_-]{2,}\.eyJ/);
  });
});
