// Lambda Managed Instances (SPEC §4) under AWS's Lambda emulator in its Managed Instances mode
// (AWS_LAMBDA_MAX_CONCURRENCY set, AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances):
// the built layer beside the Node.js function of node.test.ts, run by aws-lambda-ric in its
// multi-concurrent mode (worker threads, each taking several invokes at once).
//
// What RIE's Managed Instances mode enforces, read from its source (internal/lambda-managed-
// instances): an external extension may register for SHUTDOWN only (INVOKE is refused with
// 403); init runs when RIE starts, not at the first invoke; invokes run concurrently, each on
// a runtime /next that is waiting, and one that finds none is refused at once (400
// Runtime.Unavailable: no queue, so the test retries it, as a caller retries a throttle); on
// SIGTERM it stops the runtime first (600 ms), then sends SHUTDOWN (reason "spindown", 2 s
// deadline); every process runs as uid 993; it runs only a bootstrap file, never the command
// line. What it does not emulate that matters here: nothing freezes (true of Managed Instances
// too, which is why the broker refreshes on a timer there); Lambda's router, which sends an
// environment only what it can absorb; and Node.js 22+, which Lambda requires for Managed
// Instances (this machine runs Node.js 20).
//
// Why aws-lambda-ric rather than awslambdaric: both work here with concurrency > 1 (awslambdaric
// 4.2.2 forks one process per concurrent invoke and needs the event sent as application/json),
// but the runtime runs as uid 993 and this machine's test Python lives in a private home
// directory; Node.js is at a path any user may run. Its worker count is set to 2 with Lambda's
// documented AWS_LAMBDA_NODEJS_WORKER_COUNT: the default, 8 per CPU, parks one blocking native
// /next per worker on libuv's 4-thread pool, and from 4 workers on, the handlers' DNS lookups
// (fetch to localhost) wait behind them until undici's 10 s connect timeout ("fetch failed").
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fastEnv } from "../harness.js";
import { assertRunnableBySandboxUser, bundleNodeFunction, type NodeFunction } from "./node-function.js";
import { type PeerStack, startPeerStack } from "./peer-stack.js";
import type { Rie } from "./rie.js";

const CONCURRENCY = 4;

/** Resolves with the `n`th line matching `re` (1-based), polling the lines RIE has written. */
async function nth(rie: Rie, re: RegExp, n: number, timeoutMs = 20_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = rie.lines.filter((l) => re.test(l));
    if (found.length >= n) return found[n - 1]!;
    if (Date.now() > until) throw new Error(`fewer than ${n} lines matching ${re} within ${timeoutMs} ms:\n${rie.lines.slice(-30).join("\n")}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Invokes, retrying RIE's immediate refusal when no runtime /next is waiting. */
async function invoke(s: PeerStack, event: unknown): Promise<Record<string, unknown>> {
  for (let attempt = 0; ; attempt++) {
    const r = await s.rie.invoke(event, 30_000);
    if (r.status === 400 && /Runtime\.Unavailable/.test(r.body) && attempt < 200) {
      await new Promise((res) => setTimeout(res, 25));
      continue;
    }
    expect(r.status, r.body).toBe(200);
    return JSON.parse(r.body) as Record<string, unknown>;
  }
}

/** A loopback GET that answers no one until `parties` requests are waiting: proof they ran at once. */
async function barrier(parties: number): Promise<{ url: string; arrived: () => number; close: () => Promise<void> }> {
  const waiting: ServerResponse[] = [];
  let arrived = 0;
  const server: Server = createServer((_req, res) => {
    arrived++;
    waiting.push(res);
    if (waiting.length >= parties) for (const w of waiting.splice(0)) w.end("go");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    arrived: () => arrived,
    close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))),
  };
}

const tokenOf = (line: string) => (JSON.parse(line) as { token: string }).token;
const REFRESHED = /"msg":"token refreshed"/;

let fn: NodeFunction;
let s: PeerStack;
beforeAll(async () => {
  fn = await bundleNodeFunction();
  assertRunnableBySandboxUser([process.execPath, fn.ric]);
  s = await startPeerStack({
    task: fn.task,
    bootstrap: fn.bootstrap,
    // 6 s tokens, refreshed from 3 s left, never served under 2 s.
    db: { expiresIn: 6 },
    env: { ...fastEnv(), AWS_LAMBDA_NODEJS_WORKER_COUNT: "2" },
    // Debug: RIE then logs the registration's events, init's report and each process's exit status.
    rie: { maxConcurrency: CONCURRENCY, logLevel: "debug" },
  });
});
afterAll(async () => {
  await s?.close();
  await fn?.remove();
});

describe("Lambda Managed Instances (RIE's Managed Instances mode, aws-lambda-ric multi-concurrent)", () => {
  it("registers for SHUTDOWN only; init completes and the first token is fetched before any invoke", async () => {
    const registered = JSON.parse(await s.rie.waitFor(/"msg":"registered"/)) as Record<string, unknown>;
    expect(registered).toMatchObject({ events: ["SHUTDOWN"], initializationType: "lambda-managed-instances" });
    expect(await s.rie.waitFor(/External agent registered/)).toMatch(/agentName=databricks-token-broker .*events=\[SHUTDOWN\]/);
    // RIE inits at start: no invoke has been sent yet.
    expect(await s.rie.waitFor(/Init report data/)).toMatch(/INIT REPORT\(initType: lambda-managed-instances, .*status: success/);
    await s.rie.waitFor(REFRESHED);
    expect(s.rie.lines.some((l) => /^START RequestId/.test(l))).toBe(false);
  });

  it(`serves ${CONCURRENCY} concurrent invokes, each asking at once, one through the SDK`, async () => {
    const gate = await barrier(CONCURRENCY);
    try {
      const events = Array.from({ length: CONCURRENCY }, (_, i) => ({ use: i === 0 ? "sdk" : "token", barrier: gate.url }));
      const answers = await Promise.all(events.map((e) => invoke(s, e)));
      for (const a of answers) expect(a).toMatchObject({ ok: true, user_name: s.user });
      // All were inside the handler together before any asked the broker.
      expect(gate.arrived()).toBe(CONCURRENCY);
    } finally {
      await gate.close();
    }
    // Every call Databricks saw was authorised.
    const me = s.db.apiCalls.filter((c) => c.path.endsWith("/scim/v2/Me"));
    expect(me).toHaveLength(CONCURRENCY);
    expect(me.every((c) => c.status === 200)).toBe(true);
  });

  it("refreshes on a timer (no INVOKE reaches the extension) and serves the refreshed token", async () => {
    const refreshed = s.rie.lines.filter((l) => REFRESHED.test(l));
    const before = refreshed.length;
    // One more exchange with no invoke at all: the sweep, not an event, drives it.
    const next = await nth(s.rie, REFRESHED, before + 1);
    expect(tokenOf(next)).not.toBe(tokenOf(refreshed.at(-1)!));
    expect(s.db.exchanges.filter((e) => e.ok).length).toBeGreaterThanOrEqual(2);
    const answer = await invoke(s, { use: "token" });
    expect(answer).toMatchObject({ ok: true, user_name: s.user });
    // The token Databricks saw is one refreshed after the timer started refreshing.
    const fresh = s.rie.lines.filter((l) => REFRESHED.test(l)).slice(before).map(tokenOf);
    expect(fresh).toContain(s.db.apiCalls.at(-1)?.tokenHash);
  });

  it("on SHUTDOWN (RIE's SIGTERM) says 'shutting down' and exits 0", async () => {
    expect(await s.rie.close()).toBe(0);
    const line = s.rie.extensionLogs().find((l) => l.msg === "shutting down");
    expect(line).toMatchObject({ reason: "spindown" });
    // Its budget is RIE's 2 s SHUTDOWN deadline less the broker's margin.
    expect(line?.budgetMs).toBeLessThanOrEqual(2_000);
    expect(await s.rie.waitFor(/Received event.*Name:extension-databricks-token-broker /)).toMatch(/Cause:exited .*ExitStatus:0 /);
  });
});
