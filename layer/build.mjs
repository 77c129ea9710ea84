// Builds the layer tree as Lambda unpacks it under /opt (SPEC §1):
//   extensions/databricks-token-broker   the launcher (mode 0755; its name is the extension's)
//   bin/databricks-token-broker          `setup`/`doctor` on the function's PATH (mode 0755)
//   databricks-token-broker/index.cjs    the extension's entry, one file (what start-up loads)
//   databricks-token-broker/lazy/        what it loads later: the AWS SDK, fastify and the app
//   databricks-token-broker/cli.mjs      the `setup`/`doctor` command, bundled apart
//   databricks-token-broker/THIRD-PARTY-NOTICES.txt   licence texts of what is bundled
import { execFile } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { build } from "esbuild";
import { ARCHES, layerNodeFor, NODE_VERSION } from "./node-runtime.mjs";
import { zipTrees } from "./zip.mjs";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const EXTENSION_NAME = "databricks-token-broker";
export const NOTICES_FILE = "THIRD-PARTY-NOTICES.txt";

/**
 * Modules fastify requires only for features the extension never uses: its default schema
 * compilers (src/app.ts passes its own, as no route has a schema), pino (`logger: false`) and
 * light-my-request (`app.inject()`, for tests). Bundled, they would be a third of what every
 * cold start parses. Should one be reached after all, it throws and names itself.
 */
const NOT_BUNDLED = ["@fastify/ajv-compiler", "@fastify/fast-json-stringify-compiler", "pino", "light-my-request"];
const notBundled = {
  name: "not-bundled",
  setup(b) {
    b.onResolve({ filter: new RegExp(`^(${NOT_BUNDLED.join("|").replace(/[/.-]/g, "\\$&")})$`) }, (a) => ({ path: a.path, namespace: "not-bundled" }));
    b.onLoad({ filter: /.*/, namespace: "not-bundled" }, (a) => ({
      contents: `throw new Error(${JSON.stringify(`${a.path} is left out of the extension's bundle (layer/build.mjs NOT_BUNDLED)`)});`,
      loader: "js",
    }));
  },
};

/**
 * The modules the extension imports only dynamically, built apart under lazy/: the entry's
 * `import("../src/sts-client.js")` and `import("./app.js")` become imports of lazy/<name>.mjs.
 * Modules both sides use (config, errors, log) are then in both: they hold no state, and
 * errors are recognised by shape (isBrokerError), not by class identity.
 */
const LAZY_PARTS = ["sts-client", "app"];
const lazyParts = {
  name: "lazy-parts",
  setup(b) {
    b.onResolve({ filter: new RegExp(`^\\.\\.?/(src/)?(${LAZY_PARTS.join("|")})\\.js$`) }, (a) => ({ path: `./lazy/${a.path.replace(/^.*\//, "").slice(0, -3)}.mjs`, external: true }));
  },
};

/** esbuild options every bundle shares. */
const COMMON = {
  bundle: true,
  platform: "node",
  format: "esm",
  // Lambda's oldest supported Node.js runtime line.
  target: "node20",
  minify: true,
  // The packages' licence texts are in NOTICES_FILE, whole; their comments would be a part.
  legalComments: "none",
  // Metafile paths relative to the repository, whatever directory the build runs from.
  absWorkingDir: ROOT,
  logLevel: "warning",
  logOverride: { "import-is-undefined": "error" },
};
/** Bundled CommonJS dependencies (the AWS SDK) call require() for Node built-ins, which an ES module does not have. */
const REQUIRE_SHIM = "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);";

/**
 * The esbuild options of the bundles written into `bundleDir`. The entry is CommonJS and one
 * file, what start-up loads before registering: Node's ES module loader and several files
 * registered later. What is only imported dynamically (the AWS SDK, see extension/main.ts;
 * fastify and the app, see src/lifecycle.ts) is an ES module build of its own under lazy/,
 * code-split, loaded when first needed. The `setup`/`doctor` command is a bundle of its own,
 * so the extension's start-up never loads the IAM client.
 */
export function bundles(bundleDir) {
  return [
    { entryPoints: [join(ROOT, "extension", "main.ts")], outfile: join(bundleDir, "index.cjs"), plugins: [lazyParts], ...COMMON, format: "cjs" },
    {
      entryPoints: Object.fromEntries(LAZY_PARTS.map((name) => [name, join(ROOT, "src", `${name}.ts`)])),
      outdir: join(bundleDir, "lazy"),
      outExtension: { ".js": ".mjs" },
      splitting: true,
      chunkNames: "chunks/[name]-[hash]",
      // The AWS SDK's ES module builds, which esbuild can tree-shake; its CommonJS builds, picked
      // by default for Node.js, arrive whole. Packages with an `exports` map are unaffected.
      mainFields: ["module", "main"],
      plugins: [notBundled],
      ...COMMON,
      banner: { js: REQUIRE_SHIM },
    },
    { entryPoints: [join(ROOT, "extension", "cli.ts")], outfile: join(bundleDir, "cli.mjs"), ...COMMON, banner: { js: `#!/usr/bin/env node\n${REQUIRE_SHIM}` } },
  ];
}

/**
 * Writes the layer tree into `outDir` (default dist/layer) and returns the bundle's size in bytes.
 * `plugins`: esbuild plugins added to every bundle's; the bench builds variants with them.
 */
export async function buildLayerTree(outDir = join(ROOT, "dist", "layer"), { plugins = [] } = {}) {
  outDir = resolve(outDir);
  // Built beside the tree it replaces and swapped in at the end (see swapIn).
  const tree = `${outDir}.staging-${process.pid}`;
  await rm(tree, { recursive: true, force: true });
  await mkdir(join(tree, "extensions"), { recursive: true });
  await mkdir(join(tree, "bin"));
  for (const dir of ["extensions", "bin"]) {
    const launcher = join(tree, dir, EXTENSION_NAME);
    await copyFile(join(ROOT, "layer", dir, EXTENSION_NAME), launcher);
    await chmod(launcher, 0o755);
  }
  const bundleDir = join(tree, EXTENSION_NAME);
  const inputs = [];
  for (const options of bundles(bundleDir).map((o) => ({ ...o, plugins: [...plugins, ...(o.plugins ?? [])] }))) {
    const { metafile } = await build({ ...options, metafile: true });
    inputs.push(...Object.keys(metafile.inputs));
  }
  await writeFile(join(bundleDir, NOTICES_FILE), await thirdPartyNotices(inputs));
  // Executable, as package.json's `bin` points at it.
  const cli = join(bundleDir, "cli.mjs");
  await chmod(cli, 0o755);
  const size = (await stat(join(bundleDir, "index.cjs"))).size;
  await swapIn(tree, outDir);
  return size;
}

/** A package's licence and notice files, e.g. LICENSE, LICENSE.md, LICENCE-MIT, NOTICE.txt, COPYING. */
const LEGAL_FILE = /^(licen[cs]e|notice|copying)([-._].*)?$/i;
const RULE = "=".repeat(80);

/**
 * The text of NOTICES_FILE for the bundle's `inputs` (esbuild metafile paths, relative to
 * `root`): each package they come from, with its version and declared licence, and the text
 * of its licence and notice files, each distinct text once.
 */
export async function thirdPartyNotices(inputs, root = ROOT) {
  // The last node_modules/<name> or node_modules/@scope/<name> in the path: nested copies count apart.
  const dirs = new Set(inputs.map((input) => /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input)?.[1]).filter(Boolean));
  const texts = new Map();
  for (const dir of [...dirs].sort()) {
    const { name, version, license, licenses } = JSON.parse(await readFile(join(root, dir, "package.json"), "utf8"));
    const files = (await readdir(join(root, dir))).filter((f) => LEGAL_FILE.test(f)).sort();
    const text = (await Promise.all(files.map(async (f) => `--- ${f}\n\n${(await readFile(join(root, dir, f), "utf8")).trim()}`))).join("\n\n");
    const declared = license?.type ?? license ?? licenses?.map((l) => l.type).join(" OR ") ?? "no licence declared";
    texts.set(text, [...(texts.get(text) ?? []), `${name} ${version} (${declared})`]);
  }
  // Packages without a file of their own last, after the texts of the licences they declare.
  const blocks = [...texts].sort(([a], [b]) => (a ? 0 : 1) - (b ? 0 : 1)).map(([text, packages]) => noticeBlock(packages, text || NO_LICENCE_FILE));
  return `Third-party software bundled into the ${EXTENSION_NAME} layer: ${dirs.size} packages, each with its
version, the licence its package.json declares, and the licence and notice files it ships.
Written by layer/build.mjs from the packages of the bundle's inputs (esbuild's metafile).

${blocks.join("\n")}`;
}

/** Said of packages that ship no licence file (three of the AWS SDK's, and abstract-logging): the licence they declare applies. */
const NO_LICENCE_FILE = "These packages ship no licence or notice file; each is under the licence its package.json\ndeclares, named beside it.";

/** One section of NOTICES_FILE: the packages (one a line), then the text that applies to them. */
function noticeBlock(packages, text) {
  return `${RULE}\n${packages.join("\n")}\n${RULE}\n\n${text}\n`;
}

/**
 * Moves `tree` to `outDir` with renames, so that the layer is never missing or half-written:
 * extensions started from it (by a test run alongside) load chunks of the bundle after they
 * start, and a rebuild must not pull the directory from under them. Concurrent builds each
 * land whole; the last one stays.
 */
async function swapIn(tree, outDir) {
  const old = [];
  for (let attempt = 0; ; attempt++) {
    const aside = `${outDir}.old-${process.pid}-${attempt}`;
    try {
      await rename(outDir, aside);
      old.push(aside);
    } catch (err) {
      if (err.code !== "ENOENT") throw err;
    }
    try {
      await rename(tree, outDir);
      break;
    } catch (err) {
      // Another build put its tree there between the two renames: move that one aside too.
      if (err.code !== "ENOTEMPTY" && err.code !== "EEXIST") throw err;
    }
  }
  await Promise.all(old.map((d) => rm(d, { recursive: true, force: true })));
}

/** ELF e_machine values of the flavours' architectures, and what `uname -m` calls each. */
const ELF_MACHINES = { x86_64: { machine: 0x3e, uname: "x86_64" }, arm64: { machine: 0xb7, uname: "aarch64" } };
const PT_INTERP = 3;

/**
 * The with-Node.js flavour's databricks-token-broker/node/arch, which the launchers read before they
 * exec: one line, `<arch> <uname -m> <ELF interpreter>`, from the ELF64 `node` binary itself
 * (its header's machine, its PT_INTERP segment). Throws if `node` is not built for `arch`.
 */
export function archMarker(arch, node) {
  const { machine, uname } = ELF_MACHINES[arch];
  if (node.toString("latin1", 0, 4) !== "\x7fELF" || node.readUInt16LE(18) !== machine) {
    throw new Error(`the Node.js for the ${arch} flavour is not an ELF binary for ${uname} (e_machine ${node.readUInt16LE(18)}, want ${machine})`);
  }
  const [phoff, phentsize, phnum] = [Number(node.readBigUInt64LE(0x20)), node.readUInt16LE(0x36), node.readUInt16LE(0x38)];
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (node.readUInt32LE(ph) !== PT_INTERP) continue;
    const [offset, size] = [Number(node.readBigUInt64LE(ph + 0x08)), Number(node.readBigUInt64LE(ph + 0x20))];
    return `${arch} ${uname} ${node.toString("latin1", offset, offset + size).replace(/\0+$/, "")}\n`;
  }
  throw new Error(`the Node.js for the ${arch} flavour has no ELF interpreter (PT_INTERP): a static binary needs no architecture check, and layer/build.mjs does not expect one`);
}

/** The zips `buildAll` writes into dist/, in order; template.yaml names each. */
export const ARTIFACTS = ["layer.zip", "layer-with-node-x86_64.zip", "layer-with-node-arm64.zip"];

/**
 * Lambda quotas: a layer uploaded directly is at most 50 MB zipped; a function and all its
 * layers at most 250 MB unzipped ("Lambda quotas", developer guide).
 */
export const MAX_ZIPPED_BYTES = 50 * 1024 * 1024;
export const MAX_UNZIPPED_BYTES = 250 * 1024 * 1024;
/**
 * The with-Node.js flavour's own budget (issue 13), per architecture: it shares those 250 MB
 * with the function's code and its other layers. Met by shipping a stripped `node` and its
 * LICENSE only (layerNodeFor in layer/node-runtime.mjs).
 */
export const MAX_WITH_NODE_UNZIPPED_BYTES = 110 * 1024 * 1024;

/**
 * `npm run build`: the tree, `dist/layer.zip`, and the with-Node.js flavour for both
 * architectures. Fails when an artifact breaks a Lambda size limit, or a with-Node.js zip exceeds
 * MAX_WITH_NODE_UNZIPPED_BYTES.
 * @returns {Promise<{name: string, zipped: number, unzipped: number}[]>}
 */
export async function buildAll({ dist = join(ROOT, "dist"), cacheDir = join(ROOT, "node_modules", ".cache", "databricks-token-broker") } = {}) {
  const tree = join(dist, "layer");
  await buildLayerTree(tree);
  const artifacts = [];
  const add = async (name, roots) => {
    const file = join(dist, name);
    const { unzippedBytes } = await zipTrees(roots, file);
    const zipped = (await stat(file)).size;
    if (zipped > MAX_ZIPPED_BYTES || unzippedBytes > MAX_UNZIPPED_BYTES) {
      throw new Error(`${name} breaks a Lambda limit: ${zipped} bytes zipped (max ${MAX_ZIPPED_BYTES}), ${unzippedBytes} unzipped (max ${MAX_UNZIPPED_BYTES})`);
    }
    artifacts.push({ name, zipped, unzipped: unzippedBytes });
    return unzippedBytes;
  };
  await add("layer.zip", [{ dir: tree }]);
  const notices = await readFile(join(tree, EXTENSION_NAME, NOTICES_FILE), "utf8");
  for (const [arch, pkg] of Object.entries(ARCHES)) {
    // The verified Node.js, stripped into a directory of this build's own.
    const node = await mkdtemp(join(tmpdir(), `dtb-${pkg}-`));
    try {
      await layerNodeFor(arch, cacheDir, node);
      // The tree's notices, and those of Node.js: its LICENSE also gives the licences of what it bundles.
      const withNode = notices + "\n" + noticeBlock([`Node.js ${NODE_VERSION} (npm package ${pkg}; MIT), in ${EXTENSION_NAME}/node`], (await readFile(join(node, "LICENSE"), "utf8")).trim());
      const name = `layer-with-node-${arch}.zip`;
      const marker = { name: `${EXTENSION_NAME}/node/arch`, data: Buffer.from(archMarker(arch, await readFile(join(node, "bin", "node")))) };
      const unzipped = await add(name, [{ dir: tree }, { dir: node, prefix: `${EXTENSION_NAME}/node/` }, { name: `${EXTENSION_NAME}/${NOTICES_FILE}`, data: Buffer.from(withNode) }, marker]);
      if (unzipped > MAX_WITH_NODE_UNZIPPED_BYTES) {
        const mib = (n) => `${(n / 1024 / 1024).toFixed(1)} MB`;
        throw new Error(
          `${name} is ${mib(unzipped)} unzipped (${unzipped} bytes), over the with-Node.js flavour's budget of ${mib(MAX_WITH_NODE_UNZIPPED_BYTES)} ` +
            `(MAX_WITH_NODE_UNZIPPED_BYTES in layer/build.mjs, issue 13). Its node should be stripped and the only other Node.js file LICENSE (layerNodeFor in layer/node-runtime.mjs).`,
        );
      }
    } finally {
      await rm(node, { recursive: true, force: true });
    }
  }
  return artifacts;
}

/**
 * Compiles the CDK construct (cdk/index.ts) with its declarations into outDir, the package's
 * `./cdk` export. The construct finds the zips in outDir's parent, so outDir is `<dist>/cdk`.
 */
export async function buildCdk(outDir = join(ROOT, "dist", "cdk")) {
  const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
  await rm(outDir, { recursive: true, force: true });
  await promisify(execFile)(process.execPath, [tsc, "-p", join(ROOT, "cdk", "tsconfig.json"), "--outDir", outDir]).catch((e) => {
    throw new Error(`compiling cdk/index.ts failed:\n${e.stdout || e.message}`);
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const mb = (n) => `${(n / 1024 / 1024).toFixed(1)} MB`;
  for (const a of await buildAll()) console.log(`dist/${a.name.padEnd(30)} ${mb(a.zipped).padStart(9)} zipped ${mb(a.unzipped).padStart(9)} unzipped`);
  console.log(`with-Node.js flavour carries Node.js ${NODE_VERSION}`);
  await buildCdk();
  console.log("dist/cdk/index.js                 the CDK construct (databricks-token-broker/cdk)");
}
