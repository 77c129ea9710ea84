/**
 * The layer's /opt/bin command under the real Python runtime (issue 14): a Python function run
 * by awslambdaric under AWS's Lambda emulator (test/peers), the zip of `npm run build` unpacked
 * on /opt, shells out to `databricks-token-broker doctor --json` by name, as the README tells a
 * user to from inside a function. The machine's Node.js is hidden, as a Python runtime has none.
 * Also the other side: the layer without Node.js attached to the same function, whose extension
 * then says which layer to attach instead, in the function's log, and exits, which fails the
 * init as `Extension.Crash`.
 */
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { buildAll } from "../layer/build.mjs";
import { PYTHON } from "./peers/paths.mjs";
import { FUNCTIONS, type PeerStack, type PeerStackOptions, startPeerStack } from "./peers/peer-stack.js";
import { GET_INFO, startIam, type IamStandIn } from "./standins/iam.js";
import { unzip } from "./unzip.js";

/**
 * The PATH Lambda gives a Python function (the runtime's /var/lang/bin, absent here, first):
 * "Defined runtime environment variables", Lambda developer guide. /opt/bin is the layer's bin/.
 */
const LAMBDA_PATH = "/usr/local/bin:/usr/bin/:/bin:/opt/bin";

let dist: string;
const tmp: string[] = [];
let stack: PeerStack | undefined;
let iam: IamStandIn | undefined;

beforeAll(async () => {
  dist = await mkdtemp(join(tmpdir(), "dtb-opt-bin-"));
  tmp.push(dist);
  await buildAll({ dist });
}, 240_000);

afterEach(async () => {
  await stack?.close();
  await iam?.close();
  stack = iam = undefined;
});

afterAll(async () => {
  await Promise.all(tmp.map((d) => rm(d, { recursive: true, force: true })));
});

/** The zip unpacked as Lambda unpacks a layer, into a directory RIE binds on /opt. */
async function layer(name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dtb-opt-"));
  tmp.push(dir);
  await chmod(dir, 0o755);
  await unzip(join(dist, name), dir);
  return dir;
}

/** The Python function (test/peers/functions/python) with `layerDir` on /opt and no Node.js of the machine's. */
async function python(layerDir: string, o: Partial<PeerStackOptions> = {}): Promise<PeerStack> {
  return (stack = await startPeerStack({
    task: join(FUNCTIONS, "python"),
    bootstrap: [PYTHON, "-m", "awslambdaric", "app.handler"],
    layer: layerDir,
    rie: { hide: [process.execPath] },
    ...o,
    env: { PATH: LAMBDA_PATH, ...o.env },
  }));
}

interface Exec {
  code: number;
  stdout: string;
  stderr: string;
}

describe("databricks-token-broker on /opt/bin, from a Python function under AWS's Lambda emulator (issue 14)", () => {
  it("layer-with-node-x86_64.zip: the handler runs `databricks-token-broker doctor --json` by name, and the chain passes", async () => {
    // IAM as an execution role usually sees it: it may not read the account's federation state.
    iam = await startIam({ denied: [GET_INFO] });
    const s = await python(await layer(`layer-with-node-${process.arch === "arm64" ? "arm64" : "x86_64"}.zip`), { env: { AWS_ENDPOINT_URL_IAM: iam.url } });
    const r = (await s.call({ use: "exec", argv: ["databricks-token-broker", "doctor", "--json"] })) as unknown as Exec;
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { ok: boolean; checks: { step: string; status: string; target?: string }[] };
    expect(report.ok).toBe(true);
    expect(Object.fromEntries(report.checks.map((c) => [`${c.step}${c.target ? `[${c.target}]` : ""}`, c.status]))).toMatchObject({
      configuration: "pass",
      federation: "skip",
      sts: "pass",
      "exchange[default]": "pass",
      "api[default]": "pass",
    });
    // No Node.js but the layer's could have run it: the machine's is hidden, and none is on Lambda's PATH.
    const which = (await s.call({ use: "exec", argv: ["sh", "-c", "command -v node || echo none"] })) as unknown as Exec;
    expect(which.stdout.trim()).toBe("none");
    // The extension beside it served the function as usual.
    expect(await s.call({ use: "token" })).toMatchObject({ ok: true, user_name: s.user });
  }, 90_000);

  it("layer.zip on a Python function: the extension says which layer to attach, in the function's log, and init fails", async () => {
    const s = await python(await layer("layer.zip"));
    const arch = process.arch === "arm64" ? "arm64" : "x86_64";
    const line = `databricks-token-broker: the extension cannot start: no Node.js. This is the layer without Node.js (layer.zip), for Node.js runtimes: it runs the runtime's /var/lang/bin/node, else node on PATH, and this function has neither (a Python, Java or OS-only runtime); attach the with-Node.js flavour for ${arch} instead: layer-with-node-${arch}.zip.`;
    const r = await s.rie.invoke({ use: "token" });
    await s.rie.waitFor(/Init failed/);
    expect(s.rie.lines).toContain(line);
    // Neither the shell's raw error nor a registered extension.
    expect(s.rie.lines.filter((l) => /node: not found|Exec format error/.test(l))).toEqual([]);
    expect(s.rie.extensionLogs().find((l) => l.msg === "registered")).toBeUndefined();
    // The emulator fails the init as Lambda does for an extension that exits before registering.
    expect(s.rie.lines.find((l) => /First fatal error/.test(l))).toMatch(/First fatal error stored in appctx: Extension\.Crash$/);
    expect(s.rie.lines.find((l) => /Init failed/.test(l))).toMatch(/\berror=exit status 127\b/);
    expect(r.status).not.toBe(200);
  }, 90_000);
});
