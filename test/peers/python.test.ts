// A Python function run by the real runtime interface client (awslambdaric) under AWS's Lambda
// emulator, with the built layer at /opt, asking the broker as the README says: GET /token, and
// the real databricks-sdk through DATABRICKS_METADATA_SERVICE_URL with no code. Versions:
// test/peers/requirements.txt.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { NODE_VERSION } from "../../layer/node-runtime.mjs";
import { ROOT } from "./paths.mjs";
import { pythonFunction } from "./layers.js";

const start = pythonFunction();

describe("Python function (awslambdaric) under AWS's Lambda emulator", () => {
  it("gets a token from GET /token and calls Databricks with it; the SDK authenticates through /metadata", async () => {
    const s = await start();
    const viaToken = await s.call({ use: "token" });
    expect(viaToken).toMatchObject({ ok: true, user_name: s.user });
    const viaSdk = await s.call({ use: "sdk" });
    expect(viaSdk).toMatchObject({ ok: true, user_name: s.user });
    // The layer's own Node.js ran the extension: the machine's is hidden from a Python runtime.
    expect(s.rie.extensionLogs().find((l) => l.msg === "registered")).toMatchObject({ node: `v${NODE_VERSION}` });
    // One token served both: the SDK's metadata request came from the cache.
    expect(s.db.exchanges.filter((e) => e.ok)).toHaveLength(1);
    expect(s.rie.extensionLogs().filter((l) => l.level === "warn" && /DATABRICKS_AUTH_TYPE/.test(JSON.stringify(l)))).toEqual([]);
  });

  it("without DATABRICKS_AUTH_TYPE, the SDK refuses to start beside DATABRICKS_CLIENT_ID, and the broker warned at init", async () => {
    const s = await start({ authType: false });
    const viaSdk = await s.call({ use: "sdk" });
    expect(viaSdk.ok).toBe(false);
    expect(viaSdk.error).toMatch(/more than one authorization method configured: metadata-service and oauth/);
    const warning = s.rie.extensionLogs().find((l) => l.level === "warn" && /DATABRICKS_AUTH_TYPE/.test(JSON.stringify(l)));
    expect(warning, "the broker's init warning").toBeDefined();
    expect(JSON.stringify(warning)).toMatch(/more than one authorization method configured/);
    // GET /token is unaffected.
    expect(await s.call({ use: "token" })).toMatchObject({ ok: true });
  });

  it("an account-wide policy (no DATABRICKS_CLIENT_ID) authenticates the SDK too", async () => {
    const s = await start({ servicePrincipal: false });
    expect(await s.call({ use: "sdk" })).toMatchObject({ ok: true, user_name: s.user });
    expect(s.db.exchanges.find((e) => e.ok)?.clientId).toBeUndefined();
  });

  it("when the broker cannot get a token, the SDK reports the broker's failure, well inside its 10 s timeout", async () => {
    const s = await start({ sts: { enabled: false } });
    const started = Date.now();
    const viaSdk = await s.call({ use: "sdk" });
    expect(viaSdk.ok).toBe(false);
    // databricks-sdk reads the 503's JSON, finds no access_token and says so.
    expect(viaSdk.error).toMatch(/Metadata Service returned empty token/);
    expect(Date.now() - started).toBeLessThan(10_000);
    const failure = s.rie.extensionLogs().find((l) => l.msg === "token refresh failed");
    expect(failure).toMatchObject({ step: "sts", code: "ERR_STS_FEDERATION_DISABLED" });
  });

  it("the example template.yaml deploys (examples/python) runs as shipped", async () => {
    const s = await start({ task: join(ROOT, "examples", "python") });
    expect(await s.call({})).toMatchObject({ plain: s.user, sdk: s.user });
  });
});
