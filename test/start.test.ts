/**
 * The README's `npm start`: the demo runs the built layer's extension against the stand-ins
 * and exits 0. (`--no-build`: the global set-up has built dist/layer, and rebuilding it here
 * would pull it from under the other test files.)
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./stack.js";

function run(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, "scripts", "start.mjs"), ...args], { cwd: ROOT });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d));
    child.stderr.on("data", (d: Buffer) => (out += d));
    child.on("close", (code) => resolve({ code, out }));
  });
}

describe("npm start", () => {
  it("tells the whole story and exits 0", async () => {
    const { code, out } = await run(["--no-build", "--lifetime", "6"]);
    expect(out).toMatch(/cold start/);
    expect(out).toMatch(/invoke 1 \(cold\)/);
    expect(out).toMatch(/inside the refresh window/);
    expect(out).toMatch(/after the thaw/);
    expect(out).toMatch(/SHUTDOWN: the extension exited with code 0/);
    expect(out).toMatch(/Databricks API calls refused: 0/);
    expect(code).toBe(0);
  }, 60_000);

  it("--help lists the options", async () => {
    const { code, out } = await run(["--help"]);
    expect(code).toBe(0);
    expect(out).toMatch(/--lifetime/);
  });
});
