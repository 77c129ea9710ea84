/**
 * The lifecycle in-process, with a scripted Extensions API: what happens in the moments after
 * registering, before the HTTP app (fastify, loaded only then) is ready. Lambda starts the
 * function's runtime as soon as the extension registered, so its first request, or a SHUTDOWN,
 * can come that early. The real STS client and fetch talk to the stand-ins.
 */
import { STSClient } from "@aws-sdk/client-sts";
import { webIdentityTokenPort } from "../src/sts-client.js";
import { afterEach, describe, expect, it } from "vitest";
import type { ExtensionsApi, LambdaEvent } from "../src/extensions-api.js";
import { run } from "../src/lifecycle.js";
import { createLogger, type Logger, silentLogger } from "../src/log.js";
import { CLIENT_ID, freePort, SESSION_TOKEN } from "./stack.js";
import { startDatabricks } from "./standins/databricks.js";
import { startSts } from "./standins/sts.js";

const sleep = (ms: number) => new Promise<"waiting">((r) => setTimeout(() => r("waiting"), ms));

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

/**
 * An Extensions API whose `register` runs `duringRegistration` before it answers (the listener
 * is up then, and run() waits on the answer), and whose events come from `send`.
 */
function scriptedApi(duringRegistration: () => Promise<void>) {
  const queued: LambdaEvent[] = [];
  let waiting: ((e: LambdaEvent) => void) | undefined;
  const api: ExtensionsApi = {
    async register() {
      await duringRegistration();
      return "extension-id";
    },
    next: (onSent) =>
      new Promise((resolve) => {
        onSent?.();
        const e = queued.shift();
        if (e) resolve(e);
        else waiting = resolve;
      }),
    initError: async () => {},
    exitError: async () => {},
  };
  const send = (e: LambdaEvent) => {
    const w = waiting;
    waiting = undefined;
    if (w) w(e);
    else queued.push(e);
  };
  return { api, send };
}

async function start(duringRegistration: (base: string) => Promise<void>, o: { env?: (port: number) => NodeJS.ProcessEnv; log?: Logger } = {}) {
  const sts = await startSts({ region: "us-east-1" });
  closers.push(() => sts.close());
  const db = await startDatabricks({
    policy: { issuer: sts.issuer, audiences: ["databricks"], subject: sts.settings.roleArn, servicePrincipalId: CLIENT_ID },
    lifetime: "subject-token",
  });
  closers.push(() => db.close());
  const client = new STSClient({
    region: "us-east-1",
    endpoint: sts.url,
    maxAttempts: 1,
    credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret", sessionToken: "session" },
  });
  closers.push(() => client.destroy());
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const { api, send } = scriptedApi(() => duringRegistration(base));
  const exit = run({
    env: {
      DATABRICKS_TOKEN_BROKER_ENABLED: "true",
      DATABRICKS_HOST: db.url,
      DATABRICKS_CLIENT_ID: CLIENT_ID,
      DATABRICKS_TOKEN_BROKER_PORT: String(port),
      AWS_REGION: "us-east-1",
      AWS_SESSION_TOKEN: SESSION_TOKEN,
      ...o.env?.(port),
    },
    api,
    makeLogger: () => o.log ?? silentLogger,
    loadSts: async () => webIdentityTokenPort(client),
    fetch: (input, init) => fetch(input, init),
  });
  const shutdown = async () => {
    const started = performance.now();
    send({ eventType: "SHUTDOWN", shutdownReason: "spindown", deadlineMs: Date.now() + 2_000 });
    const code = await exit;
    return { code, elapsedMs: performance.now() - started };
  };
  closers.push(async () => {
    send({ eventType: "SHUTDOWN", shutdownReason: "spindown", deadlineMs: Date.now() + 2_000 });
    await exit;
  });
  return { base, db, shutdown };
}

describe("right after registering, before the HTTP app is ready", () => {
  it("holds a token request that arrived while registering, then answers it 200", async () => {
    let answer: Promise<Response> | undefined;
    let early: string | undefined;
    const s = await start(async (base) => {
      answer = fetch(`${base}/token`, { headers: { "x-aws-session-token": SESSION_TOKEN } });
      // Taken, not refused, while the registration is pending; the extension cannot have
      // started on the HTTP app (nor on a token) before its registration was answered.
      early = await Promise.race([answer.then(() => "answered", () => "refused"), sleep(150)]);
    });
    await expect.poll(() => answer).toBeDefined();
    const r = await answer!;
    expect(early).toBe("waiting");
    expect(r.status).toBe(200);
    expect(r.headers.get("cache-control")).toBe("no-store");
    const body = (await r.json()) as { access_token: string; target: string };
    expect(body.target).toBe("default");
    expect(s.db.issuedTokens.map((t) => t.token)).toContain(body.access_token);
    // The held request and the prefetch shared one exchange.
    expect(s.db.exchanges.filter((e) => e.ok)).toHaveLength(1);
    expect(await s.shutdown()).toMatchObject({ code: 0 });
  });

  it("exits 0 on a SHUTDOWN that comes first, and stops listening", async () => {
    let base = "";
    const s = await start(async (b) => {
      base = b;
    });
    await expect.poll(() => base).not.toBe("");
    const { code, elapsedMs } = await s.shutdown();
    expect(code).toBe(0);
    expect(elapsedMs).toBeLessThan(1_500);
    await expect(fetch(`${base}/health`)).rejects.toThrow();
  });

  it("answers a request held when SHUTDOWN comes first, then exits 0 in time", async () => {
    let answer: Promise<Response> | undefined;
    let base = "";
    const s = await start(async (b) => {
      base = b;
      answer = fetch(`${b}/health`);
      await sleep(50);
    });
    await expect.poll(() => answer).toBeDefined();
    const { code, elapsedMs } = await s.shutdown();
    expect(code).toBe(0);
    expect(elapsedMs).toBeLessThan(1_500);
    const r = await answer!;
    expect(r.status).toBe(200);
    expect(r.headers.get("cache-control")).toBe("no-store");
    await expect(fetch(`${base}/health`)).rejects.toThrow();
  });
});

describe("configuration warnings", () => {
  it("SDK variables that would fail the SDKs: one warn line each at init, naming the SDK's error and the fix; init goes on", async () => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ level: "info", write: (l) => lines.push(JSON.parse(l) as Record<string, unknown>) });
    let base = "";
    const s = await start(
      async (b) => {
        base = b;
      },
      // DATABRICKS_CLIENT_ID is set, as for every service-principal policy; the port is not the broker's.
      { env: (port) => ({ DATABRICKS_METADATA_SERVICE_URL: `http://localhost:${port + 1}/metadata` }), log },
    );
    await expect.poll(() => base).not.toBe("");
    await expect.poll(() => lines.some((l) => l.msg === "registered")).toBe(true);
    const warnings = lines.filter((l) => l.level === "warn");
    expect(warnings).toEqual([
      expect.objectContaining({
        variable: "DATABRICKS_AUTH_TYPE",
        msg: expect.stringMatching(/more than one authorization method configured: metadata-service and oauth.*; fix: set DATABRICKS_AUTH_TYPE=metadata-service on the function$/),
      }),
      expect.objectContaining({ variable: "DATABRICKS_METADATA_SERVICE_URL", msg: expect.stringMatching(/it names port \d+, but the broker listens on \d+.*; fix: set DATABRICKS_METADATA_SERVICE_URL=http:\/\/localhost:\d+\/metadata on the function$/) }),
    ]);
    // Logged before listening, as the configuration is read.
    expect(lines.indexOf(warnings[1]!)).toBeLessThan(lines.findIndex((l) => l.msg === "listening"));
    expect((await fetch(`${base}/health`)).status).toBe(200);
    expect(await s.shutdown()).toMatchObject({ code: 0 });
  });
});
