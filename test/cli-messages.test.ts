/**
 * What the built programs say (issue 14): the extension started by hand points to `npm start`
 * and `doctor`; on Node.js 20 neither the CLI nor the extension passes on the AWS SDK's
 * multi-line Node.js notice, and the extension logs the news once, at debug.
 */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { logLines } from "./harness.js";
import { ROOT, startStack } from "./stack.js";

const exec = promisify(execFile);
const EXTENSION = join(ROOT, "dist", "layer", "databricks-token-broker", "index.cjs");
const CLI = join(ROOT, "dist", "layer", "databricks-token-broker", "cli.mjs");
/** The AWS SDK notices Node.js releases below this one; on a newer one there is nothing to hold back. */
const SDK_NODE_MAJOR = 22;
const OLD_NODE = Number(process.versions.node.split(".")[0]) < SDK_NODE_MAJOR;

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

describe("the AWS SDK's Node.js 20 notice (issue 14, item 7)", () => {
  // Everything the CLI could reach is a closed loopback port; the instance metadata lookup is off.
  const cliEnv = {
    PATH: process.env.PATH,
    HOME: "/nonexistent",
    AWS_REGION: "us-east-1",
    DATABRICKS_HOST: "https://dbc-1.cloud.databricks.com",
    AWS_ENDPOINT_URL_STS: "http://127.0.0.1:9",
    AWS_ENDPOINT_URL_IAM: "http://127.0.0.1:9",
    AWS_EC2_METADATA_DISABLED: "true",
  };

  it("the CLI prints none on stderr: its output is the report alone", async () => {
    const r = await runNode(CLI, ["doctor", "--json"], cliEnv);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.stdout) as { ok: boolean }).ok).toBe(false);
    expect(r.stderr).toBe("");
  });

  it.runIf(OLD_NODE)("…which the SDK would print on this Node.js: a user who asks for it still gets it", async () => {
    const r = await runNode(CLI, ["doctor", "--json"], { ...cliEnv, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "false" });
    expect(r.stderr).toContain("NodeVersionSupportWarning");
  });

  it("the extension logs no warn line for it; at debug, one line that says what to move to", async () => {
    for (const level of ["info", "debug"]) {
      const s = await startStack({ env: { DATABRICKS_TOKEN_BROKER_LOG_LEVEL: level } });
      try {
        await s.lambda.init;
        // The first token loads the AWS SDK, which is when it would warn.
        expect((await s.lambda.invoke(async () => (await s.token()).status)).result).toBe(200);
        await s.lambda.shutdown();
        const lines = logLines(s);
        expect(lines.filter((l) => JSON.stringify(l).includes("NodeVersionSupportWarning"))).toEqual([]);
        expect(lines.filter((l) => l.msg === "Node.js warning")).toEqual([]);
        expect(s.lambda.stderr.filter((l) => l.trim() !== "")).toEqual([]);
        const news = lines.filter((l) => String(l.msg).includes("past its end of life"));
        if (level === "debug" && OLD_NODE) {
          expect(news).toEqual([
            expect.objectContaining({
              level: "debug",
              msg: `Node.js ${process.version} is past its end of life (April 2026), and AWS SDK for JavaScript releases after the first week of January 2027 need Node.js 22 or later: move the function to nodejs22.x or nodejs24.x`,
            }),
          ]);
        } else {
          expect(news).toEqual([]);
        }
      } finally {
        await s.close();
      }
    }
  });
});
