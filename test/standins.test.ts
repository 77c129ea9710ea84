// Proves the loopback stand-ins behave like the services they imitate, using the real clients
// (@aws-sdk/client-sts, @databricks/sdk-experimental) and jose as an independent verifier.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  GetWebIdentityTokenCommand,
  STSClient,
  type GetWebIdentityTokenCommandInput,
  type STSClientConfig,
} from "@aws-sdk/client-sts";
import { WorkspaceClient } from "@databricks/sdk-experimental";
import { SignJWT, createRemoteJWKSet, decodeJwt, decodeProtectedHeader, generateKeyPair, jwtVerify } from "jose";
import { DEFAULT_ROLE_ARN, STS_CLAIMS_NAMESPACE, startSts, type StsSettings, type StsStandIn } from "./standins/sts.js";
import {
  JWT_TOKEN_TYPE,
  TOKEN_EXCHANGE_GRANT,
  startDatabricks,
  type DatabricksSettings,
  type DatabricksStandIn,
} from "./standins/databricks.js";
import { EXAMPLE_CREDENTIALS } from "./standins/credentials.js";

const credentials = EXAMPLE_CREDENTIALS;
const SP_ID = "a1b2c3d4-0000-4000-8000-00000000beef";
const FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:broker-test";

let sts: StsStandIn;
let db: DatabricksStandIn;
let dbClockSkewMs = 0;
let stsDefaults: StsSettings;
let dbDefaults: DatabricksSettings;

const stsClient = (config: Partial<STSClientConfig> = {}) =>
  new STSClient({ region: "us-east-1", endpoint: sts.url, credentials, maxAttempts: 1, ...config });

const getToken = (input: Partial<GetWebIdentityTokenCommandInput> = {}, client = stsClient()) =>
  client.send(
    new GetWebIdentityTokenCommand({ Audience: ["databricks"], SigningAlgorithm: "RS256", DurationSeconds: 300, ...input }),
  );

async function rejection(promise: Promise<unknown>): Promise<Error & Record<string, any>> {
  try {
    await promise;
  } catch (err) {
    return err as Error & Record<string, any>;
  }
  throw new Error("expected a rejection");
}

const exchange = (fields: Record<string, string | undefined>, endpoint = db.tokenEndpoint) =>
  fetch(endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams(Object.entries(fields).filter((e): e is [string, string] => e[1] !== undefined)),
  });

const goodForm = (jwt: string): Record<string, string | undefined> => ({
  grant_type: TOKEN_EXCHANGE_GRANT,
  subject_token: jwt,
  subject_token_type: JWT_TOKEN_TYPE,
  scope: "all-apis",
  client_id: SP_ID,
});

async function jwtFromSts(input: Partial<GetWebIdentityTokenCommandInput> = {}): Promise<string> {
  return (await getToken(input)).WebIdentityToken!;
}

async function expectOAuthError(res: Response, status: number, error: string, mentions?: RegExp) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toMatch(/^application\/json/);
  const body = (await res.json()) as { error: string; error_description: string };
  expect(body.error).toBe(error);
  if (mentions) expect(body.error_description).toMatch(mentions);
  expect(body).not.toHaveProperty("access_token");
}

const me = (token?: string) =>
  fetch(`${db.url}/api/2.0/preview/scim/v2/Me`, { headers: token ? { authorization: `Bearer ${token}` } : {} });

beforeAll(async () => {
  sts = await startSts({ lambdaFunctionArn: FUNCTION_ARN });
  db = await startDatabricks({
    policy: { issuer: sts.issuer, audiences: ["databricks"], subject: DEFAULT_ROLE_ARN, servicePrincipalId: SP_ID },
    now: () => Date.now() + dbClockSkewMs,
  });
  stsDefaults = structuredClone(sts.settings);
  dbDefaults = structuredClone(db.settings);
});

afterAll(async () => {
  await Promise.all([sts?.close(), db?.close()]);
});

beforeEach(() => {
  sts.clearFault();
  db.clearFault();
  dbClockSkewMs = 0;
  for (const key of Object.keys(sts.settings) as (keyof StsSettings)[]) delete sts.settings[key];
  Object.assign(sts.settings, structuredClone(stsDefaults));
  Object.assign(db.settings, structuredClone(dbDefaults));
});

describe("STS stand-in", () => {
  it.each(["RS256", "ES384"] as const)("issues a %s JWT that verifies through OIDC discovery", async (alg) => {
    const before = Math.floor(Date.now() / 1000);
    const out = await getToken({ SigningAlgorithm: alg, DurationSeconds: 900 });
    const jwt = out.WebIdentityToken!;

    const header = decodeProtectedHeader(jwt);
    expect(header).toMatchObject({ alg, typ: "JWT" });
    expect(header.kid).toEqual(expect.any(String));

    const discovery = (await (await fetch(`${sts.issuer}/.well-known/openid-configuration`)).json()) as Record<string, any>;
    expect(discovery.issuer).toBe(sts.issuer);
    expect(discovery.id_token_signing_alg_values_supported).toEqual(["RS256", "ES384"]);
    const { payload } = await jwtVerify(jwt, createRemoteJWKSet(new URL(discovery.jwks_uri)), {
      issuer: sts.issuer,
      audience: "databricks",
      algorithms: [alg],
    });

    expect(payload.iss).toBe(sts.url);
    expect(payload.sub).toBe(DEFAULT_ROLE_ARN);
    expect(payload.aud).toBe("databricks");
    expect(payload.iat).toBeGreaterThanOrEqual(before);
    expect(payload.exp! - payload.iat!).toBe(900);
    expect(payload.jti).toMatch(/^[0-9a-f-]{36}$/);
    expect(payload[STS_CLAIMS_NAMESPACE]).toEqual({
      aws_account: "123456789012",
      source_region: "us-east-1",
      principal_id: DEFAULT_ROLE_ARN,
      lambda_source_function_arn: FUNCTION_ARN,
    });
    expect(out.Expiration).toEqual(new Date(payload.exp! * 1000));
    expect(out.$metadata.httpStatusCode).toBe(200);
    expect(out.$metadata.requestId).toMatch(/^[0-9a-f-]{36}$/);

    expect(sts.calls.at(-1)).toMatchObject({
      audience: ["databricks"],
      signingAlgorithm: alg,
      durationSeconds: 900,
      accessKeyId: EXAMPLE_CREDENTIALS.accessKeyId,
      ok: true,
      status: 200,
    });
    expect(sts.issued.at(-1)).toMatchObject({ token: jwt, alg, kid: header.kid });
  });

  it("decodes what the real client sends: several audiences, tags, default duration", async () => {
    const out = await getToken({ Audience: ["a", "b c&d"], DurationSeconds: undefined, Tags: [{ Key: "team", Value: "data" }] });
    const claims = decodeJwt(out.WebIdentityToken!);
    expect(claims.aud).toEqual(["a", "b c&d"]);
    expect(claims.exp! - claims.iat!).toBe(300);
    expect((claims[STS_CLAIMS_NAMESPACE] as Record<string, unknown>).request_tags).toEqual({ team: "data" });
    expect(sts.calls.at(-1)).toMatchObject({
      action: "GetWebIdentityToken",
      audience: ["a", "b c&d"],
      durationSeconds: undefined,
      tags: { team: "data" },
    });
  });

  it("is reached through AWS_ENDPOINT_URL_STS", async () => {
    const saved = process.env.AWS_ENDPOINT_URL_STS;
    process.env.AWS_ENDPOINT_URL_STS = sts.url;
    try {
      const client = new STSClient({ region: "us-east-1", credentials, maxAttempts: 1 });
      expect((await getToken({}, client)).WebIdentityToken).toBeTruthy();
    } finally {
      if (saved === undefined) delete process.env.AWS_ENDPOINT_URL_STS;
      else process.env.AWS_ENDPOINT_URL_STS = saved;
    }
  });

  it.each([
    { code: "AccessDenied", status: 403, name: "AccessDenied", fault: "client" },
    { code: "OutboundWebIdentityFederationDisabledException", status: 403, name: "OutboundWebIdentityFederationDisabledException", fault: "client" },
    { code: "SessionDurationEscalationException", status: 403, name: "SessionDurationEscalationException", fault: "client" },
    { code: "JWTPayloadSizeExceededException", status: 400, name: "JWTPayloadSizeExceededException", fault: "client" },
    // Without the suffix the client finds no modelled error and keeps the wire code as the name.
    { code: "OutboundWebIdentityFederationDisabled", status: 403, name: "OutboundWebIdentityFederationDisabled", fault: "client" },
    { code: "Throttling", status: 400, name: "Throttling", fault: "client" },
    { code: "InternalFailure", status: 500, name: "InternalFailure", fault: "server" },
    { code: "ServiceUnavailable", status: 503, name: "ServiceUnavailable", fault: "server" },
  ])("injected $code ($status) reaches the client as $name", async ({ code, status, name, fault }) => {
    sts.setFault({ kind: "error", code, status, message: `because ${code}` }, 1);
    const err = await rejection(getToken());
    expect(err.name).toBe(name);
    expect(err.message).toBe(`because ${code}`);
    expect(err.$fault).toBe(fault);
    expect(err.$metadata.httpStatusCode).toBe(status);
    expect(err.Error).toMatchObject({ Code: code, Type: status >= 500 ? "Receiver" : "Sender" });
    expect(sts.calls.at(-1)).toMatchObject({ ok: false, status, error: code, fault: "error" });
    expect((await getToken()).WebIdentityToken).toBeTruthy();
  });

  it("answers OutboundWebIdentityFederationDisabledException when the account has not enabled it", async () => {
    sts.settings.enabled = false;
    const err = await rejection(getToken());
    expect(err.name).toBe("OutboundWebIdentityFederationDisabledException");
    expect(err.$metadata.httpStatusCode).toBe(403);
  });

  it("answers SessionDurationEscalationException for a token that would outlive the session", async () => {
    sts.settings.sessionExpiresAt = Date.now() + 120_000;
    expect((await getToken({ DurationSeconds: 60 })).WebIdentityToken).toBeTruthy();
    const err = await rejection(getToken({ DurationSeconds: 300 }));
    expect(err.name).toBe("SessionDurationEscalationException");
    expect(err.$metadata.httpStatusCode).toBe(403);
  });

  it("answers AccessDenied where the imitated IAM policy conditions do not allow the call", async () => {
    sts.settings.allow = { audiences: ["databricks"], maxDurationSeconds: 300 };
    expect((await getToken()).WebIdentityToken).toBeTruthy();
    for (const input of [{ Audience: ["other"] }, { DurationSeconds: 301 }]) {
      const err = await rejection(getToken(input));
      expect(err.name).toBe("AccessDenied");
      expect(err.message).toMatch(/not authorized to perform: sts:GetWebIdentityToken/);
      expect(err.$metadata.httpStatusCode).toBe(403);
    }
  });

  it.each([
    { input: { DurationSeconds: 59 }, mentions: /durationSeconds.*greater than or equal to 60/ },
    { input: { DurationSeconds: 3601 }, mentions: /durationSeconds.*less than or equal to 3600/ },
    { input: { SigningAlgorithm: "RS512x" }, mentions: /signingAlgorithm.*length equal to 5/ },
    { input: { Audience: [] }, mentions: /audience.*greater than or equal to 1/ },
    { input: { Audience: Array.from({ length: 11 }, (_, i) => `a${i}`) }, mentions: /audience.*less than or equal to 10/ },
  ])("validates input like the real API: $mentions", async ({ input, mentions }) => {
    const err = await rejection(getToken(input));
    expect(err.name).toBe("ValidationError");
    expect(err.$metadata.httpStatusCode).toBe(400);
    expect(err.message).toMatch(/^1 validation error detected: /);
    expect(err.message).toMatch(mentions);
  });

  it("refuses a signing algorithm other than RS256 and ES384", async () => {
    const err = await rejection(getToken({ SigningAlgorithm: "HS256" }));
    expect(err.name).toBe("ValidationError");
    expect(err.message).toMatch(/HS256 is not supported/);
  });

  it("requires a SigV4 signature scoped to sts in its region", async () => {
    const res = await fetch(sts.url, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "Action=GetWebIdentityToken&Version=2011-06-15&Audience.member.1=x&SigningAlgorithm=RS256",
    });
    expect(res.status).toBe(403);
    expect(await res.text()).toMatch(/<Code>MissingAuthenticationToken<\/Code>/);

    const wrongService = await fetch(sts.url, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-amz-date": "20260101T000000Z",
        authorization: `AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=${"0".repeat(64)}`,
      },
      body: "Action=GetWebIdentityToken&Version=2011-06-15&Audience.member.1=x&SigningAlgorithm=RS256",
    });
    expect(wrongService.status).toBe(403);
    expect(await wrongService.text()).toMatch(/SignatureDoesNotMatch.*correct service: 'sts'/);

    const err = await rejection(getToken({}, stsClient({ region: "eu-west-1" })));
    expect(err.name).toBe("SignatureDoesNotMatch");
    expect(err.message).toMatch(/valid region/);
  });

  it("lets the client retry transient errors for the next N requests only", async () => {
    sts.setFault({ kind: "error", code: "InternalFailure", status: 500 }, 2);
    const before = sts.calls.length;
    const out = await getToken({}, stsClient({ maxAttempts: 3 }));
    expect(out.WebIdentityToken).toBeTruthy();
    expect(sts.calls.slice(before).map((c) => c.status)).toEqual([500, 500, 200]);
  });

  it("delays, drops mid-answer, answers raw bodies and resets", async () => {
    sts.setFault({ kind: "delay", ms: 300 }, 1);
    const t0 = Date.now();
    await getToken();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);

    sts.setFault({ kind: "drop" }, 1);
    const dropped = await rejection(getToken());
    // Headers arrived, the body did not: the client fails while reading it.
    expect(dropped.code ?? dropped.message).toMatch(/ECONNRESET|aborted|premature/i);
    expect(sts.calls.at(-1)).toMatchObject({ fault: "drop", ok: false });

    sts.setFault({ kind: "raw", status: 502, body: "<html><body><h1>502 Bad Gateway</h1></body></html>" }, 1);
    const html = await rejection(getToken());
    expect(html.$metadata?.httpStatusCode ?? html.$response?.statusCode).toBe(502);

    sts.setFault({ kind: "reset" }, 1);
    const reset = await rejection(getToken());
    expect(reset.message).toMatch(/socket hang up|ECONNRESET/);

    expect((await getToken()).WebIdentityToken).toBeTruthy();
  });

  it("refuses connections, then comes back on the same port", async () => {
    const client = stsClient();
    await getToken({}, client);
    await sts.refuseConnections();
    try {
      // A pooled socket may still be reset under load; a new connection must be refused.
      expect((await rejection(getToken({}, client))).code).toMatch(/ECONNREFUSED|ECONNRESET/);
      expect((await rejection(getToken())).code).toBe("ECONNREFUSED");
    } finally {
      await sts.acceptConnections();
    }
    expect((await getToken({}, client)).WebIdentityToken).toBeTruthy();
  });
});

describe("Databricks stand-in", () => {
  it("exchanges a good STS JWT for a token that the SCIM /Me route and the Databricks SDK accept", async () => {
    const jwt = await jwtFromSts();
    const res = await exchange(goodForm(jwt));
    expect(res.status).toBe(200);
    expect(res.headers.get("cache-control")).toBe("no-store");
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toEqual({ access_token: expect.stringMatching(/^[0-9a-f]{96}$/), scope: "all-apis", token_type: "Bearer", expires_in: expect.any(Number) });
    const token = body.access_token as string;
    expect(db.exchanges.at(-1)).toMatchObject({ ok: true, status: 200, clientId: SP_ID, scope: "all-apis", accessToken: token });
    expect(db.exchanges.at(-1)!.claims?.sub).toBe(DEFAULT_ROLE_ARN);
    const issued = db.issuedTokens.at(-1)!;
    expect(issued.token).toBe(token);
    // The JWT's 300 s bound the token's life, as at Databricks.
    expect(issued.expiresAt - issued.issuedAt).toBe((body.expires_in as number) * 1000);
    expect(body.expires_in).toBeLessThanOrEqual(300);

    const user = await me(token);
    expect(user.status).toBe(200);
    expect(await user.json()).toMatchObject({ userName: SP_ID, active: true });

    const sdk = new WorkspaceClient({ host: db.url, token, authType: "pat" });
    expect(await sdk.currentUser.me()).toMatchObject({ userName: SP_ID, displayName: "databricks-token-broker" });
  });

  it("serves the account token endpoint, and an account-wide policy needs no client_id", async () => {
    db.settings.policy = { issuer: sts.issuer, audiences: ["databricks"], subject: DEFAULT_ROLE_ARN };
    const jwt = await jwtFromSts();
    const ok = await exchange({ ...goodForm(jwt), client_id: undefined }, db.accountTokenEndpoint());
    expect(ok.status).toBe(200);
    expect(db.exchanges.at(-1)!.accountId).toBe(db.settings.accountId);
    expect(db.issuedTokens.at(-1)!.subject).toBe(DEFAULT_ROLE_ARN);

    await expectOAuthError(await exchange({ ...goodForm(jwt), client_id: undefined }, db.accountTokenEndpoint("not-this-account")), 400, "invalid_request", /Account/);
    await expectOAuthError(await exchange(goodForm(jwt)), 401, "invalid_client");
  });

  it("defaults the accepted audience to the account ID", async () => {
    db.settings.policy = { issuer: sts.issuer, subject: DEFAULT_ROLE_ARN, servicePrincipalId: SP_ID };
    await expectOAuthError(await exchange(goodForm(await jwtFromSts())), 400, "invalid_grant", /audience/);
    expect((await exchange(goodForm(await jwtFromSts({ Audience: [db.settings.accountId] })))).status).toBe(200);
  });

  it("refuses a wrong or missing client_id for a service-principal policy", async () => {
    const jwt = await jwtFromSts();
    await expectOAuthError(await exchange({ ...goodForm(jwt), client_id: "someone-else" }), 401, "invalid_client", /someone-else/);
    await expectOAuthError(await exchange({ ...goodForm(jwt), client_id: undefined }), 401, "invalid_client", /client_id is required/);
  });

  it("refuses a JWT from an unknown issuer without fetching its discovery document", async () => {
    const stranger = await startSts();
    try {
      const client = new STSClient({ region: "us-east-1", endpoint: stranger.url, credentials, maxAttempts: 1 });
      const jwt = (await getToken({}, client)).WebIdentityToken!;
      await expectOAuthError(await exchange(goodForm(jwt)), 400, "invalid_grant", /issuer/);
      expect(stranger.wellKnownRequests).toEqual([]);
    } finally {
      await stranger.close();
    }
  });

  it("refuses a wrong audience or subject, saying which", async () => {
    await expectOAuthError(await exchange(goodForm(await jwtFromSts({ Audience: ["not-databricks"] }))), 400, "invalid_grant", /audience \(aud\) \[not-databricks\]/);
    sts.settings.roleArn = "arn:aws:iam::123456789012:role/someone-else";
    await expectOAuthError(await exchange(goodForm(await jwtFromSts())), 400, "invalid_grant", /subject \(sub\) 'arn:aws:iam::123456789012:role\/someone-else'/);
  });

  it("refuses an expired JWT", async () => {
    const jwt = await jwtFromSts({ DurationSeconds: 60 });
    dbClockSkewMs = 61_000;
    await expectOAuthError(await exchange(goodForm(jwt)), 400, "invalid_grant", /expired/);
  });

  it("refuses a genuinely signed JWT that lacks exp", async () => {
    const jwt = await sts.mintJwt({ iss: sts.issuer, sub: DEFAULT_ROLE_ARN, aud: "databricks", iat: Math.floor(Date.now() / 1000) });
    await expectOAuthError(await exchange(goodForm(jwt)), 400, "invalid_grant", /'exp'/);
  });

  it("refuses a bad signature, and a key the issuer never published", async () => {
    const jwt = await jwtFromSts();
    const [h, p, s] = jwt.split(".");
    const flipped = `${h}.${p}.${s!.startsWith("A") ? "B" : "A"}${s!.slice(1)}`;
    await expectOAuthError(await exchange(goodForm(flipped)), 400, "invalid_grant", /signature/);

    const claims = decodeJwt(jwt);
    const { privateKey } = await generateKeyPair("RS256");
    const forged = await new SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: decodeProtectedHeader(jwt).kid! }).sign(privateKey);
    await expectOAuthError(await exchange(goodForm(forged)), 400, "invalid_grant", /signature/);
    const unknownKid = await new SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: "nope" }).sign(privateKey);
    await expectOAuthError(await exchange(goodForm(unknownKid)), 400, "invalid_grant", /kid/);
    await expectOAuthError(await exchange(goodForm("not-a-jwt")), 400, "invalid_grant", /well-formed/);
  });

  it("accepts only the documented algorithms unless told otherwise", async () => {
    const es384 = await jwtFromSts({ SigningAlgorithm: "ES384" });
    await expectOAuthError(await exchange(goodForm(es384)), 400, "invalid_grant", /ES384/);
    db.settings.algorithms = ["RS256", "ES256", "ES384"];
    expect((await exchange(goodForm(es384))).status).toBe(200);
  });

  it("refuses malformed requests with the OAuth error codes", async () => {
    const jwt = await jwtFromSts();
    await expectOAuthError(await exchange({ ...goodForm(jwt), grant_type: undefined }), 400, "invalid_request", /grant_type/);
    await expectOAuthError(await exchange({ ...goodForm(jwt), grant_type: "client_credentials" }), 400, "unsupported_grant_type");
    await expectOAuthError(await exchange({ ...goodForm(jwt), subject_token: undefined }), 400, "invalid_request", /subject_token/);
    await expectOAuthError(await exchange({ ...goodForm(jwt), subject_token_type: undefined }), 400, "invalid_request", /subject_token_type/);
    await expectOAuthError(
      await exchange({ ...goodForm(jwt), subject_token_type: "urn:ietf:params:oauth:token-type:id_token" }),
      400,
      "invalid_request",
      /subject_token_type/,
    );
    await expectOAuthError(await exchange({ ...goodForm(jwt), scope: undefined }), 400, "invalid_request", /scope/);
    await expectOAuthError(await exchange({ ...goodForm(jwt), scope: "all-apis nonsense" }), 400, "invalid_scope", /nonsense/);
    const json = await fetch(db.tokenEndpoint, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(goodForm(jwt)) });
    await expectOAuthError(json, 400, "invalid_request", /Content-Type/);
    expect(db.exchanges.slice(-8).every((e) => !e.ok)).toBe(true);
  });

  it("caches the issuer's discovery document and JWKS", async () => {
    db.resetJwksCache();
    const before = sts.wellKnownRequests.length;
    for (let i = 0; i < 3; i++) expect((await exchange(goodForm(await jwtFromSts()))).status).toBe(200);
    expect(sts.wellKnownRequests.slice(before).map((r) => r.path)).toEqual(["/.well-known/openid-configuration", "/.well-known/jwks.json"]);
  });

  it("picks up rotated issuer keys once the JWKS cooldown allows", async () => {
    db.settings.jwksCooldownMs = 0;
    db.resetJwksCache();
    expect((await exchange(goodForm(await jwtFromSts()))).status).toBe(200);
    await sts.rotateKeys();
    expect((await exchange(goodForm(await jwtFromSts()))).status).toBe(200);
  });

  it("refuses exchanges when the issuer's keys cannot be fetched", async () => {
    db.resetJwksCache();
    const jwt = await jwtFromSts();
    await sts.refuseConnections();
    try {
      await expectOAuthError(await exchange(goodForm(jwt)), 400, "invalid_grant", /discovery/);
    } finally {
      await sts.acceptConnections();
    }
  });

  it("derives the token's lifetime from the JWT's by default, never longer than its remaining life", async () => {
    const lifeOf = async (jwt: string) => ((await (await exchange(goodForm(jwt))).json()) as { expires_in: number }).expires_in;
    const left = await lifeOf(await jwtFromSts({ DurationSeconds: 300 }));
    expect(left).toBeGreaterThan(290);
    expect(left).toBeLessThanOrEqual(300);
    // A JWT already half gone gives a token with half the life left.
    const older = await jwtFromSts({ DurationSeconds: 120 });
    dbClockSkewMs = 60_000;
    const fromOlder = await lifeOf(older);
    expect(fromOlder).toBeGreaterThan(50);
    expect(fromOlder).toBeLessThanOrEqual(60);
    dbClockSkewMs = 0;
    // expiresIn caps it: a JWT of an hour gives no more than it.
    db.settings.expiresIn = 120;
    expect(await lifeOf(await jwtFromSts({ DurationSeconds: 3600 }))).toBe(120);
  });

  it("gives fixed lifetimes only when told to", async () => {
    db.settings.lifetime = "fixed";
    db.settings.expiresIn = 3600;
    expect(((await (await exchange(goodForm(await jwtFromSts({ DurationSeconds: 60 })))).json()) as { expires_in: number }).expires_in).toBe(3600);
  });

  it("refuses a JWT exchanged before (invalid_grant), unless told to allow replays", async () => {
    const jwt = await jwtFromSts();
    expect((await exchange(goodForm(jwt))).status).toBe(200);
    expect(db.wasExchanged(jwt)).toBe(true);
    await expectOAuthError(await exchange(goodForm(jwt)), 400, "invalid_grant", /already been used/);
    // Even for another scope or endpoint: it is the JWT that is used up.
    await expectOAuthError(await exchange({ ...goodForm(jwt), scope: "sql" }), 400, "invalid_grant", /already been used/);
    db.settings.replay = "allow";
    expect((await exchange(goodForm(jwt))).status).toBe(200);
  });

  it("uses a JWT up only when it exchanges it: a refused request leaves it good", async () => {
    // A guess about Databricks (which documents neither): a JWT that was never accepted cannot have been replayed.
    const jwt = await jwtFromSts();
    await expectOAuthError(await exchange({ ...goodForm(jwt), client_id: "someone-else" }), 401, "invalid_client");
    expect(db.wasExchanged(jwt)).toBe(false);
    expect((await exchange(goodForm(jwt))).status).toBe(200);
  });

  it("SCIM /Me refuses a missing, unknown or expired token like Databricks", async () => {
    const missing = await me();
    expect(missing.status).toBe(401);
    expect(await missing.json()).toEqual({ error_code: "401", message: expect.stringMatching(/Credential was not sent/) });

    const unknown = await me("dapi0123456789abcdef");
    expect(unknown.status).toBe(403);
    expect(await unknown.json()).toEqual({ error_code: "403", message: "Invalid access token." });

    db.settings.expiresIn = 60;
    const token = ((await (await exchange(goodForm(await jwtFromSts()))).json()) as { access_token: string }).access_token;
    expect((await me(token)).status).toBe(200);
    dbClockSkewMs = 60_000;
    expect((await me(token)).status).toBe(403);
    expect(db.apiCalls.at(-1)).toMatchObject({ status: 403, tokenHash: expect.stringMatching(/^[0-9a-f]{8}$/) });

    const sdkErr = await rejection(new WorkspaceClient({ host: db.url, token, authType: "pat" }).currentUser.me());
    expect(sdkErr.message).toBe("Invalid access token.");
  });

  it("injects OAuth errors for the next N exchanges, then answers normally", async () => {
    const jwt = await jwtFromSts();
    db.setFault({ kind: "error", status: 503, error: "temporarily_unavailable", description: "try later" }, 2);
    await expectOAuthError(await exchange(goodForm(jwt)), 503, "temporarily_unavailable", /try later/);
    await expectOAuthError(await exchange(goodForm(jwt)), 503, "temporarily_unavailable");
    expect((await exchange(goodForm(jwt))).status).toBe(200);
    expect(db.exchanges.slice(-3).map((e) => e.fault)).toEqual(["error", "error", undefined]);
  });

  it("answers raw bodies, drops mid-answer, delays, patches fields and refuses connections", async () => {
    const jwt = await jwtFromSts();
    db.setFault({ kind: "raw", status: 502, body: "<html><h1>502 Bad Gateway</h1></html>" }, 1);
    const html = await exchange(goodForm(jwt));
    expect(html.status).toBe(502);
    expect(html.headers.get("content-type")).toBe("text/html");

    db.setFault({ kind: "raw", status: 200, contentType: "application/json", body: '{"token_type":"Bearer","expires_in":3600}' }, 1);
    expect(await (await exchange(goodForm(jwt))).json()).not.toHaveProperty("access_token");
    // Neither answer came from Databricks: the JWT is still good.
    expect(db.wasExchanged(jwt)).toBe(false);

    db.setFault({ kind: "drop", afterBytes: 20 }, 1);
    const dropped = await exchange(goodForm(jwt));
    expect(dropped.status).toBe(200);
    await expect(dropped.text()).rejects.toThrow();
    // A cut answer was a done exchange: the token exists, the JWT is used up.
    expect(db.exchanges.at(-1)).toMatchObject({ ok: true, fault: "drop" });
    await expectOAuthError(await exchange(goodForm(jwt)), 400, "invalid_grant", /already been used/);

    db.setFault({ kind: "delay", ms: 300 }, 1);
    const t0 = Date.now();
    expect((await exchange(goodForm(await jwtFromSts()))).status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);

    db.setFault({ kind: "patch", fields: { expires_in: "3600", scope: undefined } }, 1);
    const patched = (await (await exchange(goodForm(await jwtFromSts()))).json()) as Record<string, unknown>;
    expect(patched.expires_in).toBe("3600");
    expect(patched).not.toHaveProperty("scope");
    expect((await me(patched.access_token as string)).status).toBe(200);

    const fresh = await jwtFromSts();
    await db.refuseConnections();
    await expect(exchange(goodForm(fresh))).rejects.toThrow();
    await db.acceptConnections();
    expect((await exchange(goodForm(fresh))).status).toBe(200);
  });
});
