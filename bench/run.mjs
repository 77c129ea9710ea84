// `npm run bench`: builds dist/layer (the bench spawns the extension from there, as Lambda
// would), bundles the TypeScript bench programs with esbuild into dist/bench/, and runs the
// orchestrator. Arguments pass through: `npm run bench -- --only=serving,startup`. When the
// peers section (6: Python under AWS's Lambda emulator) is wanted, it first runs
// test/peers/install.mjs, as `npm test` does (a no-op when .cache/peers is current).
//
// The bench programs are bundled rather than run through a TypeScript loader so that no
// loader's own start-up cost lands in a measurement. Dependencies stay external, so the
// simulated function loads @aws-sdk/client-sts from node_modules, as a Lambda Node.js
// function loads the runtime's own copy.
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { build } from "esbuild";
import { cp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { archMarker, buildLayerTree, EXTENSION_NAME, ROOT } from "../layer/build.mjs";
import { layerNodeFor, NODE_VERSION } from "../layer/node-runtime.mjs";

const OUT = join(ROOT, "dist", "bench");
const PROGRAMS = ["main", "load", "bare-server", "function", "parts"];

const only = process.argv.slice(2).find((a) => a.startsWith("--only="));
if (!only || only.slice("--only=".length).split(",").includes("peers")) {
  const install = spawnSync(process.execPath, [join(ROOT, "test", "peers", "install.mjs")], { stdio: "inherit" });
  if (install.status !== 0) process.exit(install.status ?? 1);
}

const layerDir = process.env.BENCH_LAYER_DIR ?? join(ROOT, "dist", "layer");
await buildLayerTree(layerDir);
// Footprint (section 7) also measures the with-Node.js flavour for this machine's architecture:
// the tree above with the Node.js and marker the build zips into it.
const env = { ...process.env };
const wants = (section) => !only || only.slice("--only=".length).split(",").includes(section);
// Storms (section 8) compare backoff policies: each of bench/backoff/*.ts built into a layer in
// place of src/backoff.ts (what src/token-cache.ts imports as ./backoff.js).
if (wants("storm")) {
  const variants = [];
  for (const file of (await readdir(join(ROOT, "bench", "backoff"))).filter((f) => f.endsWith(".ts") && f !== "common.ts").sort()) {
    const name = file.slice(0, -3);
    const dir = join(ROOT, "dist", "storm", name);
    const policy = {
      name: `backoff-${name}`,
      setup(b) {
        b.onResolve({ filter: /^\.\/backoff\.js$/ }, (a) => (a.importer.endsWith(join("src", "token-cache.ts")) ? { path: join(ROOT, "bench", "backoff", file) } : undefined));
      },
    };
    await buildLayerTree(dir, { plugins: [policy] });
    variants.push({ name, dir });
  }
  env.BENCH_STORM_LAYERS = JSON.stringify(variants);
}
if (wants("footprint")) {
  const arch = process.arch === "arm64" ? "arm64" : "x86_64";
  const withNodeDir = join(ROOT, "dist", `layer-with-node-${arch}`);
  await rm(withNodeDir, { recursive: true, force: true });
  await cp(layerDir, withNodeDir, { recursive: true });
  const nodeDir = join(withNodeDir, EXTENSION_NAME, "node");
  await layerNodeFor(arch, join(ROOT, "node_modules", ".cache", "databricks-token-broker"), nodeDir);
  await writeFile(join(nodeDir, "arch"), archMarker(arch, await readFile(join(nodeDir, "bin", "node"))));
  Object.assign(env, { BENCH_WITH_NODE_DIR: withNodeDir, BENCH_WITH_NODE_VERSION: `v${NODE_VERSION}` });
}
await build({
  entryPoints: PROGRAMS.map((p) => join(ROOT, "bench", `${p}.ts`)),
  outdir: OUT,
  outExtension: { ".js": ".mjs" },
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  packages: "external",
  logLevel: "warning",
});

const child = spawn(process.execPath, [join(OUT, "main.mjs"), ...process.argv.slice(2)], {
  stdio: "inherit",
  env: { ...env, BENCH_DIR: OUT, BENCH_LAYER_DIR: layerDir },
});
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
