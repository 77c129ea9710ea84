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
import { ROOT } from "../stack.js";
import { LAYER } from "./peer-stack.js";

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
