// `npm start`: builds dist/layer, then runs scripts/demo.ts (bundled by esbuild, with its
// npm dependencies left to node_modules) so the story runs on plain Node.js.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { build } from "esbuild";
import { buildLayerTree, ROOT } from "../layer/build.mjs";

const args = process.argv.slice(2);
const noBuild = args.includes("--no-build");
if (!args.includes("--help") && !noBuild) {
  const size = await buildLayerTree();
  console.log(`built dist/layer (bundle ${(size / 1024).toFixed(0)} KiB)`);
}
const outfile = join(ROOT, "dist", "demo.mjs");
await build({ entryPoints: [join(ROOT, "scripts", "demo.ts")], outfile, bundle: true, platform: "node", format: "esm", packages: "external", logLevel: "warning" });
const { status } = spawnSync(process.execPath, [outfile, ...args.filter((a) => a !== "--no-build")], { stdio: "inherit" });
process.exit(status ?? 1);
