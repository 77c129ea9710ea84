/**
 * The shape of the source's imports (issue 11): no import cycle, the AWS SDK behind its
 * adapters only, and no hook into Node.js's diagnostics channels.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith(".ts") ? [p] : [];
  });
}

const files = [...sources(join(ROOT, "src")), ...sources(join(ROOT, "extension"))];
const text = new Map(files.map((f) => [f, readFileSync(f, "utf8")]));
/** Every module specifier a file names: static, dynamic and type-only imports alike. */
const specifiers = (f: string) => [...text.get(f)!.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*["']([^"']+)["']/g)].map((m) => m[1]!);
const name = (f: string) => relative(ROOT, f);

describe("imports in src/ and extension/", () => {
  it("form no cycle", () => {
    const graph = new Map(files.map((f) => [f, specifiers(f).filter((s) => s.startsWith(".")).map((s) => resolve(dirname(f), s.replace(/\.js$/, ".ts")))]));
    const cycles: string[] = [];
    const state = new Map<string, "open" | "done">();
    const visit = (f: string, path: string[]) => {
      state.set(f, "open");
      for (const g of graph.get(f) ?? []) {
        if (state.get(g) === "open") cycles.push([...path.slice(path.indexOf(g)), f, g].map(name).join(" → "));
        else if (!state.has(g) && graph.has(g)) visit(g, [...path, f]);
      }
      state.set(f, "done");
    };
    for (const f of files) if (!state.has(f)) visit(f, []);
    expect(cycles).toEqual([]);
  });

  it("reach the AWS SDK only through its adapters: the STS port's (sts-client.ts) and the CLI's (cli/aws.ts)", () => {
    const importers = files.filter((f) => specifiers(f).some((s) => s.startsWith("@aws-sdk/"))).map(name);
    expect(importers.sort()).toEqual(["src/cli/aws.ts", "src/sts-client.ts"]);
  });

  it("never subscribe to Node.js's diagnostics channels", () => {
    expect(files.filter((f) => specifiers(f).some((s) => /^(node:)?diagnostics_channel$/.test(s))).map(name)).toEqual([]);
  });
});
