// The Go SDK (databricks-sdk-go, a small program in test/peers/go) and the Databricks CLI, both
// built from their Go modules by test/peers/install.mjs, run from inside a Python function under
// AWS's Lambda emulator with the function's own environment, configured as the README says.
// Both validate the configuration the same way (the CLI embeds the Go SDK).
import { describe, expect, it } from "vitest";
import { CLI, GO_PEER } from "./paths.mjs";
import { pythonFunction } from "./layers.js";
import { type PeerStack } from "./peer-stack.js";

const start = pythonFunction();

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}
const exec = async (s: PeerStack, argv: string[]) => (await s.call({ use: "exec", argv })) as unknown as Ran;

/** The Go program prints one JSON line: {"ok": true, "user_name"} or {"ok": false, "error"}. */
async function goSdk(s: PeerStack): Promise<{ ok: boolean; user_name?: string; error?: string }> {
  const ran = await exec(s, [GO_PEER]);
  try {
    return JSON.parse(ran.stdout) as { ok: boolean };
  } catch {
    throw new Error(`the Go peer printed no JSON (exit ${ran.code}): ${ran.stdout}\n${ran.stderr}`);
  }
}

const cliMe = (s: PeerStack) => exec(s, [CLI, "current-user", "me", "--output", "json"]);

const TWO_METHODS = /validate: more than one authorization method configured: metadata-service and oauth/;

describe("Go SDK and Databricks CLI from a function under AWS's Lambda emulator", () => {
  it("as the README says (service principal, DATABRICKS_AUTH_TYPE=metadata-service), both authenticate through /metadata", async () => {
    const s = await start();
    expect(await goSdk(s)).toEqual({ ok: true, user_name: s.user });
    const cli = await cliMe(s);
    expect(cli.code, cli.stderr).toBe(0);
    expect(JSON.parse(cli.stdout)).toMatchObject({ userName: s.user });
    // Every API call carried a token the stand-in issued; one exchange served them all.
    expect(s.db.apiCalls.filter((c) => c.path.endsWith("/scim/v2/Me")).map((c) => c.status)).toEqual([200, 200]);
    expect(s.db.exchanges.filter((e) => e.ok)).toHaveLength(1);
  });

  it("without DATABRICKS_AUTH_TYPE both refuse to start beside DATABRICKS_CLIENT_ID, as the broker's init warning says", async () => {
    const s = await start({ authType: false });
    const go = await goSdk(s);
    expect(go.ok).toBe(false);
    expect(go.error).toMatch(TWO_METHODS);
    const cli = await cliMe(s);
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toMatch(TWO_METHODS);
    const warning = s.rie.extensionLogs().find((l) => l.level === "warn" && l.variable === "DATABRICKS_AUTH_TYPE");
    expect(JSON.stringify(warning)).toMatch(/more than one authorization method configured: metadata-service and oauth/);
  });

  it("an account-wide policy (no DATABRICKS_CLIENT_ID) authenticates both", async () => {
    const s = await start({ servicePrincipal: false });
    expect(await goSdk(s)).toEqual({ ok: true, user_name: s.user });
    const cli = await cliMe(s);
    expect(cli.code, cli.stderr).toBe(0);
    expect(JSON.parse(cli.stdout)).toMatchObject({ userName: s.user });
  });

  it("when the broker has no token, DATABRICKS_AUTH_TYPE lets the broker's reason through; without it the SDK hides it", async () => {
    const s = await start({ servicePrincipal: false, sts: { enabled: false } });
    const go = await goSdk(s);
    expect(go.ok).toBe(false);
    // The 503's body, word for word: the failed step, its code and the hint.
    expect(go.error).toMatch(/ERR_STS_FEDERATION_DISABLED/);
    const cli = await cliMe(s);
    expect(cli.code).not.toBe(0);
    expect(cli.stderr).toMatch(/metadata-service auth: .*ERR_STS_FEDERATION_DISABLED/);
  });

  it("without DATABRICKS_AUTH_TYPE the same failure reads 'cannot configure default credentials'", async () => {
    const s = await start({ servicePrincipal: false, authType: false, sts: { enabled: false } });
    const go = await goSdk(s);
    expect(go.ok).toBe(false);
    expect(go.error).toMatch(/cannot configure default credentials/);
    expect(go.error).not.toMatch(/ERR_STS/);
  });
});
