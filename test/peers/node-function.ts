/**
 * The Node.js function of test/peers/functions/node, bundled as users bundle a function for
 * Lambda (esbuild, one ES module file with its dependencies, @databricks/sdk-experimental
 * included), into a temporary directory that is bound on /var/task: the function sees no
 * node_modules but its own bundle, as in Lambda. Run by aws-lambda-ric, the Node.js runtime
 * interface client AWS's base images run.
 */
import { statSync } from "node:fs";
import { chmod, cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { build } from "esbuild";
import { NODE_RIC, NODE_RIC_DIR } from "./paths.mjs";
import { FUNCTIONS } from "./peer-stack.js";

export interface NodeFunction {
  task: string;
  bootstrap: string[];
  /** The runtime interface client the bootstrap runs. */
  ric: string;
  /** Removes the bundle and the client's copy. */
  remove(): Promise<void>;
}

export async function bundleNodeFunction(): Promise<NodeFunction> {
  const task = await mkdtemp(join(tmpdir(), "peer-node-function-"));
  // Managed Instances run the function as Lambda's sandbox user, not as its owner.
  await chmod(task, 0o755);
  await build({
    entryPoints: [join(FUNCTIONS, "node", "index.mjs")],
    outfile: join(task, "index.mjs"),
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
    // The SDK is CommonJS and requires Node.js built-ins; an ES module bundle needs a
    // `require` for them (the banner AWS's and esbuild's Lambda guides give).
    banner: { js: 'import { createRequire } from "node:module"; const require = createRequire(import.meta.url);' },
  });
  // What the nodejs runtimes' /var/runtime/bootstrap does: the runtime interface client, with
  // the handler Lambda puts in _HANDLER. RIE's Managed Instances mode runs only a bootstrap
  // file (here /var/task/bootstrap); its on-demand mode runs the command below.
  // The client runs from a copy in a directory any user may reach, as Lambda's /var/runtime is,
  // whatever the parents of the checkout's cache allow (Managed Instances run it as uid 993).
  const runtime = await mkdtemp(join(tmpdir(), "peer-node-runtime-"));
  await chmod(runtime, 0o755);
  await cp(join(NODE_RIC_DIR, "node_modules"), join(runtime, "node_modules"), { recursive: true });
  const ric = join(runtime, relative(NODE_RIC_DIR, NODE_RIC));
  await writeFile(join(task, "bootstrap"), `#!/bin/sh\nexec "${process.execPath}" "${ric}" "$_HANDLER"\n`, { mode: 0o755 });
  return {
    task,
    bootstrap: [process.execPath, ric, "index.handler"],
    ric,
    remove: () => Promise.all([task, runtime].map((dir) => rm(dir, { recursive: true, force: true }))).then(() => {}),
  };
}

/**
 * RIE's Managed Instances mode runs the runtime as uid 993 (Lambda's sandbox user), so the
 * Node.js binary and aws-lambda-ric must be reachable by others: fails, naming the path,
 * where they are not (a Node.js under a private home directory, say), rather than letting the
 * runtime die with "Permission denied" inside RIE.
 */
export function assertRunnableBySandboxUser(paths: string[]): void {
  for (const path of paths) {
    if ((statSync(path).mode & 0o005) !== 0o005) throw new Error(`${path} must be readable and executable by others: RIE's Managed Instances mode runs the runtime as uid 993`);
    for (let dir = dirname(path); ; dir = dirname(dir)) {
      if ((statSync(dir).mode & 0o001) === 0) throw new Error(`${dir} must be searchable by others (chmod o+x) for ${path}: RIE's Managed Instances mode runs the runtime as uid 993`);
      if (dir === "/") break;
    }
  }
}
