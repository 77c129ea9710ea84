/** Unzipping a layer zip as Lambda unpacks it under /opt, for the tests that run the built zips. */
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import yauzl from "yauzl";

export interface Entry {
  name: string;
  mode: number;
  size: number;
}

/** Unzips `file` into `dir` keeping unix modes, as Lambda does under /opt; returns the entries. */
export function unzip(file: string, dir: string): Promise<Entry[]> {
  return new Promise((resolve, reject) => {
    yauzl.open(file, { lazyEntries: true }, (err, zip) => {
      if (err || !zip) return reject(err ?? new Error("no zip"));
      const entries: Entry[] = [];
      zip.on("error", reject);
      zip.on("end", () => resolve(entries));
      zip.on("entry", (e: yauzl.Entry) => {
        const mode = (e.externalFileAttributes >>> 16) & 0o7777;
        entries.push({ name: e.fileName, mode, size: e.uncompressedSize });
        if (e.fileName.endsWith("/")) return zip.readEntry();
        zip.openReadStream(e, (error, stream) => {
          if (error || !stream) return reject(error ?? new Error("no stream"));
          const chunks: Buffer[] = [];
          stream.on("data", (c: Buffer) => chunks.push(c));
          stream.on("error", reject);
          stream.on("end", () => {
            const out = join(dir, e.fileName);
            mkdir(dirname(out), { recursive: true })
              .then(() => writeFile(out, Buffer.concat(chunks)))
              .then(() => chmod(out, mode))
              .then(() => zip.readEntry(), reject);
          });
        });
      });
      zip.readEntry();
    });
  });
}
