/**
 * Section 7 of the bench (issue 13): what the broker takes from the function's budget, in CPU
 * at each stage of its life and in resident memory, against bare Node.js started the same way
 * in the same run. Imported by bench/main.ts, which hands it the stack (stand-ins, emulator,
 * load generator) through `FootprintDeps`.
 *
 * `--footprint-flags="A;B"` adds experiment rows: the extension started by a copy of the
 * launcher whose last line runs `node <flags> index.cjs` (the launcher unsets NODE_OPTIONS, so
 * flags cannot reach it any other way), one row set per `;`-separated flag set, interleaved
 * with the launcher as built, each compared with it. `--footprint-layers="DIR;DIR"` does the
 * same for other built layer trees (A/B builds), run by the same launcher. Experiments run on the
 * plain layer, or with `--footprint-with-node` on the with-Node.js flavour's tree.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import type { LambdaEmulator, StartLambdaOptions } from "../test/standins/lambda.js";
import { startLambda } from "../test/standins/lambda.js";
import type { LoadJob, LoadResult } from "./load.js";
import type { PeersFigure } from "./peers.js";

export interface FootprintDeps {
  /** bench/main.ts's startBroker: the layer's launcher under the emulator, with the stand-ins' settings. */
  startBroker(env?: Record<string, string | undefined>, options?: Partial<StartLambdaOptions>): Promise<{ lambda: LambdaEmulator; base: string }>;
  stopBroker(b: { lambda: LambdaEmulator }): Promise<void>;
  runLoad(job: LoadJob): Promise<LoadResult>;
  /** The layer's launcher, and the layer directory it runs from. */
  launcher: string;
  layerDir: string;
  /** bench/parts.ts, bundled: the extension's big parts one at a time. */
  partsProgram: string;
  /** The broker's settings against the stand-ins, listening on `port`. */
  brokerEnv(port: number): Record<string, string>;
  freePort(): Promise<number>;
  /** The with-Node.js flavour's tree for this machine's architecture, when built, and its Node.js version. */
  withNodeDir?: string;
  withNodeVersion?: string;
  /** A directory this run may write into (removed by main.ts). */
  scratch: string;
  sessionToken: string;
  quick: boolean;
  reps(n: number): number;
  log(line: string): void;
  figure(f: PeersFigure): void;
  note(text: string): void;
}

/** Linux's USER_HZ, the unit of /proc/<pid>/stat's CPU times. */
const TICKS_PER_SECOND = 100;
const ASKS = 1000;
const INVOKES = 200;
const BURST = { connections: 10, durationSeconds: 5 };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const msText = (x: number) => `${x.toFixed(1)} ms`;
const usText = (x: number) => `${x.toFixed(0)} µs`;
const mibText = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;
const ratio = (x: number, base: number) => `${(x / base).toFixed(2)}×`;

/** Fields of /proc/<pid>/stat after the parenthesised command name (field 3 is index 0). */
function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(")") + 2).trim().split(" ");
}

/** CPU ms (user + system, every thread, living or gone) `pid` has used so far. */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const f = statFields(readFileSync(`/proc/${pid}/stat`, "utf8"));
  return ((Number(f[11]) + Number(f[12])) * 1000) / TICKS_PER_SECOND;
}

function statusKiB(pid: number | undefined, field: "VmRSS" | "VmHWM" | "RssAnon"): number {
  if (pid === undefined) return Number.NaN;
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? Number.NaN);
}

/** What one cold start of the extension measured, CPU in ms since spawn unless said. */
interface Sample {
  registered: number;
  initDone: number;
  firstToken: number;
  /** Wall ms, spawn → first answer (no upstream delays here). */
  firstTokenWallMs: number;
  perAnswerUs: number;
  perInvokeUs: number;
  rssInitKiB: number;
  rssFirstTokenKiB: number;
  rssAsksKiB: number;
  /** RssAnon: the process's own memory, without the file pages (the node binary's) VmRSS also counts. */
  anonInitKiB: number;
  anonFirstTokenKiB: number;
  anonAsksKiB: number;
  anonBurstKiB: number;
  rssBurstKiB: number;
  peakKiB: number;
  burstRps: number;
  /** Wall ms of the 1,000 asks and of the INVOKE cycles, for the log. */
  asksWallMs: number;
  invokesWallMs: number;
}

interface Variant {
  label: string;
  flags: string;
  command: string;
  samples: Sample[];
  /** Set when a cold start of an experiment failed: it is dropped from later rounds. */
  failed?: string;
}

/** CPU ms and RSS KiB of a bench/parts.ts process at each stage; `app` also after the asks and after the burst. */
type PartsFigures = Record<string, { cpuMs: number; rssKiB: number }>;

/** One bench/parts.ts process taking `parts` in order; the asks and the burst go to its app, when it has one. */
async function runParts(d: FootprintDeps, parts: string[]): Promise<PartsFigures> {
  const port = await d.freePort();
  const child = spawn(process.execPath, [d.partsProgram, d.layerDir, parts.join(",")], {
    env: { PATH: process.env.PATH ?? "", HOME: "/tmp", ...d.brokerEnv(port) },
    stdio: ["pipe", "pipe", "inherit"],
  });
  const figures: PartsFigures = {};
  const take = async (name: string) => {
    await sleep(50);
    figures[name] = { cpuMs: cpuMs(child.pid), rssKiB: statusKiB(child.pid, "VmRSS") };
  };
  try {
    for await (const line of createInterface({ input: child.stdout! })) {
      const { stage } = JSON.parse(line) as { stage: string };
      await take(stage);
      if (stage === "app") {
        const headers = { "x-aws-session-token": d.sessionToken };
        for (let i = 0; i < ASKS; i++) {
          const r = await fetch(`http://127.0.0.1:${port}/token`, { headers });
          if (r.status !== 200) throw new Error(`parts ${parts.join(",")}: GET /token answered ${r.status} ${(await r.text()).slice(0, 300)}`);
          await r.arrayBuffer();
        }
        await take("app, after the asks");
        const load = await d.runLoad({ url: `http://127.0.0.1:${port}/token`, headers, ...BURST });
        if (load.non2xx || load.errors || load.timeouts) throw new Error(`parts: burst: ${load.non2xx} non-2xx, ${load.errors} errors, ${load.timeouts} timeouts`);
        await take("app, after the burst");
      }
      child.stdin!.write("\n");
    }
  } finally {
    child.kill();
  }
  if (!figures[parts.at(-1) ?? "start"]) throw new Error(`parts ${parts.join(",")}: the program ended early`);
  return figures;
}

/** Rows of what each part costs: alone (against the program doing nothing) and in the extension's order. */
async function partsTable(d: FootprintDeps, rounds: number): Promise<void> {
  const ORDER = ["sts", "post", "app"];
  const runs: { alone: Record<string, PartsFigures>; all: PartsFigures }[] = [];
  for (let round = 0; round < rounds; round++) {
    const alone: Record<string, PartsFigures> = {};
    for (const part of [...ORDER, "fetch"]) alone[part] = await runParts(d, [part]);
    runs.push({ alone, all: await runParts(d, ORDER) });
  }
  const section = "7. Footprint, by part";
  const delta = (f: PartsFigures, from: string, to: string, k: "cpuMs" | "rssKiB") => f[to]![k] - f[from]![k];
  const med = (xs: number[]) => median(xs);
  const row = (name: string, alone: (r: (typeof runs)[number]) => [number, number], inOrder?: (r: (typeof runs)[number]) => [number, number]) => {
    const a = runs.map(alone);
    const o = inOrder ? runs.map(inOrder) : undefined;
    d.figure({
      section,
      name,
      broker: `alone: ${msText(med(a.map((x) => x[0])))}, ${mibText(med(a.map((x) => x[1])))}`,
      baseline: o ? `in order: ${msText(med(o.map((x) => x[0])))}, ${mibText(med(o.map((x) => x[1])))}` : "in order: — (not in the extension)",
      ratio: "—",
      goal: "report",
      met: undefined,
    });
  };
  const part = (p: string, to = p) => (r: (typeof runs)[number]): [number, number] => [delta(r.alone[p]!, "start", to, "cpuMs"), delta(r.alone[p]!, "start", to, "rssKiB")];
  const step = (from: string, to: string) => (r: (typeof runs)[number]): [number, number] => [delta(r.all, from, to, "cpuMs"), delta(r.all, from, to, "rssKiB")];
  row("the AWS SDK's STS client: loaded, one GetWebIdentityToken call", part("sts"), step("start", "sts"));
  row("node:http: one token-exchange POST (src/http-post.ts, as the extension sends it)", part("post"), step("sts", "post"));
  row("fetch (undici): the same POST, as the extension sent it before", part("fetch"));
  row("fastify and the routes: loaded, app built, listening", part("app"), step("post", "app"));
  row(`the same app: ${ASKS.toLocaleString("en")} sequential asks`, part("app", "app, after the asks"), step("app", "app, after the asks"));
  row(`the same app: a ${BURST.connections}-connection, ${BURST.durationSeconds} s burst`, (r) => [delta(r.alone.app!, "app, after the asks", "app, after the burst", "cpuMs"), delta(r.alone.app!, "app, after the asks", "app, after the burst", "rssKiB")], step("app, after the asks", "app, after the burst"));
  const start = runs.map((r) => r.all.start!);
  d.figure({ section, name: "the parts program itself, before any part (Node.js, node:http, readline, config, token cache)", broker: `${msText(med(start.map((x) => x.cpuMs)))}, ${mibText(med(start.map((x) => x.rssKiB)))}`, baseline: "—", ratio: "—", goal: "report", met: undefined });
  d.note(
    `Footprint by part: bench/parts.ts, a program that takes the extension's big parts from the built layer (lazy/sts-client.mjs and one STS call; one POST to the exchange stand-in on node:http as src/http-post.ts sends it, and, alone only, the same POST with fetch(); lazy/app.mjs built around a token cache holding one token, served on node:http, then ${ASKS.toLocaleString("en")} sequential asks and the same burst as above), ${rounds} rounds, each running every part alone in a fresh process and then sts, post and app in the extension's order in one more; medians. Each cell is "CPU ms, RSS MiB" added by that step (utime+stime and VmRSS from /proc, read 50 ms after the step): "alone" = the part alone, against the same program before it took any part; "in order" = the same step in the extension's order (after the parts before it, which share some of its cost: node:http, streams, URL handling). The extension's own modules and the listener are in neither: they are what the extension's figures hold beyond the parts.`,
  );
}

/** A way the broker runs, with bare Node.js started the same way (the same launcher, the same node). */
interface Flavour {
  name: string;
  /** The launcher as built, for this flavour's tree. */
  variant: Variant;
  bareCpuLauncher: string;
  bareIdleLauncher: string;
  bareCpus: number[];
  bareRsses: { rss: number; anon: number }[];
}

export async function footprint(d: FootprintDeps): Promise<void> {
  d.log("7. Footprint: CPU at each stage and resident memory, against bare Node.js started the same way");
  const text = await readFile(d.launcher, "utf8");
  const lastLine = `exec "$node" "$bundle/index.cjs"`;
  const bundleLine = `bundle="$here/databricks-token-broker"`;
  if (!text.includes(lastLine) || !text.includes(bundleLine)) throw new Error(`the launcher no longer has ${lastLine} and ${bundleLine}`);

  /** A launcher copy named as the extension, in its own directory, with its last line replaced. */
  const launcherCopy = async (dirName: string, last: string, bundle = join(d.layerDir, "databricks-token-broker")) => {
    const dir = join(d.scratch, "footprint", dirName, "extensions");
    await mkdir(dir, { recursive: true });
    const file = join(dir, "databricks-token-broker");
    // The bundle by absolute path: the launcher picks its Node.js from there (the with-Node.js
    // flavour's own), else as the layer's launcher does.
    // Replacer functions: a replacement string would read `$$` as a pattern.
    await writeFile(file, text.replace(bundleLine, () => `bundle='${bundle}'`).replace(lastLine, () => last));
    await chmod(file, 0o755);
    return file;
  };

  // Bare `node -e ''`: the launcher runs it as a child instead of exec'ing it, then prints its own
  // /proc stat, whose cutime/cstime hold the reaped node's CPU, beside the shell's own (which the
  // extension's figure holds too: the launcher execs node in the same process).
  const bareCpuLine = `"$node" -e ''\nread -r s < /proc/$$/stat\necho "cpu $s"`;
  const bareIdleLine = `exec "$node" -e 'process.stdout.write("up\\n"); setInterval(() => {}, 1 << 30)'`;
  const flavour = async (name: string, key: string, bundle: string, command?: string): Promise<Flavour> => ({
    name,
    variant: { label: name, flags: "", command: command ?? (await launcherCopy(key, lastLine, bundle)), samples: [] },
    bareCpuLauncher: await launcherCopy(`${key}-bare-cpu`, bareCpuLine, bundle),
    bareIdleLauncher: await launcherCopy(`${key}-bare-idle`, bareIdleLine, bundle),
    bareCpus: [],
    bareRsses: [],
  });
  const flavours = [await flavour(`the layer on the runtime's Node.js (${process.version})`, "plain", join(d.layerDir, "databricks-token-broker"), d.launcher)];
  if (d.withNodeDir) flavours.push(await flavour(`the with-Node.js flavour (its Node.js ${d.withNodeVersion})`, "with-node", join(d.withNodeDir, "databricks-token-broker")));

  const listArg = (prefix: string) =>
    (process.argv.find((a) => a.startsWith(prefix))?.slice(prefix.length) ?? "")
      .split(";")
      .map((s) => s.trim())
      .filter(Boolean);
  // Experiments run on the plain layer, or with --footprint-with-node on the with-Node.js flavour, and compare with it.
  const onWithNode = process.argv.includes("--footprint-with-node") && flavours.length > 1;
  const experimentBase = onWithNode ? flavours[1]! : flavours[0]!;
  const experiments: Variant[] = [];
  for (const [i, flags] of listArg("--footprint-flags=").entries()) {
    const command = await launcherCopy(`flags-${i}`, `exec "$node" ${flags} "$bundle/index.cjs"`, onWithNode ? join(d.withNodeDir!, "databricks-token-broker") : undefined);
    experiments.push({ label: `node ${flags}`, flags, command, samples: [] });
  }
  // A/B builds: another layer tree (say, a build of a branch) run by the same launcher copy.
  for (const [i, dir] of listArg("--footprint-layers=").entries()) {
    const command = await launcherCopy(`layer-${i}`, lastLine, join(dir, "databricks-token-broker"));
    experiments.push({ label: `layer ${dir}`, flags: "", command, samples: [] });
  }

  const rounds = d.reps(7);
  // Rounds interleave every variant and the baselines, so drift in the machine's load falls on all alike.
  for (let round = 0; round < rounds; round++) {
    for (const f of flavours) {
      for (let i = 0; i < 3; i++) f.bareCpus.push(await bareCpu(f.bareCpuLauncher));
      f.bareRsses.push(await bareRss(f.bareIdleLauncher));
      await sampleInto(d, f.variant, round, true);
    }
    for (const v of experiments) await sampleInto(d, v, round, false);
  }

  d.log("  by part (bench/parts.ts)");
  await partsTable(d, rounds);
  for (const f of flavours) flavourFigures(d, f);
  experimentFigures(d, experimentBase, experiments);

  d.note(
    `Footprint: ${rounds} rounds, each, for ${flavours.map((f) => f.name).join(" and for ")}: 3 bare \`node -e ''\` starts, one idle bare \`node\` and one cold start of the extension${experiments.length ? `; then one cold start of each experiment` : ""}, interleaved; no upstream delays. CPU is utime+stime of the extension's process (every thread; the launcher's shell execs node in the same process) from /proc/<pid>/stat, counted in whole 10 ms ticks (each reading truncated, so a mean runs about 5 ms low, on both sides), so the stage figures are means over the cold starts; read when the emulator has answered the register request, when init completed (just after the first event/next), and when the first GET /token was answered. Baseline: the flavour's launcher with its last line running its \`node -e ''\` as its child, then printing its own /proc stat: the shell's CPU plus its reaped child's (cutime+cstime), mean of ${3 * rounds}. Per cached answer: CPU over ${ASKS.toLocaleString("en")} sequential GET /token after the first; per INVOKE cycle: over ${INVOKES} INVOKE events from the emulator (no function work), medians. RSS (VmRSS from /proc/<pid>/status; "own" is its RssAnon, the process's private memory, without the file pages of the node binary and libraries that VmRSS also counts) when init completed, 50 ms after the first token, 50 ms after the asks, and after a ${BURST.connections}-connection, ${BURST.durationSeconds} s autocannon burst; peak is VmHWM then; medians. Memory baseline: the flavour's launcher running an idle \`node -e\` with its node, once it printed a line, median of ${rounds}.${experiments.length ? ` Experiment rows: a copy of the launcher whose last line runs \`node <flags> index.cjs\`, or that runs another build's tree, compared with the layer as built in the same rounds (the ratio after it against bare Node.js).` : ""}`,
  );
}

/** CPU ms of a bare `node -e ''` started by `launcher`: the shell's and its reaped child's. */
async function bareCpu(launcher: string): Promise<number> {
  const lambda = await startLambda({ command: launcher, env: {} });
  try {
    const line = await lambda.waitForLine(/^cpu /, { timeoutMs: 10_000 });
    const f = statFields(line.slice(4));
    return ((Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 1000) / TICKS_PER_SECOND;
  } finally {
    await lambda.close();
  }
}

/** VmRSS and RssAnon KiB of an idle bare `node` started by `launcher`, once it is up. */
async function bareRss(launcher: string): Promise<{ rss: number; anon: number }> {
  const lambda = await startLambda({ command: launcher, env: {} });
  try {
    await lambda.waitForLine(/^up$/);
    await sleep(50);
    return { rss: statusKiB(lambda.pid, "VmRSS"), anon: statusKiB(lambda.pid, "RssAnon") };
  } finally {
    await lambda.close();
  }
}

/** One cold start of `v` into its samples; an experiment that breaks the extension is marked failed, not fatal. */
async function sampleInto(d: FootprintDeps, v: Variant, round: number, mustWork: boolean): Promise<void> {
  if (v.failed) return;
  let s: Sample;
  try {
    s = await coldStart(d, v);
  } catch (e) {
    if (mustWork) throw e;
    v.failed = e instanceof Error ? e.message : String(e);
    d.log(`  round ${round + 1}, ${v.label}: FAILED: ${v.failed}`);
    return;
  }
  v.samples.push(s);
  d.log(
    `  round ${round + 1}, ${v.label}: CPU registered ${s.registered} ms, init ${s.initDone} ms, first token ${s.firstToken} ms (${msText(s.firstTokenWallMs)} wall); ${s.perAnswerUs.toFixed(0)} µs/answer (${(s.asksWallMs / ASKS).toFixed(2)} ms wall), ${s.perInvokeUs.toFixed(0)} µs/INVOKE (${(s.invokesWallMs / INVOKES).toFixed(2)} ms wall); RSS ${mibText(s.rssInitKiB)} at init, ${mibText(s.rssFirstTokenKiB)} with a token, ${mibText(s.rssAsksKiB)} (own ${mibText(s.anonAsksKiB)}) after asks, ${mibText(s.rssBurstKiB)} after burst (${s.burstRps.toFixed(0)} req/s), peak ${mibText(s.peakKiB)}`,
  );
}

/** A cold start of `v` under the emulator, asked for its first token the moment init is done, then the asks, INVOKEs and burst. */
async function coldStart(d: FootprintDeps, v: Variant): Promise<Sample> {
  const headers = { "x-aws-session-token": d.sessionToken };
  let pid: number | undefined;
  let registered = Number.NaN;
  const b = await d.startBroker({}, {
    command: v.command,
    // Runs the moment the emulator has answered the register request (Lambda starts the runtime then).
    functionInit: () => {
      registered = cpuMs(pid);
    },
  });
  pid = b.lambda.pid;
  try {
    const init = await b.lambda.init;
    if (!init.ok) throw new Error(`${v.label}: init ${init.status}: ${[...b.lambda.stdout, ...b.lambda.stderr].slice(-5).join("\n")}`);
    const initDone = cpuMs(pid);
    const rssInitKiB = statusKiB(pid, "VmRSS");
    const anonInitKiB = statusKiB(pid, "RssAnon");
    const ask = async () => {
      const r = await fetch(`${b.base}/token`, { headers, signal: AbortSignal.timeout(30_000) });
      const body = await r.text();
      if (r.status !== 200) throw new Error(`${v.label}: GET /token answered ${r.status} ${body.slice(0, 300)}; the extension's last lines: ${[...b.lambda.stdout, ...b.lambda.stderr].slice(-3).join(" / ").slice(0, 600)}`);
    };
    await ask();
    const firstTokenWallMs = performance.now() - b.lambda.timings.spawnedAt;
    const firstToken = cpuMs(pid);
    await sleep(50);
    const rssFirstTokenKiB = statusKiB(pid, "VmRSS");
    const anonFirstTokenKiB = statusKiB(pid, "RssAnon");
    let t0 = performance.now();
    let c0 = cpuMs(pid);
    for (let i = 0; i < ASKS; i++) await ask();
    const perAnswerUs = ((cpuMs(pid) - c0) * 1000) / ASKS;
    const asksWallMs = performance.now() - t0;
    await sleep(50);
    const rssAsksKiB = statusKiB(pid, "VmRSS");
    const anonAsksKiB = statusKiB(pid, "RssAnon");
    t0 = performance.now();
    c0 = cpuMs(pid);
    for (let i = 0; i < INVOKES; i++) {
      const r = await b.lambda.invoke();
      if (r.timedOut) throw new Error(`${v.label}: an INVOKE timed out`);
    }
    const perInvokeUs = ((cpuMs(pid) - c0) * 1000) / INVOKES;
    const invokesWallMs = performance.now() - t0;
    const load = await d.runLoad({ url: `${b.base}/token`, headers, ...BURST });
    if (load.non2xx || load.errors || load.timeouts) throw new Error(`${v.label}: burst: ${load.non2xx} non-2xx, ${load.errors} errors, ${load.timeouts} timeouts`);
    await sleep(50);
    const rssBurstKiB = statusKiB(pid, "VmRSS");
    const anonBurstKiB = statusKiB(pid, "RssAnon");
    const peakKiB = statusKiB(pid, "VmHWM");
    return { registered, initDone, firstToken, firstTokenWallMs, perAnswerUs, perInvokeUs, rssInitKiB, rssFirstTokenKiB, rssAsksKiB, rssBurstKiB, anonInitKiB, anonFirstTokenKiB, anonAsksKiB, anonBurstKiB, peakKiB, burstRps: load.requestsPerSecond, asksWallMs, invokesWallMs };
  } finally {
    await d.stopBroker(b);
  }
}

const of = (v: Variant, k: keyof Sample, agg: (xs: number[]) => number = median) => agg(v.samples.map((s) => s[k]));

/** The flavour's rows: CPU at each stage against its bare `node -e ''`, memory at each stage against its idle bare node. */
function flavourFigures(d: FootprintDeps, f: Flavour): void {
  const section = `7. Footprint, ${f.name}`;
  const cpuBase = mean(f.bareCpus);
  const rssBase = median(f.bareRsses.map((x) => x.rss));
  const anonBase = median(f.bareRsses.map((x) => x.anon));
  const v = f.variant;
  const bareCpuText = `${msText(cpuBase)} (\`node -e ''\`)`;
  const cpuStage = (name: string, k: "registered" | "initDone" | "firstToken", goal = "—", limit?: number) => {
    const x = of(v, k, mean);
    d.figure({ section, name, broker: msText(x), baseline: bareCpuText, ratio: ratio(x, cpuBase), goal, met: limit === undefined ? undefined : x / cpuBase <= limit });
  };
  cpuStage("CPU, spawn → registered", "registered");
  cpuStage("CPU, spawn → init done (first event/next)", "initDone");
  cpuStage("CPU, spawn → first token served", "firstToken", "≤ 2.00×", 2);
  d.figure({ section, name: "CPU per cached answer (sequential asks)", broker: usText(of(v, "perAnswerUs")), baseline: "—", ratio: "—", goal: "report", met: undefined });
  d.figure({ section, name: "CPU per INVOKE cycle", broker: usText(of(v, "perInvokeUs")), baseline: "—", ratio: "—", goal: "report", met: undefined });
  const bareRssText = `${mibText(rssBase)} (idle \`node\`)`;
  // The broker column also gives RssAnon, its own memory: VmRSS counts the node binary's pages too.
  const rss = (name: string, k: keyof Sample, anonK: keyof Sample | undefined, goal = "report", limit?: number) => {
    const x = of(v, k);
    const broker = anonK ? `${mibText(x)} (own ${mibText(of(v, anonK))})` : mibText(x);
    const baseline = anonK ? `${mibText(rssBase)} (own ${mibText(anonBase)}) (idle \`node\`)` : bareRssText;
    d.figure({ section, name, broker, baseline, ratio: ratio(x, rssBase), goal, met: limit === undefined ? undefined : x / rssBase <= limit });
  };
  rss("RSS when init is done", "rssInitKiB", "anonInitKiB");
  rss("RSS with the first token served", "rssFirstTokenKiB", "anonFirstTokenKiB");
  rss(`RSS after the first token and ${ASKS.toLocaleString("en")} sequential asks (steady)`, "rssAsksKiB", "anonAsksKiB", "≤ 1.40×", 1.4);
  rss(`RSS after a ${BURST.connections}-connection, ${BURST.durationSeconds} s burst`, "rssBurstKiB", "anonBurstKiB", "≤ 1.60×", 1.6);
  rss("peak RSS (VmHWM) after the burst", "peakKiB", undefined);
}

/** Each experiment against the layer as built in the same rounds. */
function experimentFigures(d: FootprintDeps, base: Flavour, experiments: Variant[]): void {
  const built = base.variant;
  const cpuBase = mean(base.bareCpus);
  const rssBase = median(base.bareRsses.map((x) => x.rss));
  for (const v of experiments) {
    const ex = `7. Footprint, experiment: ${v.label}`;
    d.log(`  experiment: ${v.label}`);
    if (v.failed) {
      d.figure({ section: ex, name: "cold start and first token", broker: `failed: ${v.failed.replace(/\|/g, "/").replace(/\s+/g, " ")}`, baseline: "—", ratio: "—", goal: "report", met: false });
      continue;
    }
    const row = (name: string, k: keyof Sample, fmt: (x: number) => string, bare?: number, agg: (xs: number[]) => number = median) => {
      const x = of(v, k, agg);
      const b = of(built, k, agg);
      d.figure({ section: ex, name, broker: fmt(x), baseline: `${fmt(b)} (as built)`, ratio: `${ratio(x, b)}${bare === undefined ? "" : `; ${ratio(x, bare)} bare`}`, goal: "report", met: undefined });
    };
    row("CPU, spawn → first token served", "firstToken", msText, cpuBase, mean);
    row("spawn → first token, wall", "firstTokenWallMs", msText);
    row("CPU per cached answer", "perAnswerUs", usText);
    row("CPU per INVOKE cycle", "perInvokeUs", usText);
    row(`RSS after ${ASKS.toLocaleString("en")} asks`, "rssAsksKiB", mibText, rssBase);
    row("RSS after the burst", "rssBurstKiB", mibText, rssBase);
    row("peak RSS", "peakKiB", mibText, rssBase);
    row("burst requests per second", "burstRps", (x) => x.toFixed(0));
  }
}
