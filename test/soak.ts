/**
 * A compressed soak of the real extension process: tokens that live 8 s, for ninety-odd
 * seconds of continuous requests on every route, invokes, random freezes (some longer than a
 * token's whole life) and thaws, and upstream faults switched on and off. At the end: not one
 * token served expired or under the minimum TTL, no crash, no stuck invoke, memory flat.
 * `runSoak` records, `judgeSoak` asserts; test/reliability.test.ts runs it. SOAK_MS sets the
 * length (default 90 s).
 */
import { expect } from "vitest";
import { ask, crashLines, fastEnv, logLines, type Observation, rssKiB, servedWrong, sleep } from "./harness.js";
import { type Stack, startStack } from "./stack.js";
import type { ShutdownResult } from "./standins/lambda.js";
import { BACKOFF_CAP_MS } from "../src/token-cache.js";

export const SOAK_MS = Number(process.env.SOAK_MS ?? 90_000);
/** 8 s tokens, refreshed from 4 s left, never served under 3 s. */
const LIFE = { expiresIn: 8, refreshAheadSeconds: 4, minTtlSeconds: 3, waitSeconds: 3 };
/** "Flat": what the process may grow by between the warmed-up start and the end. */
const FLAT_KIB = 30 * 1024;

interface Fault {
  name: string;
  on(s: Stack): void | Promise<void>;
  off(s: Stack): void | Promise<void>;
}
const faults: Fault[] = [
  { name: "STS 500", on: (s) => s.sts.setFault({ kind: "error", code: "InternalFailure", status: 500 }), off: (s) => s.sts.clearFault() },
  { name: "STS Throttling", on: (s) => s.sts.setFault({ kind: "error", code: "Throttling", status: 400 }), off: (s) => s.sts.clearFault() },
  { name: "STS reset", on: (s) => s.sts.setFault({ kind: "reset" }), off: (s) => s.sts.clearFault() },
  { name: "STS slower than its timeout", on: (s) => s.sts.setFault({ kind: "delay", ms: 7_000 }), off: (s) => s.sts.clearFault() },
  { name: "STS refused", on: (s) => s.sts.refuseConnections(), off: (s) => s.sts.acceptConnections() },
  { name: "Databricks 503", on: (s) => s.db.setFault({ kind: "error", status: 503, error: "temporarily_unavailable" }), off: (s) => s.db.clearFault() },
  { name: "Databricks 429", on: (s) => s.db.setFault({ kind: "raw", status: 429, headers: { "retry-after": "1" }, body: "slow down" }), off: (s) => s.db.clearFault() },
  { name: "Databricks drop", on: (s) => s.db.setFault({ kind: "drop", afterBytes: 30 }), off: (s) => s.db.clearFault() },
  { name: "Databricks HTML 200", on: (s) => s.db.setFault({ kind: "raw", status: 200, body: "<html><body>proxy</body></html>" }), off: (s) => s.db.clearFault() },
  { name: "Databricks slower than its timeout", on: (s) => s.db.setFault({ kind: "delay", ms: 7_000 }), off: (s) => s.db.clearFault() },
  { name: "Databricks refused", on: (s) => s.db.refuseConnections(), off: (s) => s.db.acceptConnections() },
];

const between = (lo: number, hi: number) => lo + Math.random() * (hi - lo);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;

export interface SoakOutcome {
  error?: string;
  obs: Observation[];
  invokes: number;
  invokeProblems: string[];
  freezes: number[];
  toggled: string[];
  rss: { at: number; kib: number }[];
  recovered: Observation[];
  /** From the faults' end to the first 200 after it. */
  recoveredMs?: number;
  aliveAtEnd: boolean;
  shutdown?: ShutdownResult;
  refreshed: number;
  exchangesOk: number;
  stsCalls: number;
  wrong: string[];
  expired: number;
  crashes: string[];
  leaks: string[];
  ms: number;
}

/** Runs the soak and records what happened; judgeSoak() says whether it was right. */
export async function runSoak(): Promise<SoakOutcome> {
  // The soak freezes and thaws on its own random schedule (driver below), so the emulator's own freezes are off.
  const s = await startStack({ db: { expiresIn: LIFE.expiresIn }, env: fastEnv(LIFE), lambda: { functionTimeoutMs: 6_000, freezeWhenIdle: false } });
  const out: SoakOutcome = { obs: [], invokes: 0, invokeProblems: [], freezes: [], toggled: [], rss: [], recovered: [], aliveAtEnd: false, refreshed: 0, exchangesOk: 0, stsCalls: 0, wrong: [], expired: 0, crashes: [], leaks: [], ms: 0 };
  const { obs, invokeProblems, rss, toggled, freezes } = out;
  const start = Date.now();
  try {
    const init = await s.lambda.init;
    if (!init.ok) throw new Error(`init ${init.status}: ${JSON.stringify(init)}`);
    const pid = s.lambda.pid!;
    const until = start + SOAK_MS;
    const running = () => Date.now() < until;

    const requester = async () => {
      while (running()) {
        const r = Math.random();
        obs.push(await (r < 0.45 ? ask(s, "token") : r < 0.9 ? ask(s, "metadata") : r < 0.95 ? ask(s, "token", `?min_ttl=${LIFE.minTtlSeconds + 1}`) : ask(s, "health")));
        await sleep(between(10, 60));
      }
    };
    // One invoke at a time, as Lambda runs them; between some, the whole environment freezes.
    const driver = async () => {
      while (running()) {
        s.lambda.thaw();
        try {
          const r = await s.lambda.invoke(async () => obs.push(await ask(s, "token")));
          out.invokes += 1;
          if (r.timedOut) invokeProblems.push(`invoke timed out after ${Math.round(r.timings.durationMs)} ms`);
        } catch (err) {
          invokeProblems.push(String(err));
          return;
        }
        if (Math.random() < 0.06) {
          // Mostly short; one in four longer than a token's whole life, so it thaws expired.
          const ms = Math.random() < 0.75 ? between(200, 2_500) : between(LIFE.expiresIn * 1000, LIFE.expiresIn * 1000 + 2_000);
          freezes.push(ms);
          s.lambda.freeze();
          await sleep(Math.min(ms, Math.max(0, until - Date.now())));
          s.lambda.thaw();
        } else {
          await sleep(between(50, 400));
        }
      }
      s.lambda.thaw();
    };
    const toggler = async () => {
      while (running()) {
        await sleep(between(2_000, 6_000));
        if (!running()) break;
        const f = faults[Math.floor(Math.random() * faults.length)]!;
        toggled.push(f.name);
        await f.on(s);
        await sleep(between(1_000, 5_000));
        await f.off(s);
      }
    };
    const sampler = async () => {
      while (running()) {
        rss.push({ at: Date.now() - start, kib: rssKiB(pid) });
        await sleep(2_000);
      }
    };
    await Promise.all([requester(), requester(), requester(), requester(), driver(), toggler(), sampler()]);

    // Everything healthy again: a fresh, valid token comes on an invoke once the backoff that
    // the last faults left has run out (it never exceeds BACKOFF_CAP_MS), then on every ask.
    const healthyAt = Date.now();
    for (;;) {
      const after = await s.lambda.invoke(async () => ask(s, "token"));
      out.recovered = [after.result!];
      if (after.result?.status === 200 || Date.now() - healthyAt > BACKOFF_CAP_MS + 5_000) break;
      await sleep(500);
    }
    out.recovered.push(await ask(s, "token"));
    out.recoveredMs = Date.now() - healthyAt;
    obs.push(...out.recovered);
    out.aliveAtEnd = s.lambda.alive;
    out.shutdown = await s.lambda.shutdown();
  } catch (err) {
    out.error = String(err);
  } finally {
    out.ms = Date.now() - start;
    // Judged from when each request was sent (see servedWrong): the answer's transit on a loaded machine is not the broker's.
    out.wrong = obs.flatMap((o) => servedWrong(s, o, LIFE.minTtlSeconds));
    out.expired = obs.filter((o) => o.status === 200 && o.route !== "health" && (s.db.issuedTokens.find((t) => t.token === o.body.access_token)?.expiresAt ?? 0) <= o.sentAt).length;
    out.refreshed = logLines(s).filter((l) => l.msg === "token refreshed").length;
    out.exchangesOk = s.db.exchanges.filter((e) => e.ok).length;
    out.stsCalls = s.sts.calls.length;
    out.crashes = crashLines(s);
    out.leaks = await s.leaks();
    await s.close().catch(() => {});
  }
  return out;
}

/** RSS at the warmed-up start (median of 15–25 s), at the end (median of the last samples) and the peak, in KiB. */
function memory(o: SoakOutcome) {
  const warm = o.rss.filter((r) => r.at >= 15_000 && r.at < 25_000).map((r) => r.kib);
  return {
    startKiB: median(warm.length > 0 ? warm : o.rss.slice(0, 3).map((r) => r.kib)),
    endKiB: median(o.rss.slice(-3).map((r) => r.kib)),
    maxKiB: Math.max(...o.rss.map((r) => r.kib)),
  };
}

/** One line of figures, for the closing note. */
export function soakFigures(o: SoakOutcome): string {
  const asked = o.obs.filter((x) => x.route !== "health");
  const statuses: Record<string, number> = {};
  for (const x of o.obs) statuses[`${x.route} ${x.status}`] = (statuses[`${x.route} ${x.status}`] ?? 0) + 1;
  const { startKiB, endKiB, maxKiB } = memory(o);
  const mib = (k: number) => (k / 1024).toFixed(1);
  return [
    `soak ${Math.round(o.ms / 1000)} s:`,
    `${o.obs.length} requests (${asked.filter((x) => x.status === 200).length} tokens served, ${asked.filter((x) => x.status === 503).length} answered 503, ${o.obs.filter((x) => x.route === "health").length} health),`,
    `statuses ${JSON.stringify(statuses)},`,
    `${o.invokes} invokes, ${o.freezes.length} freezes (longest ${(Math.max(0, ...o.freezes) / 1000).toFixed(1)} s, ${(o.freezes.reduce((a, b) => a + b, 0) / 1000).toFixed(0)} s frozen),`,
    `${o.toggled.length} faults switched on and off (healthy again: first token after ${o.recoveredMs ?? "?"} ms),`,
    `${o.refreshed} tokens refreshed (${o.exchangesOk} exchanges, ${o.stsCalls} STS calls),`,
    `${o.expired} expired served, ${o.wrong.length} served wrong,`,
    `RSS ${mib(startKiB)} MiB at start → ${mib(endKiB)} MiB at end (max ${mib(maxKiB)} MiB, ${o.rss.length} samples)`,
  ].join(" ");
}

/** What the soak's record must show. */
export function judgeSoak(o: SoakOutcome): void {
  const asked = o.obs.filter((x) => x.route !== "health");
  const served = asked.filter((x) => x.status === 200);
  expect(o.error).toBeUndefined();
  expect(o.wrong).toEqual([]);
  expect(o.expired).toBe(0);
  expect(o.leaks).toEqual([]);
  expect(o.obs.filter((x) => x.failure !== undefined).map((x) => x.failure)).toEqual([]);
  expect(asked.filter((x) => x.status !== 200 && x.status !== 503).map((x) => `${x.status} ${JSON.stringify(x.body)}`)).toEqual([]);
  expect(o.obs.filter((x) => x.route === "health" && x.status !== 200)).toEqual([]);
  for (const x of asked.filter((y) => y.status === 503)) {
    expect(x.body).toMatchObject({ error: "token_unavailable", step: expect.stringMatching(/^(sts|exchange|token)$/), hint: expect.any(String) });
  }
  expect(o.recovered.map((x) => x.status), JSON.stringify(o.recovered.map((x) => x.body))).toEqual([200, 200]);
  expect(o.invokeProblems).toEqual([]);
  expect(o.aliveAtEnd).toBe(true);
  expect(o.shutdown).toMatchObject({ code: 0, killed: false });
  expect(o.crashes).toEqual([]);
  // Enough happened for the figures to mean something.
  expect(served.length).toBeGreaterThan(1_000);
  expect(o.refreshed).toBeGreaterThan(SOAK_MS / (LIFE.expiresIn * 1000) / 2);
  expect(o.freezes.length).toBeGreaterThan(2);
  expect(o.toggled.length).toBeGreaterThan(3);
  const { startKiB, endKiB } = memory(o);
  expect(endKiB - startKiB).toBeLessThan(FLAT_KIB);
}
