// Builds dist/layer once per test run: the end-to-end tests run the layer as Lambda would.
import { buildLayerTree } from "../layer/build.mjs";

export async function setup(): Promise<void> {
  await buildLayerTree();
}
