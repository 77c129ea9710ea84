/**
 * The shape of the source (issue 11, STYLE.md practices 11–13): no import cycle, the AWS SDK
 * behind its adapters only, no hook into Node.js's diagnostics channels, short functions.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
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

/** STYLE.md practice 13: about 60 lines of a function's own, not counting the functions nested in it. */
const MAX_OWN_LINES = 60;

/** Every function's own line count: its lines less those of the functions nested in it. */
function ownLines(file: string): { name: string; lines: number }[] {
  const sf = ts.createSourceFile(file, text.get(file)!, ts.ScriptTarget.Latest, true);
  const line = (pos: number) => sf.getLineAndCharacterOfPosition(pos).line;
  const out: { name: string; lines: Set<number> }[] = [];
  const visit = (node: ts.Node, parent: { lines: Set<number> } | undefined) => {
    if (ts.isFunctionLike(node) && "body" in node && node.body) {
      const lines = new Set<number>();
      for (let l = line(node.getStart()); l <= line(node.end); l++) lines.add(l);
      for (const l of lines) parent?.lines.delete(l);
      const own = { name: `${name(file)}:${line(node.getStart()) + 1}`, lines };
      out.push(own);
      ts.forEachChild(node, (c) => visit(c, own));
    } else ts.forEachChild(node, (c) => visit(c, parent));
  };
  visit(sf, undefined);
  return out.map((f) => ({ name: f.name, lines: f.lines.size }));
}

describe("functions in src/ and extension/", () => {
  it(`are at most ${MAX_OWN_LINES} lines of their own`, () => {
    const long = files.flatMap(ownLines).filter((f) => f.lines > MAX_OWN_LINES);
    expect(long).toEqual([]);
  });
});
