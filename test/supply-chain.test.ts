/**
 * Supply chain of the layer (issue 12, items 12 and 13). The with-Node.js flavour's Node.js is
 * checked against SHA-256s pinned in layer/node-runtime.mjs on every build, cached or not; and
 * every flavour carries the licence and notice texts of each package bundled into it.
 */
import { createHash } from "node:crypto";
import { cp, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { build, type Metafile } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bundles, EXTENSION_NAME, NOTICES_FILE, ROOT, thirdPartyNotices } from "../layer/build.mjs";
import { ARCHES, NODE_SHA256, NODE_VERSION, nodeFor } from "../layer/node-runtime.mjs";

/** Where `npm run build` and the layer tests cache the registry's Node.js. */
const CACHE = join(ROOT, "node_modules", ".cache", "databricks-token-broker");
const tmp: string[] = [];
afterAll(() => Promise.all(tmp.map((d) => rm(d, { recursive: true, force: true }))));

describe("Node.js of the with-Node.js flavour", () => {
  const pkg = ARCHES.x86_64;
  const entry = `${pkg}-${NODE_VERSION}`;

  beforeAll(async () => {
    // Downloads once, as `npm run build` does; the cached copy must match the pins.
    await nodeFor("x86_64", CACHE);
  }, 120_000);

  it("has every package's tarball and shipped files pinned", () => {
    for (const p of Object.values(ARCHES)) {
      const pins = NODE_SHA256[`${p}@${NODE_VERSION}`];
      expect(Object.keys(pins ?? {}).sort(), p).toEqual([`${p}-${NODE_VERSION}.tgz`, "package/LICENSE", "package/bin/node"]);
      for (const hash of Object.values(pins ?? {})) expect(hash).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  it.each([`${pkg}-${NODE_VERSION}.tgz`, "package/bin/node"])("a tampered cached %s fails the build, naming the package, both hashes and what to do", async (file) => {
    const cache = await mkdtemp(join(tmpdir(), "dtb-node-cache-"));
    tmp.push(cache);
    await cp(join(CACHE, entry), join(cache, entry), { recursive: true });
    // One byte changed, the size kept.
    const fh = await open(join(cache, entry, file), "r+");
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, 4096);
    byte[0]! ^= 0xff;
    await fh.write(byte, 0, 1, 4096);
    await fh.close();
    const actual = createHash("sha256").update(await readFile(join(cache, entry, file))).digest("hex");
    const expected = NODE_SHA256[`${pkg}@${NODE_VERSION}`]?.[file];

    const failure = await nodeFor("x86_64", cache).then(
      () => new Error("nodeFor accepted a tampered cache"),
      (err: Error) => err,
    );
    expect(failure.message).toContain(`${pkg}@${NODE_VERSION}`);
    expect(failure.message).toContain(file);
    expect(failure.message).toContain(`expected ${expected}`);
    expect(failure.message).toContain(`got ${actual}`);
    expect(failure.message).toContain(`Delete ${join(cache, entry)}`);
  });
});

/** The package directory under node_modules that holds `input` (a metafile path), if any. */
function packageDir(input: string): string | undefined {
  return /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input)?.[1];
}

describe(`${EXTENSION_NAME}/${NOTICES_FILE}`, () => {
  let notices: string;
  const dirs = new Set<string>();

  beforeAll(async () => {
    // Global setup built dist/layer; esbuild's own account of what went into it, built again
    // in memory, says which packages' code is in the bundle.
    notices = await readFile(join(ROOT, "dist", "layer", EXTENSION_NAME, NOTICES_FILE), "utf8");
    for (const options of bundles(join(tmpdir(), "dtb-unused"))) {
      const { metafile } = (await build({ ...options, write: false, metafile: true })) as { metafile: Metafile };
      for (const output of Object.values(metafile.outputs)) {
        for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) {
          const dir = packageDir(input);
          if (dir && bytesInOutput > 0) dirs.add(dir);
        }
      }
    }
  });

  it("names each package whose code is in the bundle, with its licence texts", async () => {
    const names = new Set<string>();
    for (const dir of dirs) {
      const { name, version } = JSON.parse(await readFile(join(ROOT, dir, "package.json"), "utf8")) as { name: string; version: string };
      names.add(name);
      expect(notices, name).toContain(`${name} ${version}`);
      for (const file of (await readdir(join(ROOT, dir))).filter((f) => /^(licen[cs]e|notice)/i.test(f))) {
        expect(notices, `${dir}/${file}`).toContain((await readFile(join(ROOT, dir, file), "utf8")).trim());
      }
    }
    // The review's examples, and the three whose licence comments shipped before.
    for (const name of ["fastify", "find-my-way", "lru-cache", "@aws-sdk/client-sts", "@aws-sdk/client-iam", "@smithy/core", "bowser", "toad-cache", "@fastify/proxy-addr"]) {
      expect(names, name).toContain(name);
    }
    // No package declared but not bundled (NOT_BUNDLED in layer/build.mjs).
    for (const name of ["pino", "light-my-request", "@fastify/ajv-compiler"]) expect(notices).not.toContain(`\n${name} `);
  });

  it("carries each package's NOTICE file, and names a package that ships no licence file", async () => {
    const root = await mkdtemp(join(tmpdir(), "dtb-notices-"));
    tmp.push(root);
    const pkg = async (dir: string, json: object, files: Record<string, string>) => {
      await mkdir(join(root, dir), { recursive: true });
      await writeFile(join(root, dir, "package.json"), JSON.stringify(json));
      for (const [name, text] of Object.entries(files)) await writeFile(join(root, dir, name), text);
    };
    await pkg("node_modules/@acme/sdk", { name: "@acme/sdk", version: "1.2.3", license: "Apache-2.0" }, { LICENSE: "Apache License 2.0 text\n", "NOTICE.txt": "Acme SDK\nCopyright Acme Corp.\n", "index.js": "" });
    await pkg("node_modules/@acme/sdk/node_modules/tiny", { name: "tiny", version: "0.0.1", license: "MIT" }, {});
    await pkg("node_modules/tiny", { name: "tiny", version: "2.0.0", license: "MIT" }, { "LICENSE.md": "MIT, Copyright Tiny\n" });

    const text = await thirdPartyNotices(["src/app.ts", "not-bundled:pino", "node_modules/@acme/sdk/dist/index.js", "node_modules/@acme/sdk/node_modules/tiny/index.js", "node_modules/tiny/lib/a.js", "node_modules/tiny/lib/b.js"], root);
    expect(text).toContain("3 packages");
    expect(text).toMatch(/@acme\/sdk 1\.2\.3 \(Apache-2\.0\)\n=+\n\n--- LICENSE\n\nApache License 2\.0 text\n\n--- NOTICE\.txt\n\nAcme SDK\nCopyright Acme Corp\.\n/);
    expect(text).toMatch(/tiny 2\.0\.0 \(MIT\)\n=+\n\n--- LICENSE\.md\n\nMIT, Copyright Tiny\n/);
    expect(text).toMatch(/tiny 0\.0\.1 \(MIT\)\n=+\n\nThese packages ship no licence or notice file/);
    expect(text).not.toContain("pino");
  });
});
