/**
 * Both with-Node.js flavours end to end (issue 13): the zips of `npm run build`, unpacked as
 * Lambda unpacks a layer, their extension run on the layer's own Node.js under the Lambda
 * emulator against the STS and Databricks stand-ins: a cold start that serves a token, a
 * refresh on INVOKE inside the refresh window, a freeze, and SHUTDOWN with exit 0.
 *
 * x86_64 runs natively. arm64 runs under qemu user-mode emulation: Debian's qemu-user-static,
 * with libc6-arm64-cross and libstdc++6-arm64-cross for the C and C++ runtimes the arm64 node
 * links against (sysroot /usr/aarch64-linux-gnu). `.ci/run` installs them; where they are
 * missing this test fails, saying that the arm64 run did not happen.
 */
import { execFile } from "node:child_process";
import { access, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, it, type ExpectStatic } from "vitest";
import { buildAll } from "../layer/build.mjs";
import { NODE_VERSION } from "../layer/node-runtime.mjs";
import { unzip } from "./unzip.js";
import { logs, startStack } from "./stack.js";

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const QEMU = "qemu-aarch64-static";
const SYSROOT = "/usr/aarch64-linux-gnu";
const QEMU_PACKAGES = ["qemu-user-static", "libc6-arm64-cross", "libstdc++6-arm64-cross"];
/** What the arm64 run needs here, and the Debian package that provides each. */
const QEMU_NEEDS = [
  { what: `${QEMU} on PATH`, pkg: "qemu-user-static", present: () => run(QEMU, ["--version"]).then(() => true, () => false) },
  { what: `${SYSROOT}/lib/ld-linux-aarch64.so.1`, pkg: "libc6-arm64-cross", present: () => exists(`${SYSROOT}/lib/ld-linux-aarch64.so.1`) },
  { what: `${SYSROOT}/lib/libstdc++.so.6`, pkg: "libstdc++6-arm64-cross", present: () => exists(`${SYSROOT}/lib/libstdc++.so.6`) },
];
const exists = (path: string) => access(path).then(() => true, () => false);

/** Short lifetimes, as in test/e2e.test.ts: 10 s tokens, refreshed from 6 s left, never served under 2 s. */
const SHORT = {
  db: { expiresIn: 10 },
  env: { DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: "6", DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "2" },
};


let dist: string;
const tmp: string[] = [];

beforeAll(async () => {
  dist = await mkdtemp(join(tmpdir(), "dtb-flavours-"));
  tmp.push(dist);
  await buildAll({ dist });
}, 240_000);

afterAll(async () => {
  await Promise.all(tmp.map((d) => rm(d, { recursive: true, force: true })));
});

async function unpacked(name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dtb-opt-"));
  tmp.push(dir);
  await unzip(join(dist, name), dir);
  return dir;
}

/** The real launcher's `exec` line, which the arm64 run's copy puts under qemu. */
const EXEC_LINE = 'exec "$node" "$bundle/index.cjs"';

/**
 * A copy of the unpacked layer's launcher whose exec runs the node it picked under qemu: the
 * host cannot exec an aarch64 binary without binfmt_misc. Everything else (the node it picks,
 * the NODE_* variables it unsets, HOME) is the real launcher's, with the architecture marker
 * pointed at the sysroot's interpreter. Written beside `extensions/`
 * under the extension's name, so its `..` is the layer root and Lambda's name is unchanged.
 */
async function qemuLauncher(dir: string, expect: ExpectStatic): Promise<string> {
  // The launcher refuses the flavour where its ELF interpreter is missing, as on an x86_64 Lambda
  // (test/layer.test.ts); under qemu -L the interpreter is the sysroot's.
  const marker = join(dir, "databricks-token-broker", "node", "arch");
  expect(await readFile(marker, "utf8")).toBe("arm64 aarch64 /lib/ld-linux-aarch64.so.1\n");
  await writeFile(marker, `arm64 aarch64 ${SYSROOT}/lib/ld-linux-aarch64.so.1\n`);
  const real = await readFile(join(dir, "extensions", "databricks-token-broker"), "utf8");
  const lines = real.trimEnd().split("\n");
  expect(lines.at(-1), "the launcher's last line is the exec this test replaces").toBe(EXEC_LINE);
  lines[lines.length - 1] = `exec ${QEMU} -L ${SYSROOT} "$node" "$bundle/index.cjs"`;
  const launcher = join(dir, "extensions-qemu", "databricks-token-broker");
  await mkdir(dirname(launcher));
  await writeFile(launcher, `${lines.join("\n")}\n`, { mode: 0o755 });
  return launcher;
}

/**
 * Whether every thread of `pid` is stopped ("T" in /proc/<pid>/task/<tid>/stat), as the
 * emulator's freeze (SIGSTOP) leaves it; a stop takes a moment to reach every thread.
 */
async function stopped(pid: number, withinMs = 2_000): Promise<boolean> {
  const state = async (tid: string) => {
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8").catch(() => "(gone) X");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
  };
  const until = Date.now() + withinMs;
  for (;;) {
    const states = await Promise.all((await readdir(`/proc/${pid}/task`)).map(state));
    if (states.every((st) => st === "T" || st === "X")) return true;
    if (Date.now() > until) return false;
    await sleep(20);
  }
}

interface TokenBody {
  access_token: string;
}
const body = async (r: Promise<Response>) => {
  const res = await r;
  return { status: res.status, ...((await res.json()) as TokenBody) };
};

/**
 * Runs the unpacked layer at `dir` through `launcher` under the emulator, with no Node.js on
 * PATH (as on a Python or Java runtime): cold start, a token, a freeze, a refresh on INVOKE,
 * the refreshed token, SHUTDOWN. `exe` is what the extension's process must be executing.
 */
async function lifecycle(expect: ExpectStatic, dir: string, launcher: string, exe: string, slow: boolean) {
  const s = await startStack({
    command: launcher,
    db: SHORT.db,
    // The function's NODE_OPTIONS, which the launcher unsets: the extension would fail to start on it.
    env: { PATH: "/usr/bin:/bin", NODE_OPTIONS: "--require=/nonexistent/function-code.js", ...SHORT.env },
    // Emulated arm64 starts and runs several times slower than native; Lambda's 10 s init and 3 s function limits stay for x86_64.
    lambda: { cwd: "/", ...(slow ? { initTimeoutMs: 40_000, functionTimeoutMs: 15_000 } : {}) },
  });
  try {
    // Cold start: registered on the layer's own Node.js, the prefetched token served in the first invoke.
    expect(await s.lambda.init).toMatchObject({ ok: true });
    const registered = logs(s.lambda).find((l) => l.msg === "registered");
    expect(registered?.node, "the extension runs on the layer's Node.js").toBe(`v${NODE_VERSION}`);
    const pid = s.lambda.pid!;
    expect(await readlink(`/proc/${pid}/exe`)).toBe(exe);
    // The process is `exe` running the layer's node on the bundle (the node as qemu's argument, for arm64).
    const args = (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0").filter(Boolean).map((a) => resolve(a));
    expect(args).toContain(join(dir, "databricks-token-broker", "node", "bin", "node"));
    expect(args).toContain(join(dir, "databricks-token-broker", "index.cjs"));
    const first = (await s.lambda.invoke(() => body(s.token()))).result!;
    expect(first.status).toBe(200);
    expect(s.db.exchanges.filter((e) => e.ok)).toHaveLength(1);
    expect(first.access_token).toBe(s.db.issuedTokens[0]!.token);

    // Frozen after the invoke (SIGSTOP), until the token is inside its refresh window.
    expect(s.lambda.frozen).toBe(true);
    expect(await stopped(pid)).toBe(true);
    await sleep(s.db.issuedTokens[0]!.issuedAt + 5_000 - Date.now()); // about 5 s left: inside the 6 s window, above the 2 s minimum
    expect(await stopped(pid)).toBe(true);
    expect(s.db.exchanges).toHaveLength(1);

    // The INVOKE thaws it; the invoke completes only once the refresh has finished.
    const refresh = await s.lambda.invoke();
    expect(refresh.timedOut).toBe(false);
    expect(s.db.exchanges.filter((e) => e.ok)).toHaveLength(2);
    const second = (await s.lambda.invoke(() => body(s.token()))).result!;
    expect(second.status).toBe(200);
    expect(second.access_token).not.toBe(first.access_token);
    expect(second.access_token).toBe(s.db.issuedTokens[1]!.token);

    const shutdown = await s.lambda.shutdown();
    expect(shutdown).toMatchObject({ code: 0, signal: null, killed: false });
    expect(s.lambda.stderr).toEqual([]);
  } finally {
    await s.close();
  }
}

describe.concurrent("the with-Node.js flavours, end to end (issue 13)", () => {
  it("layer-with-node-x86_64.zip: cold start, refresh on INVOKE, freeze, shutdown", async ({ expect }) => {
    const dir = await unpacked("layer-with-node-x86_64.zip");
    const node = join(dir, "databricks-token-broker", "node", "bin", "node");
    expect((await run(node, ["-p", "process.arch"])).stdout.trim()).toBe("x64");
    await lifecycle(expect, dir, join(dir, "extensions", "databricks-token-broker"), node, false);
  }, 60_000);

  it("layer-with-node-arm64.zip under qemu-aarch64: cold start, refresh on INVOKE, freeze, shutdown", async ({ expect }) => {
    const missing = [];
    for (const need of QEMU_NEEDS) if (!(await need.present())) missing.push(need);
    if (missing.length > 0) {
      throw new Error(
        `The arm64 flavour's end-to-end run did not happen: missing ${missing.map((m) => `${m.what} (Debian's ${m.pkg})`).join(", ")}. ` +
          `Install ${QEMU_PACKAGES.join(", ")} (\`apt-get install -y --no-install-recommends ${QEMU_PACKAGES.join(" ")}\`), as .ci/run does.`,
      );
    }
    const dir = await unpacked("layer-with-node-arm64.zip");
    const node = join(dir, "databricks-token-broker", "node", "bin", "node");
    expect((await run(QEMU, ["-L", SYSROOT, node, "-p", "process.arch"])).stdout.trim()).toBe("arm64");
    const qemu = await realpath((await run("sh", ["-c", `command -v ${QEMU}`])).stdout.trim());
    await lifecycle(expect, dir, await qemuLauncher(dir, expect), qemu, true);
  }, 120_000);
});
