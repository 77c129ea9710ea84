// A Node.js function (test/peers/functions/node, an ES module bundled with esbuild as users
// bundle for Lambda) run by the real runtime interface client aws-lambda-ric under AWS's Lambda
// emulator, with the built layer at /opt, asking the broker as the README says: GET /token,
// and the real @databricks/sdk-experimental through DATABRICKS_METADATA_SERVICE_URL with no
// code. Versions: aws-lambda-ric NODE_RIC_VERSION (test/peers/paths.mjs), the SDK from
// package.json.
//
// What RIE does not emulate that matters here (see rie.ts): no freeze between invokes, so the
// broker's refresh-on-INVOKE after a thaw is not exercised (the lifecycle tests do that); init
// is lazy, so the first invoke carries the init and the broker's prefetch; processes run as
// RIE's own user and see RIE's whole environment (PATH included: the JS SDK's default chain
// would run a `databricks` CLI found there). This machine runs Node.js 20, while Lambda's
// nodejs runtimes are 22 and newer, and aws-lambda-ric 4 and the SDK declare node >=22.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { CLIENT_ID } from "../stack.js";
import { bundleNodeFunction, type NodeFunction } from "./node-function.js";
import { type PeerStack, type PeerStackOptions, startPeerStack } from "./peer-stack.js";

let fn: NodeFunction;
beforeAll(async () => {
  fn = await bundleNodeFunction();
});
afterAll(() => fn?.remove());

let stack: PeerStack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

const start = async (o: Partial<PeerStackOptions> = {}) => (stack = await startPeerStack({ task: fn.task, bootstrap: fn.bootstrap, ...o }));

const authTypeWarning = (s: PeerStack) => s.rie.extensionLogs().find((l) => l.level === "warn" && /DATABRICKS_AUTH_TYPE/.test(JSON.stringify(l)));

/** What @databricks/sdk-experimental's ConfigError appends: the config it resolved and the variables it read. */
const sdkContext = (s: PeerStack, authType: boolean) =>
  `Config: host=${new URL(s.db.url).origin}, metadata_service_url=***, client_id=${CLIENT_ID}${authType ? ", auth_type=metadata-service" : ""}. ` +
  `Env: DATABRICKS_HOST, DATABRICKS_METADATA_SERVICE_URL, DATABRICKS_CLIENT_ID${authType ? ", DATABRICKS_AUTH_TYPE" : ""}`;

describe("Node.js function (aws-lambda-ric) under AWS's Lambda emulator", () => {
  it("gets a token from GET /token and calls Databricks with it; the SDK authenticates through /metadata", async () => {
    const s = await start();
    expect(await s.call({ use: "token" })).toMatchObject({ ok: true, user_name: s.user });
    expect(await s.call({ use: "sdk" })).toMatchObject({ ok: true, user_name: s.user });
    // One token served both: the SDK's metadata requests came from the cache.
    expect(s.db.exchanges.filter((e) => e.ok)).toHaveLength(1);
    expect(authTypeWarning(s)).toBeUndefined();
  });

  it("an account-wide policy (no DATABRICKS_CLIENT_ID) authenticates GET /token and the SDK", async () => {
    const s = await start({ servicePrincipal: false });
    expect(await s.call({ use: "sdk" })).toMatchObject({ ok: true, user_name: s.user });
    expect(await s.call({ use: "token" })).toMatchObject({ ok: true, user_name: s.user });
    expect(s.db.exchanges.find((e) => e.ok)?.clientId).toBeUndefined();
  });

  it("without DATABRICKS_AUTH_TYPE the JS SDK still authenticates beside DATABRICKS_CLIENT_ID (unlike Python and Go); the broker warned at init", async () => {
    // The JS SDK tags DATABRICKS_METADATA_SERVICE_URL with no auth method, so DATABRICKS_CLIENT_ID
    // alone is one method ("oauth") and its validation passes; its default chain then skips PAT,
    // basic and M2M (no secret), finds no `databricks` CLI, and reaches metadata-service.
    const s = await start({ authType: false });
    expect(await s.call({ use: "sdk" })).toMatchObject({ ok: true, user_name: s.user });
    const warning = authTypeWarning(s);
    expect(warning, "the broker's init warning").toBeDefined();
    expect(JSON.stringify(warning)).toMatch(/more than one authorization method configured/);
  });

  it("when the broker cannot get a token, the SDK says only 'invalid token'; GET /token carries the broker's reason", async () => {
    const s = await start({ sts: { enabled: false } });
    const started = Date.now();
    const viaSdk = await s.call({ use: "sdk" });
    // The SDK reads the 503's JSON, finds no access_token, and drops the broker's message.
    expect(viaSdk).toEqual({ ok: false, error: `Error: default auth: token parse: invalid token. ${sdkContext(s, true)}` });
    expect(Date.now() - started).toBeLessThan(10_000);
    const viaToken = await s.call({ use: "token" });
    expect(viaToken.ok).toBe(false);
    expect(viaToken.error).toMatch(/^Error: token broker answered 503: no valid token for target default: sts OutboundWebIdentityFederationDisabled: .*Hint: enable it once per account/);
    // The broker's log names the failure for both asks.
    expect(s.rie.extensionLogs().find((l) => l.msg === "token refresh failed")).toMatchObject({ step: "sts", code: "ERR_STS_FEDERATION_DISABLED" });
    const refused = s.rie.extensionLogs().filter((l) => l.msg === "token request answered 503");
    expect(refused.map((l) => l.path)).toEqual(["/metadata", "/token"]);
  });

  it("without DATABRICKS_AUTH_TYPE a failing broker reads the same to the JS SDK (no 'cannot configure default credentials', as the Go SDK says)", async () => {
    const s = await start({ authType: false, sts: { enabled: false } });
    expect(await s.call({ use: "sdk" })).toEqual({ ok: false, error: `Error: default auth: token parse: invalid token. ${sdkContext(s, false)}` });
  });
});
