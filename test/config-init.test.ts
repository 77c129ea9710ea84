/**
 * Bad configuration, one variable at a time, through the real extension process: each fails
 * the function's init through the Extensions API `init/error` call with a message that names
 * the variable, and the process exits without any token work. The processes start concurrently;
 * each lives well under a second.
 */
import { createServer } from "node:net";
import { beforeAll, describe, expect, it } from "vitest";
import { logLines, pool } from "./harness.js";
import { type Stack, startStack } from "./stack.js";

const P = "DATABRICKS_TOKEN_BROKER_";

interface Case {
  /** The variable the message must name (for targets, the dotted path into the JSON). */
  names: string;
  env: Record<string, string | undefined>;
}

const ACCOUNTS = "https://accounts.cloud.databricks.com";
const cases: Case[] = [
  { names: "DATABRICKS_HOST", env: { DATABRICKS_HOST: undefined } },
  { names: "DATABRICKS_HOST", env: { DATABRICKS_HOST: "   " } },
  { names: "DATABRICKS_HOST", env: { DATABRICKS_HOST: "ftp://dbc-1.cloud.databricks.com" } },
  { names: "DATABRICKS_HOST", env: { DATABRICKS_HOST: "http://dbc-1.cloud.databricks.com" } },
  { names: "DATABRICKS_HOST", env: { DATABRICKS_HOST: "https://dbc-1.cloud.databricks.com/some/path" } },
  { names: "DATABRICKS_HOST", env: { DATABRICKS_HOST: "not a host at all" } },
  { names: "DATABRICKS_CLIENT_ID", env: { DATABRICKS_CLIENT_ID: "has a space" } },
  { names: "DATABRICKS_ACCOUNT_ID", env: { DATABRICKS_HOST: ACCOUNTS } },
  { names: "DATABRICKS_ACCOUNT_ID", env: { DATABRICKS_HOST: ACCOUNTS, DATABRICKS_ACCOUNT_ID: "../../etc" } },
  { names: `${P}SCOPE`, env: { [`${P}SCOPE`]: "all-apis  sql" } },
  { names: `${P}AUDIENCE`, env: { [`${P}AUDIENCE`]: "two words" } },
  { names: `${P}SIGNING_ALGORITHM`, env: { [`${P}SIGNING_ALGORITHM`]: "HS256" } },
  { names: `${P}STS_DURATION_SECONDS`, env: { [`${P}STS_DURATION_SECONDS`]: "59" } },
  { names: `${P}STS_DURATION_SECONDS`, env: { [`${P}STS_DURATION_SECONDS`]: "3601" } },
  { names: `${P}STS_DURATION_SECONDS`, env: { [`${P}STS_DURATION_SECONDS`]: "5m" } },
  { names: `${P}PORT`, env: { [`${P}PORT`]: "0" } },
  { names: `${P}PORT`, env: { [`${P}PORT`]: "65536" } },
  { names: `${P}PORT`, env: { [`${P}PORT`]: "9001" } },
  { names: `${P}PORT`, env: { [`${P}PORT`]: "http" } },
  { names: `${P}REFRESH_AHEAD_SECONDS`, env: { [`${P}REFRESH_AHEAD_SECONDS`]: "-1" } },
  { names: `${P}REFRESH_AHEAD_SECONDS`, env: { [`${P}REFRESH_AHEAD_SECONDS`]: "10" } },
  { names: `${P}MIN_TTL_SECONDS`, env: { [`${P}MIN_TTL_SECONDS`]: "1.5" } },
  { names: `${P}MIN_TTL_SECONDS`, env: { [`${P}MIN_TTL_SECONDS`]: "86401" } },
  // Above the default refresh window: the variable the user set is the one named (issue 14, item 6).
  { names: `${P}MIN_TTL_SECONDS`, env: { [`${P}MIN_TTL_SECONDS`]: "700" } },
  { names: `${P}WAIT_SECONDS`, env: { [`${P}WAIT_SECONDS`]: "0" } },
  { names: `${P}WAIT_SECONDS`, env: { [`${P}WAIT_SECONDS`]: "901" } },
  { names: `${P}WAIT_SECONDS`, env: { [`${P}WAIT_SECONDS`]: "ten" } },
  { names: `${P}TOKEN_ENDPOINT`, env: { [`${P}TOKEN_ENDPOINT`]: "http://dbc-1.cloud.databricks.com/oidc/v1/token" } },
  { names: `${P}TOKEN_ENDPOINT`, env: { [`${P}TOKEN_ENDPOINT`]: "not a url" } },
  { names: `${P}TOKEN_ENDPOINT`, env: { [`${P}TOKEN_ENDPOINT`]: "https://user:pass@dbc-1.cloud.databricks.com/oidc/v1/token" } },
  { names: `${P}TARGETS`, env: { [`${P}TARGETS`]: "{" } },
  { names: `${P}TARGETS`, env: { [`${P}TARGETS`]: "[]" } },
  { names: `${P}TARGETS.bad name!`, env: { [`${P}TARGETS`]: '{"bad name!": {"host": "https://dbc-2.cloud.databricks.com"}}' } },
  { names: `${P}TARGETS.default`, env: { [`${P}TARGETS`]: '{"default": {"host": "https://dbc-2.cloud.databricks.com"}}' } },
  { names: `${P}TARGETS.t.secret`, env: { [`${P}TARGETS`]: '{"t": {"host": "https://dbc-2.cloud.databricks.com", "secret": "x"}}' } },
  { names: `${P}TARGETS.t.host`, env: { [`${P}TARGETS`]: '{"t": {"host": 5}}' } },
  { names: `${P}TARGETS.t.host`, env: { [`${P}TARGETS`]: '{"t": {"host": "http://evil.example"}}' } },
  { names: `${P}TARGETS.t.account_id`, env: { [`${P}TARGETS`]: `{"t": {"host": "${ACCOUNTS}"}}` } },
  { names: `${P}LOG_LEVEL`, env: { [`${P}LOG_LEVEL`]: "verbose" } },
  { names: "AWS_REGION", env: { AWS_REGION: undefined, AWS_DEFAULT_REGION: undefined } },
];

interface Run {
  stack: Stack;
  message: string;
  errorType: string;
  exitCode: number | null;
  leaks: string[];
}

const runs = new Map<Case, Run | Error>();

async function run(c: Case, extra: Record<string, string | undefined> = {}): Promise<Run> {
  const s = await startStack({ env: { ...c.env, ...extra } });
  try {
    const init = await s.lambda.init;
    if (init.ok) throw new Error("init succeeded");
    const exit = await s.lambda.exited;
    const report = s.lambda.initErrors[0];
    return {
      stack: s,
      message: (report?.body as { errorMessage?: string } | undefined)?.errorMessage ?? "",
      errorType: report?.errorType ?? "",
      exitCode: exit.code,
      leaks: await s.leaks(),
    };
  } finally {
    await s.close();
  }
}

beforeAll(async () => {
  // A few at a time: starting dozens of processes at once would starve the files beside this one.
  await pool(cases, 8, async (c) => runs.set(c, await run(c).catch((e: Error) => e)));
}, 60_000);

describe("bad configuration fails the init, naming the variable", () => {
  it.each(cases.map((c) => [`${c.names} = ${JSON.stringify(Object.values(c.env)[0] ?? null)}`, c] as const))("%s", (_label, c) => {
    const r = runs.get(c)!;
    if (r instanceof Error) throw r;
    expect(r.errorType).toBe("Extension.ConfigInvalid");
    expect(r.message).toContain(`${c.names}: `);
    expect(r.message).toMatch(/^databricks-token-broker: invalid configuration: /);
    expect(r.exitCode).toBe(1);
    expect(r.stack.lambda.initErrors).toHaveLength(1);
    // No token work was attempted with a configuration that was refused.
    expect(r.stack.sts.calls).toHaveLength(0);
    expect(r.leaks).toEqual([]);
  });

  it("names every bad variable in one message when several are bad", async () => {
    const r = await run({ names: "", env: {} }, { DATABRICKS_HOST: "http://example.com", [`${P}PORT`]: "x", [`${P}SIGNING_ALGORITHM`]: "none", [`${P}WAIT_SECONDS`]: "-3", [`${P}LOG_LEVEL`]: "loud" });
    for (const v of ["DATABRICKS_HOST", `${P}PORT`, `${P}SIGNING_ALGORITHM`, `${P}WAIT_SECONDS`, `${P}LOG_LEVEL`]) expect(r.message).toContain(`${v}: `);
    expect(r.stack.lambda.initErrors).toHaveLength(1);
  });

  it("a port already taken fails the init naming DATABRICKS_TOKEN_BROKER_PORT", async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    try {
      const port = (taken.address() as { port: number }).port;
      const r = await run({ names: `${P}PORT`, env: {} }, { [`${P}PORT`]: String(port) });
      expect(r.errorType).toBe("Extension.ListenFailed");
      expect(r.message).toContain(`${P}PORT: `);
      expect(r.message).toContain(String(port));
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  });

  it("a port taken on ::1 alone fails the init too, where the host has IPv6 loopback", async (ctx) => {
    const taken = createServer();
    const bound = await new Promise<boolean>((resolve) => {
      taken.once("error", () => resolve(false));
      taken.listen(0, "::1", () => resolve(true));
    });
    if (!bound) ctx.skip();
    try {
      const port = (taken.address() as { port: number }).port;
      const r = await run({ names: `${P}PORT`, env: {} }, { [`${P}PORT`]: String(port) });
      expect(r.errorType).toBe("Extension.ListenFailed");
      expect(r.message).toContain(`${P}PORT: port ${port} is in use`);
      expect(r.exitCode).toBe(1);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  });

  it("SDK variables the SDKs would refuse warn at init (the service-principal set-up without DATABRICKS_AUTH_TYPE), not a failed init", async () => {
    // The stack sets DATABRICKS_CLIENT_ID, as a service-principal policy does.
    const s = await startStack({ env: { DATABRICKS_METADATA_SERVICE_URL: "http://localhost:2775/metadata", DATABRICKS_AUTH_TYPE: undefined } });
    try {
      expect(await s.lambda.init).toMatchObject({ ok: true });
      const warned = logLines(s).filter((l) => l.level === "warn" && l.variable === "DATABRICKS_AUTH_TYPE");
      expect(warned).toHaveLength(1);
      expect(warned[0]?.msg).toContain('"validate: more than one authorization method configured: metadata-service and oauth"');
      expect(warned[0]?.msg).toContain("fix: set DATABRICKS_AUTH_TYPE=metadata-service on the function");
      expect((await s.get("/health")).status).toBe(200);
      expect((await s.lambda.shutdown()).code).toBe(0);
    } finally {
      await s.close();
    }
  });

  it("an unrecognised DATABRICKS_TOKEN_BROKER_ENABLED leaves the broker off with a warning, not a failed init", async () => {
    const s = await startStack({ env: { [`${P}ENABLED`]: "yes please" } });
    try {
      expect(await s.lambda.init).toMatchObject({ ok: true });
      expect(s.lambda.registrations[0]?.events).toEqual(["SHUTDOWN"]);
      expect(logLines(s).some((l) => l.level === "warn" && String(l.msg).includes(`${P}ENABLED`))).toBe(true);
      expect((await s.lambda.shutdown()).code).toBe(0);
    } finally {
      await s.close();
    }
  });
});
