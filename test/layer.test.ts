/**
 * The artifacts of `npm run build`, unpacked as Lambda unpacks a layer and run from there
 * under the emulator. Building the with-Node.js flavour downloads Node.js from the npm
 * registry once (cached under node_modules/.cache).
 */
import { execFile } from "node:child_process";
import { access, chmod, mkdtemp, readFile, rm, stat, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { archMarker, buildAll, MAX_UNZIPPED_BYTES, MAX_WITH_NODE_UNZIPPED_BYTES, MAX_ZIPPED_BYTES } from "../layer/build.mjs";
import { NODE_VERSION } from "../layer/node-runtime.mjs";
import { CLIENT_ID, ROOT, startStack } from "./stack.js";
import { CLI_TEST_CREDENTIALS } from "./standins/credentials.js";
import { startDatabricks } from "./standins/databricks.js";
import { startIam } from "./standins/iam.js";
import { startSts } from "./standins/sts.js";
import { type Entry, unzip } from "./unzip.js";

const run = promisify(execFile);

/** The names of an ELF64 little-endian file's sections. */
function elfSections(elf: Buffer): string[] {
  const shoff = Number(elf.readBigUInt64LE(0x28));
  const [entsize, count, strndx] = [elf.readUInt16LE(0x3a), elf.readUInt16LE(0x3c), elf.readUInt16LE(0x3e)];
  const header = (i: number) => shoff + i * entsize;
  const strtab = Number(elf.readBigUInt64LE(header(strndx) + 0x18));
  return Array.from({ length: count }, (_, i) => {
    const start = strtab + elf.readUInt32LE(header(i));
    return elf.toString("latin1", start, elf.indexOf(0, start));
  });
}

/**
 * What the with-Node.js flavour ships of Node.js: a stripped binary (no symbol table, no debug
 * info), its licence, and the architecture marker the launchers read (layer/build.mjs archMarker).
 */
function expectStrippedNode(entries: Entry[], elf: Buffer, machine: number) {
  expect(entries.filter((e) => e.name.startsWith("databricks-token-broker/node/")).map((e) => e.name).sort()).toEqual([
    "databricks-token-broker/node/LICENSE",
    "databricks-token-broker/node/arch",
    "databricks-token-broker/node/bin/node",
  ]);
  expect(elf.subarray(0, 4).toString("latin1")).toBe("\x7fELF");
  expect(elf.readUInt16LE(18)).toBe(machine);
  const sections = elfSections(elf);
  expect(sections).toContain(".dynsym"); // what native addons link against stays
  expect(sections.filter((s) => s === ".symtab" || s.startsWith(".debug_"))).toEqual([]);
}

let dist: string;
let artifacts: Awaited<ReturnType<typeof buildAll>>;
const tmp: string[] = [];

beforeAll(async () => {
  dist = await mkdtemp(join(tmpdir(), "dtb-dist-"));
  tmp.push(dist);
  artifacts = await buildAll({ dist });
}, 240_000);

afterAll(async () => {
  await Promise.all(tmp.map((d) => rm(d, { recursive: true, force: true })));
});

async function unpacked(name: string): Promise<{ dir: string; entries: Entry[] }> {
  const dir = await mkdtemp(join(tmpdir(), "dtb-opt-"));
  tmp.push(dir);
  return { dir, entries: await unzip(join(dist, name), dir) };
}

/** Runs the unpacked layer's launcher under the emulator and gets one token through it. */
async function runFrom(dir: string, path?: string) {
  const s = await startStack({ command: join(dir, "extensions", "databricks-token-broker"), lambda: { cwd: "/" }, ...(path ? { env: { PATH: path } } : {}) });
  try {
    expect(await s.lambda.init).toMatchObject({ ok: true });
    const { result } = await s.lambda.invoke(async () => (await s.token()).status);
    expect(result).toBe(200);
    const registered = s.lambda.stdout.map((l) => JSON.parse(l) as { msg: string; node?: string }).find((l) => l.msg === "registered");
    expect((await s.lambda.shutdown()).code).toBe(0);
    return registered?.node;
  } finally {
    await s.close();
  }
}

describe("npm run build", () => {
  it("writes the three zips within Lambda's size limits", () => {
    expect(artifacts.map((a) => a.name)).toEqual(["layer.zip", "layer-with-node-x86_64.zip", "layer-with-node-arm64.zip"]);
    for (const a of artifacts) {
      expect(a.zipped, a.name).toBeLessThan(MAX_ZIPPED_BYTES);
      expect(a.unzipped, a.name).toBeLessThan(MAX_UNZIPPED_BYTES);
    }
  });

  it("keeps each with-Node.js flavour within 110 MB unzipped (issue 13)", () => {
    expect(MAX_WITH_NODE_UNZIPPED_BYTES).toBe(110 * 1024 * 1024);
    const withNode = artifacts.filter((a) => a.name.startsWith("layer-with-node-"));
    expect(withNode).toHaveLength(2);
    for (const a of withNode) expect(a.unzipped, a.name).toBeLessThanOrEqual(MAX_WITH_NODE_UNZIPPED_BYTES);
  });

  it("layer.zip: the launcher is executable, the bundle self-contained, and it runs from any directory", async () => {
    const { dir, entries } = await unpacked("layer.zip");
    expect(entries.find((e) => e.name === "extensions/databricks-token-broker")?.mode).toBe(0o755);
    expect(entries.find((e) => e.name === "bin/databricks-token-broker")?.mode).toBe(0o755);
    expect(entries.some((e) => e.name === "databricks-token-broker/index.cjs")).toBe(true);
    expect(entries.some((e) => e.name === "databricks-token-broker/lazy/sts-client.mjs")).toBe(true);
    expect(entries.some((e) => e.name === "databricks-token-broker/lazy/app.mjs")).toBe(true);
    expect(entries.every((e) => !e.name.includes("node_modules"))).toBe(true);
    // Licence texts in one notices file (test/supply-chain.test.ts), not esbuild's *.LEGAL.txt.
    expect(await readFile(join(dir, "databricks-token-broker", "THIRD-PARTY-NOTICES.txt"), "utf8")).toContain("\nfastify ");
    expect(entries.filter((e) => e.name.endsWith(".LEGAL.txt"))).toEqual([]);
    // Node.js on PATH, as on an OS-only runtime that happens to have it; the bundle needs no node_modules.
    expect(await runFrom(dir, `${dirname(process.execPath)}:/usr/bin:/bin`)).toBe(process.version);
  });

  it("layer-with-node-x86_64.zip runs on its own Node.js", async () => {
    const { dir, entries } = await unpacked("layer-with-node-x86_64.zip");
    expect(entries.find((e) => e.name === "databricks-token-broker/node/bin/node")?.mode).toBe(0o755);
    const node = join(dir, "databricks-token-broker", "node", "bin", "node");
    const elf = await readFile(node);
    expectStrippedNode(entries, elf, 0x3e); // EM_X86_64
    expect(await readFile(join(dir, "databricks-token-broker", "node", "arch"), "utf8")).toBe("x86_64 x86_64 /lib64/ld-linux-x86-64.so.2\n");
    // The marker is read from the binary: the wrong binary for a flavour fails the build.
    expect(() => archMarker("arm64", elf)).toThrow(/not an ELF binary for aarch64/);
    // The stripped binary still runs.
    expect((await promisify(execFile)(node, ["--version"])).stdout.trim()).toBe(`v${NODE_VERSION}`);
    // The bundle's notices and Node.js's licence, in the one notices file.
    const notices = await readFile(join(dir, "databricks-token-broker", "THIRD-PARTY-NOTICES.txt"), "utf8");
    expect(notices).toContain("\nfastify ");
    expect(notices).toContain((await readFile(join(dir, "databricks-token-broker", "node", "LICENSE"), "utf8")).trim());
    expect(entries.filter((e) => e.name.endsWith("THIRD-PARTY-NOTICES.txt"))).toHaveLength(1);
    // No Node.js on PATH at all: as on a Python or Java runtime.
    expect(await runFrom(dir, "/usr/bin:/bin")).toMatch(/^v24\./);
  }, 60_000);

  it("layer-with-node-arm64.zip carries an arm64 Node.js", async () => {
    const { dir, entries } = await unpacked("layer-with-node-arm64.zip");
    expectStrippedNode(entries, await readFile(join(dir, "databricks-token-broker", "node", "bin", "node")), 0xb7); // EM_AARCH64
    expect(await readFile(join(dir, "databricks-token-broker", "node", "arch"), "utf8")).toBe("arm64 aarch64 /lib/ld-linux-aarch64.so.1\n");
    expect((await stat(join(dir, "extensions", "databricks-token-broker"))).mode & 0o777).toBe(0o755);
    expect((await stat(join(dir, "bin", "databricks-token-broker"))).mode & 0o777).toBe(0o755);
  });
});

/**
 * A PATH with nothing on it but `uname`, which the launchers run only when it has to say which
 * flavour the machine needs: as on a Python function, no Node.js anywhere (this machine has no
 * /var/lang/bin/node either). `sh` itself is the launchers' /bin/sh, found without PATH.
 */
async function bareBin(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dtb-bin-"));
  tmp.push(dir);
  await symlink((await run("sh", ["-c", "command -v uname"])).stdout.trim(), join(dir, "uname"));
  await expect(run("sh", ["-c", "command -v node"], { env: { PATH: dir } }), "node on the bare PATH").rejects.toThrow();
  await expect(access("/var/lang/bin/node"), "this machine has a /var/lang/bin/node").rejects.toThrow();
  return dir;
}

/** Runs `command` through /bin/sh with exactly `env` from `/`, as a function's code shelling out does; never throws. */
async function shell(command: string, env: Record<string, string | undefined>): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run("/bin/sh", ["-c", command], { env: env as NodeJS.ProcessEnv, cwd: "/", timeout: 30_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** Starts the unpacked layer's extension under the emulator; it must fail its init by exiting with `code` and writing only `line` to stderr. */
async function expectInitExit(dir: string, path: string, code: number, line: string) {
  const s = await startStack({ command: join(dir, "extensions", "databricks-token-broker"), lambda: { cwd: "/" }, env: { PATH: path } });
  try {
    expect(await s.lambda.init).toMatchObject({ ok: false, status: "exited", code });
    await s.lambda.waitForLine((l) => l === line, { stream: "stderr", timeoutMs: 5_000 });
    expect(s.lambda.stderr).toEqual([line]);
    expect(s.lambda.registrations).toEqual([]);
  } finally {
    await s.close();
  }
}

/** A launcher's pick-node block: which Node.js it runs, or why none can run. */
async function pickNode(file: string): Promise<string> {
  const text = await readFile(file, "utf8");
  const block = /^# --- pick-node:.*?^# --- pick-node end$/ms.exec(text)?.[0];
  expect(block, `${file} has its pick-node block`).toBeDefined();
  return block!;
}

describe("the setup/doctor command on the function's PATH, /opt/bin (issue 14, item 2)", () => {
  it("picks its Node.js exactly as the extension's launcher does: the same block, word for word", async () => {
    const [extension, bin] = await Promise.all(["extensions", "bin"].map((d) => pickNode(join(ROOT, "layer", d, "databricks-token-broker"))));
    expect(bin).toBe(extension);
    expect(extension).toContain("/var/lang/bin/node");
  });

  it("layer-with-node-x86_64.zip: `databricks-token-broker doctor --json` runs by name on the layer's Node.js, with no node on PATH", async () => {
    const { dir } = await unpacked("layer-with-node-x86_64.zip");
    const bin = await bareBin();
    const sts = await startSts({ region: "us-east-1" });
    const iam = await startIam({ sts });
    const db = await startDatabricks({ policy: { issuer: sts.issuer, audiences: ["databricks"], subject: sts.settings.roleArn, servicePrincipalId: CLIENT_ID } });
    try {
      const env = {
        // As Lambda's PATH ends in /opt/bin; the layer's own directory stands for /opt.
        PATH: `${bin}:${join(dir, "bin")}`,
        DATABRICKS_TOKEN_BROKER_ENABLED: "true",
        DATABRICKS_HOST: db.url,
        DATABRICKS_CLIENT_ID: CLIENT_ID,
        AWS_REGION: "us-east-1",
        AWS_ENDPOINT_URL_STS: sts.url,
        AWS_ENDPOINT_URL_IAM: iam.url,
        AWS_ACCESS_KEY_ID: CLI_TEST_CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: CLI_TEST_CREDENTIALS.secretAccessKey,
        AWS_SESSION_TOKEN: CLI_TEST_CREDENTIALS.sessionToken,
        AWS_EC2_METADATA_DISABLED: "true",
        // The function's NODE_OPTIONS, which the command unsets as the extension's launcher does.
        NODE_OPTIONS: "--require=/nonexistent/function-code.js",
      };
      const doctor = await shell("databricks-token-broker doctor --json", env);
      expect(doctor.code, doctor.stderr).toBe(0);
      const report = JSON.parse(doctor.stdout) as { ok: boolean; checks: { step: string; status: string }[] };
      expect(report.ok).toBe(true);
      expect(report.checks.map((c) => `${c.step}:${c.status}`)).toContain("exchange:pass");
      expect(db.exchanges.filter((e) => e.ok)).toHaveLength(1);
      // The help points at the command itself.
      const help = await shell("databricks-token-broker --help", env);
      expect(help.code).toBe(0);
      expect(help.stdout).toContain("In a Lambda function with the layer: databricks-token-broker doctor (/opt/bin, on PATH)");
    } finally {
      await Promise.all([sts.close(), iam.close(), db.close()]);
    }
  }, 60_000);

  it("finds the layer relative to itself: by a relative path from the layer's directory", async () => {
    const { dir } = await unpacked("layer-with-node-x86_64.zip");
    const bin = await bareBin();
    const help = await shell(`cd '${dir}' && bin/databricks-token-broker --help`, { PATH: bin });
    expect(help.code, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/^Usage: databricks-token-broker <command>/);
  });
});

/** What the machine's `uname -m` is called in the flavours' names, and the other flavour. */
const HOST = process.arch === "arm64" ? { arch: "arm64", other: "x86_64", otherMachine: "x86_64", otherLoader: "/lib64/ld-linux-x86-64.so.2" } : { arch: "x86_64", other: "arm64", otherMachine: "aarch64", otherLoader: "/lib/ld-linux-aarch64.so.1" };
const UNAME = process.arch === "arm64" ? "aarch64" : "x86_64";

describe("the wrong layer for the function says which one to attach (issue 14, item 3)", () => {
  const noNode = (what: string) =>
    `databricks-token-broker: ${what} cannot start: no Node.js. This is the layer without Node.js (layer.zip), for Node.js runtimes: it runs the runtime's /var/lang/bin/node, else node on PATH, and this function has neither (a Python, Java or OS-only runtime); attach the with-Node.js flavour for ${HOST.arch} instead: layer-with-node-${HOST.arch}.zip.`;

  it("layer.zip where no Node.js is: the extension exits 127 before registering, naming the flavour to attach; so does the command", async () => {
    const { dir } = await unpacked("layer.zip");
    const bin = await bareBin();
    await expectInitExit(dir, bin, 127, noNode("the extension"));
    const doctor = await shell("databricks-token-broker doctor", { PATH: `${bin}:${join(dir, "bin")}` });
    expect(doctor).toEqual({ code: 127, stdout: "", stderr: `${noNode("the setup/doctor command")}\n` });
  });

  it("a with-Node.js layer whose node lost its execute bit (published from a copy): says so, and what to publish", async () => {
    const { dir } = await unpacked(`layer-with-node-${HOST.arch}.zip`);
    const node = join(dir, "databricks-token-broker", "node", "bin", "node");
    await chmod(node, 0o644);
    const bin = await bareBin();
    const doctor = await shell("databricks-token-broker doctor", { PATH: `${bin}:${join(dir, "bin")}` });
    expect(doctor).toEqual({
      code: 126,
      stdout: "",
      stderr: `databricks-token-broker: the setup/doctor command cannot start: the layer's Node.js, ${join(dir, "bin")}/../databricks-token-broker/node/bin/node, is not executable: the layer was published from a copy that lost the zip's file modes; publish the zip \`npm run build\` wrote, as it is.\n`,
    });
  });

  it(`layer-with-node-${HOST.other}.zip on ${UNAME}: refused before exec (exit 126), naming the flavour to attach; so does the command`, async () => {
    // The launchers tell the architecture by the other flavour's ELF interpreter, which a Lambda image of this architecture lacks.
    await expect(access(HOST.otherLoader), `${HOST.otherLoader} exists on this machine, as it does on no ${UNAME} Lambda image`).rejects.toThrow();
    const { dir } = await unpacked(`layer-with-node-${HOST.other}.zip`);
    const bin = await bareBin();
    const fix = HOST.other === "arm64" ? "set the function's architecture to arm64" : "set the function's architecture to x86_64";
    const wrong = (what: string) =>
      `databricks-token-broker: ${what} cannot start: this layer is the with-Node.js flavour for ${HOST.other} (layer-with-node-${HOST.other}.zip), whose Node.js runs on ${HOST.otherMachine} only, and this function runs on ${UNAME}; attach layer-with-node-${HOST.arch}.zip instead, or ${fix}.`;
    // Lambda's PATH has /usr/bin (uname); the message is the same with node there too.
    await expectInitExit(dir, `${bin}:${dirname(process.execPath)}`, 126, wrong("the extension"));
    const doctor = await shell("databricks-token-broker doctor", { PATH: `${bin}:${join(dir, "bin")}` });
    expect(doctor).toEqual({ code: 126, stdout: "", stderr: `${wrong("the setup/doctor command")}\n` });
  });
});
