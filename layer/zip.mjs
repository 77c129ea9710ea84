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
 * Zips every file under each of `roots` ({dir, prefix}), and each {name, data} root as a file
 * of its own, into `outFile`; a later root's file replaces an earlier one's of the same name.
 * @returns {Promise<{files: number, unzippedBytes: number}>}
 */
export async function zipTrees(roots, outFile) {
  const entries = new Map();
  for (const root of roots) {
    if (root.data) {
      entries.set(root.name, { data: root.data, mode: 0o644, size: root.data.length });
      continue;
    }
    const { dir, prefix = "" } = root;
    for await (const path of walk(dir)) {
      const s = await stat(path);
      entries.set((prefix + relative(dir, path)).split(sep).join("/"), { path, mode: s.mode & 0o777, size: s.size });
    }
  }
  const zip = new yazl.ZipFile();
  let unzippedBytes = 0;
  for (const [name, { path, data, mode, size }] of entries) {
    // Regular file (0o100000) with its permission bits; deflate level 9 for the 50 MB upload limit.
    const options = { mode: 0o100000 | mode, mtime: MTIME, compressionLevel: 9 };
    if (data) zip.addBuffer(data, name, options);
    else zip.addFile(path, name, options);
    unzippedBytes += size;
  }
  zip.end();
  await new Promise((resolve, reject) => {
    const out = createWriteStream(outFile);
    zip.outputStream.pipe(out).on("close", resolve).on("error", reject);
    zip.outputStream.on("error", reject);
  });
  return { files: entries.size, unzippedBytes };
}
