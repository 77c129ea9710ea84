/**
 * The with-Node.js flavour of the layer, unpacked as Lambda unpacks it (SPEC §1): the layer tree
 * with the registry's Node.js under databricks-token-broker/node, which a Python, Java or
 * OS-only function attaches because its runtime has no Node.js. The same parts `npm run build`
 * zips (layer/build.mjs), laid out in a temporary directory for RIE to bind on /opt.
 */
import { chmod, cp, mkdtemp, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EXTENSION_NAME } from "../../layer/build.mjs";
import { nodeFor } from "../../layer/node-runtime.mjs";
import { afterAll, afterEach, beforeAll } from "vitest";
import { ROOT } from "../stack.js";
import { PYTHON } from "./paths.mjs";
import { FUNCTIONS, LAYER, type PeerStack, type PeerStackOptions, startPeerStack } from "./peer-stack.js";

/** Where `npm run build` and the layer tests cache the registry's Node.js. */
const NODE_CACHE = join(ROOT, "node_modules", ".cache", "databricks-token-broker");

export interface LayerDir {
  dir: string;
  remove(): Promise<void>;
}

export async function withNodeLayer(): Promise<LayerDir> {
  const dir = await mkdtemp(join(tmpdir(), "peer-layer-with-node-"));
  // Managed Instances run the extension as Lambda's sandbox user, not as its owner.
  await chmod(dir, 0o755);
  await cp(LAYER, dir, { recursive: true });
  const node = await nodeFor(process.arch === "arm64" ? "arm64" : "x86_64", NODE_CACHE);
  await symlink(node, join(dir, EXTENSION_NAME, "node"));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * For a test file of the Python function (test/peers/functions/python, run by awslambdaric):
 * registers the hooks that lay out the with-Node.js flavour and stop each stack, and returns
 * `start`. A Python runtime has no Node.js, so the machine's own node is hidden from it.
 */
export function pythonFunction(): (o?: Partial<PeerStackOptions>) => Promise<PeerStack> {
  let layer: LayerDir | undefined;
  let stack: PeerStack | undefined;
  beforeAll(async () => {
    layer = await withNodeLayer();
  });
  afterAll(async () => {
    await layer?.remove();
  });
  afterEach(async () => {
    await stack?.close();
    stack = undefined;
  });
  return async (o = {}) =>
    (stack = await startPeerStack({
      task: join(FUNCTIONS, "python"),
      bootstrap: [PYTHON, "-m", "awslambdaric", "app.handler"],
      layer: layer!.dir,
      rie: { hide: [process.execPath] },
      ...o,
    }));
}
