/**
 * The STS and IAM stand-ins check SigV4 as AWS does, and the real clients prove it both ways:
 * what @aws-sdk/client-sts, @aws-sdk/client-iam and boto3 sign passes; a wrong secret, an unknown
 * key, a wrong session token, a stale or future time, or one changed byte fails with the code
 * AWS answers, as each client reports it.
 */
import http from "node:http";
import { GetOutboundWebIdentityFederationInfoCommand, IAMClient } from "@aws-sdk/client-iam";
import { GetWebIdentityTokenCommand, STSClient, type STSClientConfig } from "@aws-sdk/client-sts";
import { createRemoteJWKSet, jwtVerify } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { BOTO3_CLIENT, runPython } from "./boto3.js";
import { CLI_TEST_CREDENTIALS, EXAMPLE_CREDENTIALS } from "./standins/credentials.js";
import { startIam, type IamStandIn } from "./standins/iam.js";
import { amzDate, MAX_SKEW_MS } from "./standins/sigv4.js";
import { DEFAULT_ROLE_ARN, startSts, type StsStandIn } from "./standins/sts.js";

let sts: StsStandIn;
let iam: IamStandIn;
/** The stand-ins' clock runs this far from the test's. */
let serverSkewMs = 0;

beforeAll(async () => {
  sts = await startSts({ now: () => Date.now() + serverSkewMs });
  iam = await startIam({ sts });
});
afterAll(async () => {
  await Promise.all([sts?.close(), iam?.close()]);
});
beforeEach(() => {
  serverSkewMs = 0;
  sts.clearFault();
});

const input = { Audience: ["databricks"], SigningAlgorithm: "RS256", DurationSeconds: 300 };
const stsClient = (config: Partial<STSClientConfig> = {}) => new STSClient({ region: "us-east-1", endpoint: sts.url, credentials: EXAMPLE_CREDENTIALS, maxAttempts: 1, ...config });
const refusal = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as Error & { $metadata: { httpStatusCode?: number }; Code?: string });

interface Captured {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string;
}

/** A request exactly as the real client signed it, taken after its signing step. */
async function signedByTheSdk(): Promise<Captured> {
  const client = stsClient();
  let captured: Captured | undefined;
  client.middlewareStack.addRelativeTo(
    ((next: (args: unknown) => Promise<unknown>) => async (args: unknown) => {
      const r = (args as { request: { method: string; path: string; headers: Record<string, string>; body: string } }).request;
      captured = { method: r.method, path: r.path, headers: { ...r.headers }, body: r.body };
      return next(args);
    }) as never,
    { relation: "after", toMiddleware: "httpSigningMiddleware", name: "capture" } as never,
  );
  await client.send(new GetWebIdentityTokenCommand(input));
  client.destroy();
  return captured!;
}

/** Sends exactly these headers (no fetch: it would add or drop some). */
function send(r: Captured): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${sts.url}${r.path}`, { method: r.method, headers: r.headers }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end(r.body);
  });
}
const codeOf = (xml: string) => /<Code>([^<]*)<\/Code>/.exec(xml)?.[1];

describe("the AWS SDK for JavaScript's signatures", () => {
  it("pass; the same request again passes too, as at AWS within the 15 minutes", async () => {
    const r = await signedByTheSdk();
    expect(r.headers.authorization).toMatch(/^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/us-east-1\/sts\/aws4_request, SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*, Signature=[0-9a-f]{64}$/);
    const again = await send(r);
    expect(again.status).toBe(200);
    expect(again.body).toMatch(/<WebIdentityToken>eyJ/);
  });

  it.each([
    ["the body", (r: Captured) => ({ ...r, body: r.body.replace("DurationSeconds=300", "DurationSeconds=900") })],
    ["a signed header", (r: Captured) => ({ ...r, headers: { ...r.headers, "x-amz-user-agent": "someone-else" } })],
    ["the path", (r: Captured) => ({ ...r, path: "/?Action=GetWebIdentityToken" })],
    ["the signature", (r: Captured) => ({ ...r, headers: { ...r.headers, authorization: r.headers.authorization!.replace(/Signature=(.)/, (_m, c: string) => `Signature=${c === "0" ? "1" : "0"}`) } })],
  ])("fail once %s is changed: SignatureDoesNotMatch", async (_what, change) => {
    const before = sts.issued.length;
    const res = await send(change(await signedByTheSdk()));
    expect(res.status).toBe(403);
    expect(codeOf(res.body)).toBe("SignatureDoesNotMatch");
    expect(res.body).toMatch(/The request signature we calculated does not match the signature you provided/);
    expect(sts.issued.length).toBe(before + 1); // only the capture's own call was signed for
  });

  it("still pass with an unsigned header added (AWS looks at the signed ones only)", async () => {
    const r = await signedByTheSdk();
    expect((await send({ ...r, headers: { ...r.headers, "x-unsigned": "anything" } })).status).toBe(200);
  });

  it("a forged request dated 1970 gets no JWT: Signature expired", async () => {
    const before = sts.issued.length;
    const res = await send({
      method: "POST",
      path: "/",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        "x-amz-date": "19700101T000000Z",
        "x-amz-security-token": EXAMPLE_CREDENTIALS.sessionToken!,
        authorization: `AWS4-HMAC-SHA256 Credential=${EXAMPLE_CREDENTIALS.accessKeyId}/19700101/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=${"0".repeat(64)}`,
      },
      body: "Action=GetWebIdentityToken&Version=2011-06-15&Audience.member.1=databricks&SigningAlgorithm=RS256",
    });
    expect(res.status).toBe(403);
    expect(codeOf(res.body)).toBe("SignatureDoesNotMatch");
    expect(res.body).toMatch(/Signature expired: 19700101T000000Z is now earlier than \d{8}T\d{6}Z \(\d{8}T\d{6}Z - 15 min\.\)/);
    expect(sts.issued.length).toBe(before);
  });

  it.each([
    ["no Authorization header", {}, 403, "MissingAuthenticationToken"],
    ["an Authorization header without a signature", { authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/sts/aws4_request" }, 400, "IncompleteSignature"],
    ["another algorithm", { authorization: "AWS AKIDEXAMPLE:c2lnbmF0dXJl" }, 400, "IncompleteSignature"],
    ["no date", { authorization: `AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=${"0".repeat(64)}` }, 400, "IncompleteSignature"],
  ])("refuse %s", async (_what, headers: Record<string, string>, status, code) => {
    const res = await send({ method: "POST", path: "/", headers: { "content-type": "application/x-www-form-urlencoded", ...headers }, body: "Action=GetWebIdentityToken&Version=2011-06-15" });
    expect([res.status, codeOf(res.body)]).toEqual([status, code]);
  });

  it("refuse a scope for another day than the request's, or a signature that leaves Host out", async () => {
    const now = amzDate(Date.now());
    const base = { "content-type": "application/x-www-form-urlencoded", "x-amz-date": now, "x-amz-security-token": "session" };
    const otherDay = await send({ method: "POST", path: "/", headers: { ...base, authorization: `AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/19991231/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=${"0".repeat(64)}` }, body: "" });
    expect(otherDay.body).toMatch(/Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '19991231' != '\d{8}'/);
    const noHost = await send({ method: "POST", path: "/", headers: { ...base, authorization: `AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/${now.slice(0, 8)}/us-east-1/sts/aws4_request, SignedHeaders=x-amz-date, Signature=${"0".repeat(64)}` }, body: "" });
    expect(noHost.body).toMatch(/'Host' or ':authority' must be a 'SignedHeader'/);
  });
});

describe("credentials the account does not know", () => {
  it.each([
    ["a wrong secret key", "SignatureDoesNotMatch", { ...EXAMPLE_CREDENTIALS, secretAccessKey: "not-the-secret" }, /does not match the signature you provided/],
    ["an unknown access key", "InvalidClientTokenId", { ...EXAMPLE_CREDENTIALS, accessKeyId: "AKIDUNKNOWN" }, /^The security token included in the request is invalid\.$/],
    ["another session token", "InvalidClientTokenId", { ...EXAMPLE_CREDENTIALS, sessionToken: "someone-elses-session" }, /security token included in the request is invalid/],
    ["no session token for a temporary key", "InvalidClientTokenId", { accessKeyId: EXAMPLE_CREDENTIALS.accessKeyId, secretAccessKey: EXAMPLE_CREDENTIALS.secretAccessKey }, /security token included in the request is invalid/],
  ])("%s → 403 %s, as the JavaScript SDK reports it", async (_what, code, credentials, message) => {
    const err = await refusal(stsClient({ credentials }).send(new GetWebIdentityTokenCommand(input)));
    expect(err?.name).toBe(code);
    expect(err?.Code).toBe(code);
    expect(err?.message).toMatch(message);
    expect(err?.$metadata.httpStatusCode).toBe(403);
    expect(sts.calls.at(-1)).toMatchObject({ status: 403, error: code, accessKeyId: credentials.accessKeyId });
  });

  it("keys are settings: a key the account drops is refused from the next request on", async () => {
    const saved = sts.settings.credentials;
    try {
      sts.settings.credentials = [CLI_TEST_CREDENTIALS];
      expect((await refusal(stsClient().send(new GetWebIdentityTokenCommand(input))))?.name).toBe("InvalidClientTokenId");
      expect((await stsClient({ credentials: CLI_TEST_CREDENTIALS }).send(new GetWebIdentityTokenCommand(input))).WebIdentityToken).toBeTruthy();
    } finally {
      sts.settings.credentials = saved;
    }
  });

  it("the IAM stand-in checks the same keys (linked to STS, one account)", async () => {
    const client = (secretAccessKey: string) => new IAMClient({ region: "us-east-1", endpoint: iam.url, credentials: { ...EXAMPLE_CREDENTIALS, secretAccessKey }, maxAttempts: 1 });
    await expect(client(EXAMPLE_CREDENTIALS.secretAccessKey).send(new GetOutboundWebIdentityFederationInfoCommand({}))).resolves.toMatchObject({ IssuerIdentifier: sts.issuer });
    const err = await refusal(client("wrong").send(new GetOutboundWebIdentityFederationInfoCommand({})));
    expect([err?.name, err?.$metadata.httpStatusCode]).toEqual(["SignatureDoesNotMatch", 403]);
    expect(iam.calls.at(-1)).toMatchObject({ status: 403, error: "SignatureDoesNotMatch", service: "iam" });
  });
});

describe("the request time against the service's clock", () => {
  it.each([
    ["16 minutes slow", -16 * 60_000, /^Signature expired: \d{8}T\d{6}Z is now earlier than \d{8}T\d{6}Z \(\d{8}T\d{6}Z - 15 min\.\)$/],
    ["16 minutes fast", 16 * 60_000, /^Signature not yet current: \d{8}T\d{6}Z is still later than \d{8}T\d{6}Z \(\d{8}T\d{6}Z \+ 15 min\.\)$/],
  ])("a client clock %s → SignatureDoesNotMatch", async (_what, offset, message) => {
    const err = await refusal(stsClient({ systemClockOffset: offset }).send(new GetWebIdentityTokenCommand(input)));
    expect([err?.name, err?.$metadata.httpStatusCode]).toEqual(["SignatureDoesNotMatch", 403]);
    expect(err?.message).toMatch(message);
  });

  it("14 minutes off either way still passes", async () => {
    for (const offset of [-14 * 60_000, 14 * 60_000]) {
      expect((await stsClient({ systemClockOffset: offset }).send(new GetWebIdentityTokenCommand(input))).WebIdentityToken).toBeTruthy();
    }
    expect(MAX_SKEW_MS).toBe(15 * 60_000);
  });

  it("after a Signature expired, the SDK sets its clock from the answer's Date header and its next call passes", async () => {
    serverSkewMs = 20 * 60_000;
    const client = stsClient();
    const err = await refusal(client.send(new GetWebIdentityTokenCommand(input)));
    expect(err?.message).toMatch(/^Signature expired/);
    // The stand-in's Date header is its own clock, as AWS's is.
    expect(Math.abs((await client.config.systemClockOffset) - serverSkewMs)).toBeLessThan(5_000);
    expect((await client.send(new GetWebIdentityTokenCommand(input))).WebIdentityToken).toBeTruthy();
  });
});

describe("boto3 1.44.8", () => {
  it("speaks the Query protocol to STS and IAM, the one the stand-ins speak", async () => {
    // botocore's own model of each service, as loaded by the boto3 under test. Were botocore to
    // move a service to JSON or smithy-rpc-v2-cbor, the stand-in would have to follow.
    const out = await runPython<{ version: string; models: Record<string, { protocols: string[]; ops: boolean }> }>(`${BOTO3_CLIENT}
import botocore, botocore.session
s = botocore.session.get_session()
models = {}
for name, op in [("sts", "GetWebIdentityToken"), ("iam", "GetOutboundWebIdentityFederationInfo")]:
    m = s.get_service_model(name)
    models[name] = {"protocols": m.metadata.get("protocols", [m.protocol]), "ops": op in m.operation_names}
print(json.dumps({"version": botocore.__version__, "models": models}))`);
    expect(out).toEqual({ version: "1.44.8", models: { sts: { protocols: ["query"], ops: true }, iam: { protocols: ["query"], ops: true } } });
  });

  it("sts.get_web_identity_token as the Databricks documentation calls it gets a JWT the issuer's JWKS verifies", async () => {
    const out = await runPython<{ jwt: string; expiration: string }>(
      `${BOTO3_CLIENT}
sts = client("sts", sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
r = sts.get_web_identity_token(Audience=["databricks"], SigningAlgorithm="RS256", DurationSeconds=300)
print(json.dumps({"jwt": r["WebIdentityToken"], "expiration": r["Expiration"].isoformat()}))`,
      [sts.url, EXAMPLE_CREDENTIALS.accessKeyId, EXAMPLE_CREDENTIALS.secretAccessKey, EXAMPLE_CREDENTIALS.sessionToken!],
    );
    const { payload } = await jwtVerify(out.jwt, createRemoteJWKSet(new URL(`${sts.issuer}/.well-known/jwks.json`)), { issuer: sts.issuer, audience: "databricks", algorithms: ["RS256"] });
    expect(payload.sub).toBe(DEFAULT_ROLE_ARN);
    expect(payload.exp! - payload.iat!).toBe(300);
    expect(Date.parse(out.expiration)).toBe(payload.exp! * 1000);
    // The form boto3 sent: the same parameters as the JavaScript SDK's, spaces as '+'.
    expect(sts.calls.at(-1)).toMatchObject({ action: "GetWebIdentityToken", audience: ["databricks"], signingAlgorithm: "RS256", durationSeconds: 300, ok: true, accessKeyId: EXAMPLE_CREDENTIALS.accessKeyId });
  });

  it("a wrong secret fails as boto3 reports it: ClientError SignatureDoesNotMatch, 403; an unknown key InvalidClientTokenId", async () => {
    const out = await runPython<Record<string, { type: string; code: string; message: string; status: number; str: string }>>(
      `${BOTO3_CLIENT}
out = {}
for name, key, secret in [("secret", sys.argv[2], "not-the-secret"), ("key", "AKIDUNKNOWN", sys.argv[3])]:
    try:
        client("sts", sys.argv[1], key, secret, sys.argv[4]).get_web_identity_token(Audience=["databricks"], SigningAlgorithm="RS256", DurationSeconds=300)
    except ClientError as e:
        out[name] = error(e)
print(json.dumps(out))`,
      [sts.url, EXAMPLE_CREDENTIALS.accessKeyId, EXAMPLE_CREDENTIALS.secretAccessKey, EXAMPLE_CREDENTIALS.sessionToken!],
    );
    expect(out.secret).toMatchObject({ type: "ClientError", code: "SignatureDoesNotMatch", status: 403 });
    expect(out.secret!.str).toMatch(/^An error occurred \(SignatureDoesNotMatch\) when calling the GetWebIdentityToken operation( \(reached max retries: 0\))?: The request signature we calculated does not match/);
    expect(out.key).toMatchObject({ type: "ClientError", code: "InvalidClientTokenId", status: 403, message: "The security token included in the request is invalid." });
  });

  it("iam.get_outbound_web_identity_federation_info answers IssuerIdentifier (the documentation's IssuerUrl is no field of it)", async () => {
    const out = await runPython<Record<string, unknown>>(
      `${BOTO3_CLIENT}
info = client("iam", sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]).get_outbound_web_identity_federation_info()
info.pop("ResponseMetadata")
print(json.dumps(info))`,
      [iam.url, EXAMPLE_CREDENTIALS.accessKeyId, EXAMPLE_CREDENTIALS.secretAccessKey, EXAMPLE_CREDENTIALS.sessionToken!],
    );
    expect(out).toEqual({ IssuerIdentifier: sts.issuer, JwtVendingEnabled: true });
    // shared/reference/databricks-wif-aws-iam.txt prints info['IssuerUrl']: a KeyError with this botocore.
    expect(out).not.toHaveProperty("IssuerUrl");
  });
});
