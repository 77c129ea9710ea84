// Proves the Lambda stand-in against throw-away extensions, before the real extension's
// end-to-end tests rely on it.

import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startLambda, type LambdaEmulator, type StartLambdaOptions } from "./standins/lambda.js";

// Shared by every script: just enough of an Extensions API client.
const PRELUDE = `
const API = "http://" + process.env.AWS_LAMBDA_RUNTIME_API + "/2020-01-01/extension";
const log = (o) => console.log(JSON.stringify(o));
async function register(name, events, headers = {}) {
  const h = { ...headers };
  if (name !== undefined) h["Lambda-Extension-Name"] = name;
  const r = await fetch(API + "/register", { method: "POST", headers: h, body: JSON.stringify({ events }) });
  return { status: r.status, id: r.headers.get("lambda-extension-identifier"), body: await r.json() };
}
async function next(id) {
  const headers = id === undefined ? {} : { "Lambda-Extension-Identifier": id };
  const r = await fetch(API + "/event/next", { headers });
  return {
    status: r.status,
    eventId: r.headers.get("lambda-extension-event-identifier"),
    contentType: r.headers.get("content-type"),
    body: await r.json(),
  };
}
`;

let dir: string;
const running: LambdaEmulator[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "lambda-emulator-"));
});

afterEach(async () => {
  await Promise.all(running.splice(0).map((l) => l.close()));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** An executable script, as an extension is one in /opt/extensions: its file name is its name. */
async function script(name: string, body: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, `#!${process.execPath}\n${PRELUDE}${body}`);
  await chmod(path, 0o755);
  return path;
}

async function start(name: string, body: string, extra: Partial<StartLambdaOptions> = {}): Promise<LambdaEmulator> {
  const lambda = await startLambda({ command: await script(name, body), ...extra });
  running.push(lambda);
  return lambda;
}

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

function events(lambda: LambdaEmulator, kind: string): Record<string, unknown>[] {
  return lambda.stdout
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((o) => o.kind === kind);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

describe("Lambda emulator", () => {
  it("runs register, init, invoke and shutdown, and the extension exits 0", async () => {
    process.env.EMULATOR_TEST_PARENT_SECRET = "must-not-leak";
    let lambda: LambdaEmulator;
    try {
      lambda = await start(
        "ext-basic.mjs",
        `
import http from "node:http";
const reg = await register("ext-basic.mjs", ["INVOKE", "SHUTDOWN"], { "Lambda-Extension-Accept-Feature": "accountId" });
log({ kind: "register", ...reg, env: {
  region: process.env.AWS_REGION, fn: process.env.AWS_LAMBDA_FUNCTION_NAME,
  initType: process.env.AWS_LAMBDA_INITIALIZATION_TYPE, custom: process.env.CUSTOM,
  sessionToken: process.env.AWS_SESSION_TOKEN ?? null, leaked: process.env.EMULATOR_TEST_PARENT_SECRET ?? null,
  taskRoot: process.env.LAMBDA_TASK_ROOT ?? null } });
const server = http.createServer((req, res) => res.end("pong"));
await new Promise((r) => server.listen(0, "127.0.0.1", r));
log({ kind: "listening", port: server.address().port });
for (;;) {
  const ev = await next(reg.id);
  log({ kind: "event", ...ev });
  if (ev.body.eventType === "SHUTDOWN") { server.close(); process.exit(0); }
  // Work after the function returned keeps the invoke open.
  await new Promise((r) => setTimeout(r, 150));
}
`,
        { env: { CUSTOM: "yes", AWS_SESSION_TOKEN: undefined } },
      );
    } finally {
      delete process.env.EMULATOR_TEST_PARENT_SECRET;
    }

    const init = await lambda.init;
    expect(init.ok).toBe(true);
    if (!init.ok) return;
    expect(init.spawnToRegisteredMs).toBeGreaterThan(0);
    expect(init.spawnToReadyMs).toBeGreaterThanOrEqual(init.spawnToRegisteredMs);
    expect(lambda.registrations).toEqual([expect.objectContaining({ name: "ext-basic.mjs", kind: "external", events: ["INVOKE", "SHUTDOWN"] })]);

    const [reg] = events(lambda, "register");
    expect(reg).toMatchObject({
      status: 200,
      body: { functionName: "token-broker-demo", functionVersion: "$LATEST", handler: "index.handler", accountId: "123456789012" },
      env: { region: "us-east-1", fn: "token-broker-demo", initType: "on-demand", custom: "yes", sessionToken: null, leaked: null, taskRoot: null },
    });
    expect(reg?.id).toMatch(UUID);

    // Init complete, nothing to run: frozen until an invoke, as Lambda leaves it.
    expect(lambda.frozen).toBe(true);
    const port = (JSON.parse(await lambda.waitForLine(/"kind":"listening"/)) as { port: number }).port;
    const before = Date.now();
    const first = await lambda.invoke(async (ctx) => {
      const res = await fetch(`http://127.0.0.1:${port}/`);
      return `${await res.text()} ${ctx.requestId}`;
    });
    expect(first.result).toBe(`pong ${first.requestId}`);
    expect(lambda.frozen).toBe(true);
    expect(first.deliveredTo).toBe(1);
    expect(first.timedOut).toBe(false);
    // Complete only once the extension asked for the next event, ~150 ms after its INVOKE.
    expect((first.timings.extensionsDoneAt ?? 0) - first.timings.startedAt).toBeGreaterThanOrEqual(140);
    expect(first.timings.durationMs).toBeGreaterThanOrEqual(140);

    const invokeEvents = events(lambda, "event");
    expect(invokeEvents).toHaveLength(1);
    const invoke = invokeEvents[0] as { status: number; eventId: string; contentType: string; body: Record<string, unknown> };
    expect(invoke.status).toBe(200);
    expect(invoke.eventId).toMatch(UUID);
    expect(invoke.contentType).toBe("application/json");
    expect(invoke.body).toMatchObject({
      eventType: "INVOKE",
      requestId: first.requestId,
      invokedFunctionArn: "arn:aws:lambda:us-east-1:123456789012:function:token-broker-demo",
      tracing: { type: "X-Amzn-Trace-Id", value: expect.stringMatching(/^Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=[01]$/) },
    });
    expect(invoke.body.deadlineMs).toBeGreaterThanOrEqual(before + 3_000);
    expect(invoke.body.deadlineMs).toBeLessThan(Date.now() + 3_000);

    // With no function code the invoke is all extension time after the function returned.
    const second = await lambda.invoke();
    expect(second.requestId).not.toBe(first.requestId);
    expect(second.result).toBeUndefined();
    const { handlerDoneAt, extensionsDoneAt, postRuntimeMs } = second.timings;
    expect(extensionsDoneAt).toBeGreaterThan(handlerDoneAt ?? Infinity);
    expect(postRuntimeMs).toBeCloseTo((extensionsDoneAt ?? 0) - (handlerDoneAt ?? 0), 6);
    expect(postRuntimeMs).toBeGreaterThanOrEqual(100);

    const beforeShutdown = Date.now();
    const down = await lambda.shutdown();
    expect(down).toMatchObject({ reason: "spindown", code: 0, signal: null, killed: false });
    // Inside the 2 s deadline (killed: false says so); how far inside is the bench's to measure.
    expect(down.elapsedMs).toBeLessThan(2_000);
    const shutdown = events(lambda, "event").at(-1) as { eventId: string | null; body: Record<string, unknown> };
    expect(shutdown.body).toEqual({ eventType: "SHUTDOWN", shutdownReason: "spindown", deadlineMs: down.deadlineMs });
    expect(down.deadlineMs).toBeGreaterThanOrEqual(beforeShutdown + 2_000);
    expect(shutdown.eventId).toBeNull();
    expect(lambda.alive).toBe(false);
  });

  it("refuses a registration under another name than the executable's, and unknown identifiers", async () => {
    const lambda = await start(
      "ext-named.mjs",
      `
log({ kind: "result", case: "no-name", ...(await register(undefined, ["INVOKE", "SHUTDOWN"])) });
log({ kind: "result", case: "wrong-name", ...(await register("someone-else", ["INVOKE", "SHUTDOWN"])) });
log({ kind: "result", case: "no-id", ...(await next(undefined)) });
log({ kind: "result", case: "bad-id", ...(await next("not-a-uuid")) });
log({ kind: "result", case: "unknown-id", ...(await next(crypto.randomUUID())) });
log({ kind: "result", case: "bad-event", ...(await register("ext-named.mjs", ["INVOKE", "LOGS"])) });
process.exit(3);
`,
    );
    const init = await lambda.init;
    expect(init).toMatchObject({ ok: false, status: "exited", code: 3 });
    const byCase = Object.fromEntries(events(lambda, "result").map((r) => [r.case, r]));
    expect(byCase["no-name"]).toMatchObject({ status: 403, id: null, body: { errorType: "Extension.InvalidExtensionName", errorMessage: "Empty extension name" } });
    // Lambda takes an unknown name for an internal extension, and those may not ask for SHUTDOWN.
    expect(byCase["wrong-name"]).toMatchObject({
      status: 403,
      id: null,
      body: { errorType: "Extension.InvalidEventType", errorMessage: expect.stringContaining("SHUTDOWN") },
    });
    expect(byCase["no-id"]).toMatchObject({ status: 403, body: { errorType: "Extension.MissingExtensionIdentifier" } });
    expect(byCase["bad-id"]).toMatchObject({ status: 403, body: { errorType: "Extension.InvalidExtensionIdentifier" } });
    expect(byCase["unknown-id"]).toMatchObject({ status: 403, body: { errorType: "Extension.UnknownExtensionIdentifier" } });
    expect(byCase["bad-event"]).toMatchObject({ status: 403, body: { errorType: "Extension.InvalidEventType", errorMessage: "LOGS: ErrorInvalidEventType" } });
    expect(lambda.registrations).toEqual([]);
  });

  it("records init/error, fails the init and kills the process", async () => {
    const lambda = await start(
      "ext-initerr.mjs",
      `
const reg = await register("ext-initerr.mjs", ["INVOKE", "SHUTDOWN"]);
const r = await fetch(API + "/init/error", {
  method: "POST",
  headers: { "Lambda-Extension-Identifier": reg.id, "Lambda-Extension-Function-Error-Type": "Extension.ConfigInvalid" },
  body: JSON.stringify({ errorMessage: "DATABRICKS_HOST is not set", errorType: "Extension.ConfigInvalid", stackTrace: [] }),
});
log({ kind: "init-error", status: r.status, body: await r.json() });
log({ kind: "after", ...(await next(reg.id)) });
// Lingers on purpose: the reset has to end it.
setInterval(() => {}, 1000);
`,
    );
    const init = await lambda.init;
    expect(init).toMatchObject({ ok: false, status: "failed", errorType: "Extension.ConfigInvalid" });
    expect(lambda.initErrors).toEqual([
      expect.objectContaining({
        extensionName: "ext-initerr.mjs",
        errorType: "Extension.ConfigInvalid",
        body: { errorMessage: "DATABRICKS_HOST is not set", errorType: "Extension.ConfigInvalid", stackTrace: [] },
      }),
    ]);
    const exit = await lambda.exited;
    expect(exit.signal).toBe("SIGKILL");
    expect(events(lambda, "init-error")[0]).toEqual({ kind: "init-error", status: 202, body: { status: "OK" } });
    expect(events(lambda, "after")[0]).toMatchObject({ status: 403, body: { errorType: "Extension.InvalidExtensionState" } });
    await expect(lambda.invoke()).rejects.toThrow(/init failed/);
  });

  it("refuses INVOKE registration on Lambda Managed Instances and runs invokes without it", async () => {
    const lambda = await start(
      "ext-lmi.mjs",
      `
log({ kind: "result", case: "invoke", ...(await register("ext-lmi.mjs", ["INVOKE", "SHUTDOWN"])) });
const reg = await register("ext-lmi.mjs", ["SHUTDOWN"]);
log({ kind: "result", case: "shutdown-only", ...reg });
for (;;) {
  const ev = await next(reg.id);
  log({ kind: "event", ...ev });
  if (ev.body.eventType === "SHUTDOWN") process.exit(0);
}
`,
      { env: { AWS_LAMBDA_INITIALIZATION_TYPE: "lambda-managed-instances" } },
    );
    expect((await lambda.init).ok).toBe(true);
    const [refused, accepted] = events(lambda, "result");
    expect(refused).toMatchObject({
      status: 403,
      id: null,
      body: { errorType: "Extension.InvalidEventType", errorMessage: "INVOKE: ErrorInvalidEventType" },
    });
    expect(accepted).toMatchObject({ status: 200, id: expect.stringMatching(UUID) });

    // Many invokes at once, none of them seen by the extension.
    const results = await Promise.all([1, 2, 3].map((n) => lambda.invoke(async () => n * 2)));
    expect(results.map((r) => [r.result, r.deliveredTo])).toEqual([
      [2, 0],
      [4, 0],
      [6, 0],
    ]);
    expect(() => lambda.freeze()).toThrow(/never frozen/);
    expect(await lambda.shutdown()).toMatchObject({ code: 0, killed: false });
    expect(events(lambda, "event").map((e) => (e.body as { eventType: string }).eventType)).toEqual(["SHUTDOWN"]);
  });

  /** A launcher that does not exec, so the extension's node is a grandchild, as with a shell wrapper in /opt/extensions. */
  async function ticker(extra: Partial<StartLambdaOptions> = {}): Promise<LambdaEmulator> {
    await script(
      "ticker.mjs",
      `
const reg = await register("ticker", ["INVOKE", "SHUTDOWN"]);
log({ kind: "pids", pid: process.pid, ppid: process.ppid });
let n = 0;
setInterval(() => console.log("tick " + n++), 50);
for (;;) {
  const ev = await next(reg.id);
  if (ev.body.eventType === "SHUTDOWN") process.exit(0);
}
`,
    );
    const launcher = join(dir, "ticker");
    await writeFile(launcher, `#!/bin/sh\n"$NODE_BIN" "$(dirname "$0")/ticker.mjs"\n`);
    await chmod(launcher, 0o755);
    const lambda = await startLambda({ command: launcher, env: { NODE_BIN: process.execPath }, ...extra });
    running.push(lambda);
    return lambda;
  }
  const ticks = (lambda: LambdaEmulator) => lambda.stdout.filter((l) => l.startsWith("tick ")).length;
  const lastTick = (lambda: LambdaEmulator) => Number(lambda.stdout.filter((l) => l.startsWith("tick ")).at(-1)?.slice(5) ?? -1);

  it("freezes and thaws the whole process group, launcher and all", async () => {
    const lambda = await ticker({ freezeWhenIdle: false });
    expect((await lambda.init).ok).toBe(true);
    expect(lambda.frozen).toBe(false);
    const pids = events(lambda, "pids")[0] as { pid: number; ppid: number };
    expect(pids.pid).not.toBe(lambda.pid);
    expect(pids.ppid).toBe(lambda.pid);
    await lambda.waitForLine(/^tick 3$/);

    lambda.freeze();
    expect(lambda.frozen).toBe(true);
    await settle(50);
    const frozenAt = lambda.stdout.length;
    await settle(300);
    expect(lambda.stdout.length).toBe(frozenAt);

    lambda.thaw();
    const last = lastTick(lambda);
    await lambda.waitForLine((l) => l.startsWith("tick ") && Number(l.slice(5)) > last, { timeoutMs: 5_000 });

    // An invoke thaws a frozen environment first, as Lambda does.
    lambda.freeze();
    const result = await lambda.invoke(() => "ok");
    expect(result.result).toBe("ok");
    expect(lambda.frozen).toBe(false);

    expect(await lambda.shutdown()).toMatchObject({ code: 0, killed: false });
  });

  it("by default freezes once init completes and after every invoke, and runs the extension only inside invokes", async () => {
    const lambda = await ticker();
    expect((await lambda.init).ok).toBe(true);
    expect(lambda.frozen).toBe(true);
    // Whatever was written before the freeze drains; then nothing more comes.
    await settle(100);
    const afterInit = ticks(lambda);
    await settle(300);
    expect(ticks(lambda)).toBe(afterInit);

    // Inside an invoke the process runs (the handler waits for a tick it did not see before).
    const before = lastTick(lambda);
    await lambda.invoke(() => lambda.waitForLine((l) => l.startsWith("tick ") && Number(l.slice(5)) > before, { timeoutMs: 5_000 }));
    expect(lambda.frozen).toBe(true);
    await settle(100);
    const afterInvoke = ticks(lambda);
    expect(afterInvoke).toBeGreaterThan(afterInit);
    await settle(300);
    expect(ticks(lambda)).toBe(afterInvoke);

    // A shutdown thaws it to deliver SHUTDOWN.
    expect(await lambda.shutdown()).toMatchObject({ code: 0, killed: false });
  });

  it("knows the extension by its executable's file name, as Lambda does", async () => {
    // The same program under another file name: its registration as "ext-real.mjs" is now an internal extension's.
    const body = `
const reg = await register("ext-real.mjs", ["INVOKE", "SHUTDOWN"]);
log({ kind: "result", ...reg });
process.exit(0);
`;
    const renamed = await start("ext-renamed.mjs", body);
    await renamed.exited;
    expect(events(renamed, "result")[0]).toMatchObject({ status: 403, body: { errorType: "Extension.InvalidEventType", errorMessage: "SHUTDOWN: ShutdownEventNotSupportedForInternalExtension" } });
    const real = await start("ext-real.mjs", body);
    await real.exited;
    expect(events(real, "result")[0]).toMatchObject({ status: 200 });
    expect(real.registrations).toEqual([expect.objectContaining({ name: "ext-real.mjs", kind: "external" })]);
  });

  it("runs the function's init code once the extension registered, and completes init when both are done", async () => {
    const body = `
const reg = await register(process.argv[1].split("/").pop(), ["INVOKE", "SHUTDOWN"]);
await new Promise((r) => setTimeout(r, 200));
for (;;) {
  const ev = await next(reg.id);
  if (ev.body.eventType === "SHUTDOWN") process.exit(0);
}
`;
    let lambda: LambdaEmulator | undefined;
    const seen: { registered: number; firstNext: number | undefined }[] = [];
    lambda = await start("ext-fninit.mjs", body, {
      functionInit: async () => {
        seen.push({ registered: lambda!.registrations.length, firstNext: lambda!.timings.firstNextAt });
        await settle(400);
        return "init code done";
      },
    });
    const init = await lambda.init;
    expect(init).toMatchObject({ ok: true, functionInit: "init code done" });
    // Started after the registration, before the extension was ready; init waited for the slower of the two.
    expect(seen).toEqual([{ registered: 1, firstNext: undefined }]);
    expect(lambda.frozen).toBe(true);

    const failing = await start("ext-fninit-fails.mjs", body, {
      functionInit: () => {
        throw new Error("module not found");
      },
    });
    expect(await failing.init).toMatchObject({ ok: false, status: "failed", errorType: "Function.InitError" });
    expect(failing.initErrors).toEqual([expect.objectContaining({ errorType: "Function.InitError", body: "module not found" })]);
  });

  it("kills an extension that ignores SHUTDOWN once the deadline passes", async () => {
    const lambda = await start(
      "ext-stubborn.mjs",
      `
const reg = await register("ext-stubborn.mjs", ["SHUTDOWN"]);
const ev = await next(reg.id);
log({ kind: "event", ...ev });
setInterval(() => {}, 1000);
`,
    );
    expect((await lambda.init).ok).toBe(true);
    const down = await lambda.shutdown("failure");
    expect(down).toMatchObject({ reason: "failure", killed: true, signal: "SIGKILL", code: null });
    expect(down.elapsedMs).toBeGreaterThanOrEqual(1_900);
    // Killed at the deadline, not left running: how soon after it is the machine's load.
    expect(down.elapsedMs).toBeLessThan(10_000);
    expect(events(lambda, "event")[0]).toMatchObject({ body: { eventType: "SHUTDOWN", shutdownReason: "failure" } });
  });

  it("fails an init that never completes and kills the process", async () => {
    const lambda = await start("ext-silent.mjs", `setInterval(() => {}, 1000);`, { initTimeoutMs: 300 });
    expect(await lambda.init).toEqual({ ok: false, status: "timeout", timeoutMs: 300 });
    expect((await lambda.exited).signal).toBe("SIGKILL");
  });

  it("resets the environment with a timeout SHUTDOWN when an invoke outlives the function timeout", async () => {
    const lambda = await start(
      "ext-slow.mjs",
      `
const reg = await register("ext-slow.mjs", ["INVOKE", "SHUTDOWN"]);
for (;;) {
  const ev = await next(reg.id);
  log({ kind: "event", ...ev });
  if (ev.body.eventType === "SHUTDOWN") process.exit(0);
  await new Promise((r) => setTimeout(r, 600));
}
`,
      { functionTimeoutMs: 300 },
    );
    expect((await lambda.init).ok).toBe(true);
    const result = await lambda.invoke();
    expect(result.timedOut).toBe(true);
    expect(result.shutdown).toMatchObject({ reason: "timeout", code: 0, killed: false });
    expect(events(lambda, "event").map((e) => (e.body as { eventType: string }).eventType)).toEqual(["INVOKE", "SHUTDOWN"]);
  });
});
