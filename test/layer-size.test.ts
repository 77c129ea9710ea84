/**
 * How the with-Node.js flavour keeps within its 110 MB (issue 13; the zips themselves are
 * checked in test/layer.test.ts): its node is stripped from a copy of the verified binary, never
 * in the cache, and a build without the strip tool fails saying which Debian package to install.
 */
import { createHash } from "node:crypto";
import { readFile, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ROOT } from "../layer/build.mjs";
import { ARCHES, layerNodeFor, NODE_SHA256, NODE_VERSION, nodeFor, STRIP, stripNode } from "../layer/node-runtime.mjs";

/** Where `npm run build` and the layer tests cache the registry's Node.js. */
const CACHE = join(ROOT, "node_modules", ".cache", "databricks-token-broker");
const tmp: string[] = [];
afterAll(() => Promise.all(tmp.map((d) => rm(d, { recursive: true, force: true }))));

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dtb-strip-"));
  tmp.push(dir);
  return dir;
}

const sha256 = async (file: string) => createHash("sha256").update(await readFile(file)).digest("hex");

describe("the with-Node.js flavour's node", () => {
  it("is stripped from a copy: the cached binary keeps its pinned SHA-256", async () => {
    const out = await tempDir();
    await layerNodeFor("x86_64", CACHE, out);
    const original = join(await nodeFor("x86_64", CACHE), "bin", "node");
    expect(await sha256(original)).toBe(NODE_SHA256[`${ARCHES.x86_64}@${NODE_VERSION}`]?.["package/bin/node"]);
    const [before, after] = await Promise.all([stat(original), stat(join(out, "bin", "node"))]);
    expect(after.size).toBeLessThan(before.size);
    expect(after.mode & 0o777).toBe(0o755);
    expect(await readFile(join(out, "LICENSE"), "utf8")).toBe(await readFile(join(original, "..", "..", "LICENSE"), "utf8"));
  }, 120_000);

  it.each(["x86_64", "arm64"] as const)("fails the %s build without its strip tool, naming the Debian package to install", async (arch) => {
    const empty = await tempDir();
    const path = process.env.PATH;
    process.env.PATH = empty;
    try {
      const failure = await stripNode(arch, "/nonexistent/node", join(empty, "node")).then(
        () => new Error("stripNode succeeded without a strip tool"),
        (err: Error) => err,
      );
      expect(failure.message).toContain(STRIP[arch].tool);
      expect(failure.message).toContain(`apt-get install -y --no-install-recommends ${STRIP[arch].debian}`);
    } finally {
      process.env.PATH = path;
    }
  });
});
