// Writes a layer zip from a directory tree, keeping each file's unix mode (Lambda unpacks
// the layer with it: the launcher must stay executable) and fixed timestamps, so the same
// tree always gives the same bytes.
import { createWriteStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import yazl from "yazl";

/** A fixed mtime: zips are reproducible. DOS time starts in 1980. */
const MTIME = new Date(Date.UTC(1980, 0, 1));

async function* walk(dir) {
  for (const entry of (await readdir(dir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(path);
    else if (entry.isFile()) yield path;
  }
}

/**
 * Zips every file under each of `roots` ({dir, prefix}) into `outFile`.
 * @returns {Promise<{files: number, unzippedBytes: number}>}
 */
export async function zipTrees(roots, outFile) {
  const zip = new yazl.ZipFile();
  let files = 0;
  let unzippedBytes = 0;
  for (const { dir, prefix = "" } of roots) {
    for await (const path of walk(dir)) {
      const s = await stat(path);
      const name = (prefix + relative(dir, path)).split(sep).join("/");
      // Regular file (0o100000) with its permission bits; deflate level 9 for the 50 MB upload limit.
      zip.addFile(path, name, { mode: 0o100000 | (s.mode & 0o777), mtime: MTIME, compressionLevel: 9 });
      files += 1;
      unzippedBytes += s.size;
    }
  }
  zip.end();
  await new Promise((resolve, reject) => {
    const out = createWriteStream(outFile);
    zip.outputStream.pipe(out).on("close", resolve).on("error", reject);
    zip.outputStream.on("error", reject);
  });
  return { files, unzippedBytes };
}
