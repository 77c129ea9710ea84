/**
 * Section 8 of the bench (issue 15): cold-start storms (test/storm.ts) against rate-limited
 * STS and Databricks stand-ins, once per backoff policy: the layer as built, and each of
 * bench/backoff/*.ts built into a layer of its own by bench/run.mjs (BENCH_STORM_LAYERS), in
 * alternating rounds. Reports what each policy costs: environments served, when the last was,
 * and upstream calls per environment.
 */
import { describeStorm, rateAloneMs, runStorm, type StormResult } from "../test/storm.js";
import type { PeersFigure } from "./peers.js";

export interface StormDeps {
  /** The built layer's launcher. */
  launcher: string;
  /** Other builds: a policy's name and its layer directory. */
  variants: { name: string; dir: string }[];
  reps(n: number): number;
  log(line: string): void;
  figure(f: PeersFigure): void;
  note(text: string): void;
}

/** The issue's storm: 30 environments, each upstream admitting 4 calls a second after a burst of 4. */
const STORM = { environments: 30, sts: { perSecond: 4, burst: 4 }, databricks: { perSecond: 4, burst: 4 } };

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export async function storms(d: StormDeps): Promise<void> {
  d.log(`8. Storms: ${STORM.environments} SnapStart environments restored at once; STS and the exchange each admit ${STORM.sts.perSecond}/s after a burst of ${STORM.sts.burst}`);
  const policies = [{ name: "as built (src/backoff.ts)", command: d.launcher }, ...d.variants.map((v) => ({ name: v.name, command: `${v.dir}/extensions/databricks-token-broker` }))];
  const results = new Map<string, StormResult[]>(policies.map((p) => [p.name, []]));
  const rounds = d.reps(3);
  for (let round = 0; round < rounds; round++) {
    for (const p of round % 2 ? [...policies].reverse() : policies) {
      const r = await runStorm({ ...STORM, command: p.command });
      results.get(p.name)!.push(r);
      d.log(`  round ${round + 1}, ${p.name}: ${describeStorm(r)}`);
    }
  }
  const alone = Math.max(rateAloneMs(STORM.environments, STORM.sts), rateAloneMs(STORM.environments, STORM.databricks));
  const goalLastMs = 1.2 * alone + 1000;
  for (const p of policies) {
    const rs = results.get(p.name)!;
    const served = rs.map((r) => r.servedAtMs.length);
    const last = rs.map((r) => (r.servedAtMs.length === r.environments ? r.servedAtMs.at(-1)! : Number.POSITIVE_INFINITY));
    const stsPer = rs.map((r) => r.stsCalls / r.environments);
    const exPer = rs.map((r) => r.exchanges / r.environments);
    const section = `8. Storm, ${p.name}`;
    const allServed = served.every((n) => n === STORM.environments);
    d.figure({ section, name: "environments served within their wait (each run)", broker: served.map((n) => `${n}/${STORM.environments}`).join(", "), baseline: "—", ratio: "—", goal: "all", met: allServed });
    const lastMedian = median(last);
    d.figure({ section, name: "the last served, after the restore (median of runs)", broker: Number.isFinite(lastMedian) ? `${(lastMedian / 1000).toFixed(2)} s` : "not all served", baseline: `${(alone / 1000).toFixed(2)} s (the rate alone)`, ratio: Number.isFinite(lastMedian) ? `${(lastMedian / alone).toFixed(2)}×` : "—", goal: `≤ 1.2× + 1 s (${(goalLastMs / 1000).toFixed(2)} s)`, met: lastMedian <= goalLastMs });
    d.figure({ section, name: "STS calls per environment (median of runs)", broker: median(stsPer).toFixed(2), baseline: "1", ratio: "—", goal: "≤ 1.5", met: median(stsPer) <= 1.5 });
    d.figure({ section, name: "exchanges per environment (median of runs)", broker: median(exPer).toFixed(2), baseline: "1", ratio: "—", goal: "≤ 1.5", met: median(exPer) <= 1.5 });
  }
  d.note(
    `Storms: test/storm.ts, ${rounds} rounds alternating the policies' order; each run ${STORM.environments} extensions of one build under the project's Lambda emulator in SnapStart mode (nothing fetched at init), restored by one INVOKE each at the same instant, each function asking GET /token at once and waiting up to 15 s (the broker's own wait is 10 s); STS answers Throttling (400) and the exchange 429 with Retry-After (whole seconds to the next token) beyond a token bucket of ${STORM.sts.perSecond}/s with a burst of ${STORM.sts.burst}, each. The rate alone: (environments − burst) / rate. Policies: bench/backoff/README.md.`,
  );
}
