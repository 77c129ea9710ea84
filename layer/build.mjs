// Builds the layer tree as Lambda unpacks it under /opt (SPEC §1):
//   extensions/databricks-token-broker   the launcher (mode 0755; its name is the extension's)
//   databricks-token-broker/index.mjs    the esbuild bundle, self-contained
import { chmod, copyFile, mkdir, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const EXTENSION_NAME = "databricks-token-broker";

/** Writes the layer tree into `outDir` (default dist/layer) and returns the bundle's size in bytes. */
export async function buildLayerTree(outDir = join(ROOT, "dist", "layer")) {
  await rm(outDir, { recursive: true, force: true });
  await mkdir(join(outDir, "extensions"), { recursive: true });
  const launcher = join(outDir, "extensions", EXTENSION_NAME);
  await copyFile(join(ROOT, "layer", "extensions", EXTENSION_NAME), launcher);
  await chmod(launcher, 0o755);
  const outfile = join(outDir, EXTENSION_NAME, "index.mjs");
  await build({
    entryPoints: [join(ROOT, "extension", "main.ts")],
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    // Lambda's oldest supported Node.js runtime line.
    target: "node20",
    minify: true,
    legalComments: "linked",
    logLevel: "warning",
    // Bundled CommonJS dependencies (the AWS SDK) call require() for Node built-ins,
    // which an ES module does not have.
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  });
  return (await stat(outfile)).size;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const size = await buildLayerTree();
  console.log(`dist/layer built: bundle ${(size / 1024).toFixed(0)} KiB`);
}
