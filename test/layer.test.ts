/**
 * The artifacts of `npm run build`, unpacked as Lambda unpacks a layer and run from there
 * under the emulator. Building the with-Node.js flavour downloads Node.js from the npm
 * registry once (cached under node_modules/.cache).
 */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildAll, MAX_UNZIPPED_BYTES, MAX_WITH_NODE_UNZIPPED_BYTES, MAX_ZIPPED_BYTES } from "../layer/build.mjs";
import { NODE_VERSION } from "../layer/node-runtime.mjs";
import { startStack } from "./stack.js";
import { type Entry, unzip } from "./unzip.js";

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

/** What the with-Node.js flavour ships of Node.js: a stripped binary (no symbol table, no debug info) and its licence. */
function expectStrippedNode(entries: Entry[], elf: Buffer, machine: number) {
  expect(entries.filter((e) => e.name.startsWith("databricks-token-broker/node/")).map((e) => e.name).sort()).toEqual(["databricks-token-broker/node/LICENSE", "databricks-token-broker/node/bin/node"]);
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
    expectStrippedNode(entries, await readFile(node), 0x3e); // EM_X86_64
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
    expect((await stat(join(dir, "extensions", "databricks-token-broker"))).mode & 0o777).toBe(0o755);
  });
});
