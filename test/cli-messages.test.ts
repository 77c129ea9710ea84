/**
 * What the built programs say when a person runs them outside Lambda (issue 14): the extension
 * started by hand points to `npm start` and `doctor`.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { ROOT } from "./stack.js";

const exec = promisify(execFile);
const EXTENSION = join(ROOT, "dist", "layer", "databricks-token-broker", "index.cjs");

/** Runs `file` with `node` and only the variables given; resolves with its exit code and output. */
async function runNode(file: string, args: string[], env: Record<string, string | undefined>): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [file, ...args], { env: env as NodeJS.ProcessEnv, timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe("the extension run by hand (issue 14, item 6)", () => {
  it("says it runs inside Lambda, and points to npm start and databricks-token-broker doctor", async () => {
    const r = await runNode(EXTENSION, [], { PATH: process.env.PATH, HOME: "/nonexistent", DATABRICKS_TOKEN_BROKER_ENABLED: "true" });
    expect(r.code).toBe(1);
    const line = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { level: string; msg: string };
    expect(line.level).toBe("error");
    expect(line.msg).toMatch(/^AWS_LAMBDA_RUNTIME_API is not set: this program runs as a Lambda extension, started by Lambda from \/opt\/extensions\. /);
    expect(line.msg).toContain("To try it locally, run npm start in the databricks-token-broker repository");
    expect(line.msg).toContain("to check a configuration and your AWS credentials, run databricks-token-broker doctor");
  });
});
