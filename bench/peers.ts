/**
 * Section 6 of the bench (issue 10 part 5, "the documented way, side by side"): a Python
 * function with databricks-sdk, run by the real runtime interface client (awslambdaric) under
 * AWS's Lambda Runtime Interface Emulator (RIE, test/peers/rie.ts), twice over:
 *
 * - documented: test/peers/functions/python-documented, the function as the Databricks page
 *   documents it (an oidc.IdTokenSource calling boto3's sts.get_web_identity_token, wired with
 *   credentials_strategy and oidc_credentials_provider into a module-level WorkspaceClient),
 *   with an empty directory on /opt: no extension at all, the fairest baseline;
 * - broker: test/peers/functions/python-broker, the same function with a module-level
 *   WorkspaceClient() configured by the README's environment (metadata-service), the built
 *   layer on /opt.
 *
 * Both run against the same stand-ins (shared with the rest of the bench) answering STS after
 * 50 ms and the exchange after 80 ms, with the same credentials and the same Databricks
 * configuration; every cold start is a fresh RIE, the two kinds interleaved.
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { promisify } from "node:util";
import { join } from "node:path";
import { CLIENT_ID, freePort } from "../test/stack.js";
import type { DatabricksStandIn } from "../test/standins/databricks.js";
import type { StsStandIn } from "../test/standins/sts.js";
import { PYTHON } from "../test/peers/paths.mjs";
import { type Rie, startRie } from "../test/peers/rie.js";

export interface PeersFigure {
  section: string;
  name: string;
  broker: string;
  baseline: string;
  ratio: string;
  goal: string;
  met: boolean | undefined;
}

export interface PeersDeps {
  sts: StsStandIn;
  db: DatabricksStandIn;
  repo: string;
  layerDir: string;
  /** The AWS credentials both functions (and the extension) sign STS requests with. */
  credentials: { accessKeyId: string; secretAccessKey: string; sessionToken: string };
  setDelays(on: boolean): void;
  stsDelayMs: number;
  exchangeDelayMs: number;
  reps(n: number): number;
  log(line: string): void;
  figure(f: PeersFigure): void;
  note(text: string): void;
  /** A bare node:http server answering every request with `body` (bench/bare-server.ts). */
  startBareServer(body: string): Promise<{ port: number; stop(): void }>;
}

type Kind = "documented" | "broker";

/** What each function answers (test/peers/functions/python-*\/app.py). */
interface Answer {
  ok: boolean;
  user_name: string;
  invoke: number;
  /** Epoch ms when the module began loading, and when the handler started. */
  loaded_at: number;
  handler_at: number;
  /** ms since the module began loading (perf_counter): imports done, WorkspaceClient built, handler start and end. */
  imported: number;
  /** ms the `from databricks.sdk import ...` line took (both functions have it). */
  sdk_import_ms: number;
  client_ready: number;
  handler_start: number;
  handler_end: number;
  /** [start, end] of every GetWebIdentityToken the documented function made (ms since load). */
  sts_calls: [number, number][];
  /** The broker's function given {"client": "handler"}: ms to build WorkspaceClient() in the handler. */
  handler_client_ms?: number;
}

interface Cold {
  /** (a) Wall time of the first invoke as the bench sees it: RIE's start, init and the invoke. */
  firstInvokeMs: number;
  /** RIE's own figures: INIT REPORT durationMs, and the first INVOKE RTDONE duration. */
  rieInitMs: number;
  rieInvokeMs: number;
  /** (b) Handler start → the SCIM /Me request arriving at the Databricks stand-in. */
  handlerToMeMs: number;
  /** (b') Handler start → current_user.me() returned, in the function. */
  handlerMs: number;
  /** The function's own init: its module's imports, and building the WorkspaceClient. */
  importsMs: number;
  sdkImportMs: number;
  clientMs: number;
  /** From the bench's spawn of RIE (epoch ms): when things happened. */
  at: Record<string, number>;
  stsCalls: number;
  stsInInit: number;
  stsInHandler: number;
  exchanges: number;
  /** Warm invokes: wall time as the bench sees it, RIE's INVOKE RTDONE duration, and handler start → me() returned. */
  warmMs: number[];
  warmRieMs: number[];
  warmHandlerMs: number[];
  /** The extension's CPU time (all its threads) from its start to the first invoke's answer, and per warm invoke; broker only. */
  extensionCpuMsCold?: number;
  extensionCpuMsPerWarm?: number;
  /** Broker only: the handler building WorkspaceClient() itself on every invoke (what the README advises against): handler start → /Me arrives, and the build alone. */
  inHandler: { toMeMs: number; buildMs: number }[];
}

const WARM_PER_ENV = 5;
const IN_HANDLER_PER_ENV = 3;
const ASKS = 20;

const median = (xs: number[]) => quantile(xs, 0.5);
/** Nearest-rank quantile (p90 of 10 samples: the 9th smallest). */
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (q === 0.5 && s.length % 2 === 0) return (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}
const ms = (x: number) => `${x < 10 ? x.toFixed(2) : x.toFixed(1)} ms`;
const mp = (xs: number[]) => `${ms(median(xs))} (p90 ${ms(quantile(xs, 0.9))})`;
const range = (xs: number[]) => `${ms(Math.min(...xs))}–${ms(Math.max(...xs))}`;

/** RIE writes its own lines as `02 Dec 2026 05:05:47,729 [INFO] (rapid) ...`, in the TZ it was given (UTC). */
function rieTime(line: string): number | undefined {
  const m = /^(\d{2}) (\w{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}),(\d{3}) /.exec(line);
  if (!m) return undefined;
  return Date.parse(`${m[2]} ${m[1]} ${m[3]} ${m[4]}:${m[5]}:${m[6]}.${m[7]} GMT`);
}

async function lineNumber(rie: Rie, re: RegExp): Promise<number> {
  const line = await rie.waitFor(re, 5_000);
  const m = re.exec(line);
  return Number(m?.[1]);
}

const RTDONE = /INVOKE RTDONE\(status: success, .*duration: ([\d.]+)ms\)/;

/** Child processes of `pid` (Linux /proc/<pid>/task/<tid>/children). */
function children(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
      readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number),
    );
  } catch {
    return [];
  }
}

/** The extension's process under RIE: the one whose command line runs the layer's bundle. */
function extensionPid(riePid: number): number | undefined {
  const seen = new Set<number>();
  const queue = [riePid];
  while (queue.length) {
    const pid = queue.shift()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    try {
      if (/databricks-token-broker\/index\.cjs/.test(readFileSync(`/proc/${pid}/cmdline`, "utf8"))) return pid;
    } catch {
      continue;
    }
    queue.push(...children(pid));
  }
  return undefined;
}

/** CPU time in ms every thread of `pid` has run so far (/proc/<pid>/task/<tid>/schedstat, nanoseconds). */
function cpuMs(pid: number): number {
  return readdirSync(`/proc/${pid}/task`).reduce((sum, tid) => {
    try {
      return sum + Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]) / 1e6;
    } catch {
      return sum;
    }
  }, 0);
}

export async function peers(d: PeersDeps): Promise<void> {
  const { sts, db } = d;
  d.log(`6. Python under AWS's Lambda emulator: the documented way against the broker (STS ${d.stsDelayMs} ms, exchange ${d.exchangeDelayMs} ms)`);
  const empty = await mkdtemp(join(tmpdir(), "dtb-bench-empty-opt-"));
  const functions = join(d.repo, "test", "peers", "functions");
  let bare: { port: number; stop(): void } | undefined;
  const asks = { broker: [] as number[], bare: [] as number[] };

  const environment = async (kind: Kind, measureAsks: boolean): Promise<Cold> => {
    const port = await freePort();
    const common = {
      DATABRICKS_HOST: db.url,
      DATABRICKS_CLIENT_ID: CLIENT_ID,
      AWS_ENDPOINT_URL_STS: sts.url,
      AWS_ACCESS_KEY_ID: d.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: d.credentials.secretAccessKey,
      AWS_SESSION_TOKEN: d.credentials.sessionToken,
    };
    const env =
      kind === "documented"
        ? common
        : {
            ...common,
            DATABRICKS_TOKEN_BROKER_ENABLED: "true",
            DATABRICKS_METADATA_SERVICE_URL: `http://localhost:${port}/metadata`,
            DATABRICKS_AUTH_TYPE: "metadata-service",
            DATABRICKS_TOKEN_BROKER_PORT: String(port),
          };
    const before = { sts: sts.calls.length, ex: db.exchanges.length, api: db.apiCalls.length };
    const spawnedAt = Date.now();
    const rie = await startRie({
      layer: kind === "documented" ? empty : d.layerDir,
      task: join(functions, `python-${kind}`),
      bootstrap: [PYTHON, "-m", "awslambdaric", "app.handler"],
      env,
    });
    try {
      const parse = (r: { status: number; body: string }): Answer => {
        if (r.status !== 200) throw new Error(`${kind}: invoke answered ${r.status}: ${r.body}\n${rie.lines.slice(-30).join("\n")}`);
        const a = JSON.parse(r.body) as Answer;
        if (!a.ok || a.user_name !== CLIENT_ID) throw new Error(`${kind}: unexpected answer ${r.body}`);
        return a;
      };
      const first = await rie.invoke({});
      const a = parse(first);
      const meAt = db.apiCalls[before.api]?.time;
      if (meAt === undefined) throw new Error(`${kind}: no /Me call recorded`);
      const rieInitMs = await lineNumber(rie, /INIT REPORT\(durationMs: ([\d.]+)\)/);
      const rieInvokeMs = await lineNumber(rie, RTDONE);
      const stsCalls = sts.calls.slice(before.sts);
      const exchanges = db.exchanges.slice(before.ex);
      // boto3's (and the extension's) requests, as the STS stand-in read and verified them (SigV4 included).
      for (const c of stsCalls) {
        const asked = `${c.action} ${c.audience.join(",")} ${c.signingAlgorithm} ${c.durationSeconds} ${c.accessKeyId}`;
        if (!c.ok || c.action !== "GetWebIdentityToken" || c.audience.join(",") !== "databricks" || c.accessKeyId !== d.credentials.accessKeyId) {
          throw new Error(`${kind}: STS answered ${c.status} ${c.error ?? ""} to ${asked}`);
        }
        if (kind === "documented" && (c.signingAlgorithm !== "RS256" || c.durationSeconds !== 300)) throw new Error(`documented: STS was asked ${asked}`);
      }
      const rel = (epochMs: number) => epochMs - spawnedAt;
      const at: Record<string, number> = {
        "module load": rel(a.loaded_at),
        "WorkspaceClient built": rel(a.loaded_at + a.client_ready),
        "handler start": rel(a.handler_at),
        "/Me arrives": rel(meAt),
      };
      const initStart = rie.lines.map((l) => (/INIT START/.test(l) ? rieTime(l) : undefined)).find((t) => t !== undefined);
      if (initStart !== undefined) at["RIE INIT START"] = rel(initStart);
      if (stsCalls[0]) at["first STS request arrives"] = rel(stsCalls[0].time);
      if (stsCalls[1]) at["second STS request arrives"] = rel(stsCalls[1].time);
      if (exchanges[0]) at["exchange arrives"] = rel(exchanges[0].time);
      if (kind === "broker") {
        const registered = rie.lines.find((l) => /External agent databricks-token-broker .* registered/.test(l));
        if (registered) at["extension registered"] = rel(rieTime(registered)!);
        const refreshed = rie.extensionLogs().find((l) => l.msg === "token refreshed");
        if (refreshed) at["broker's token ready"] = rel(Date.parse(String(refreshed.time)));
      }
      const warmMs: number[] = [];
      const warmHandlerMs: number[] = [];
      const ext = kind === "broker" ? extensionPid(rie.child.pid!) : undefined;
      if (kind === "broker" && ext === undefined) throw new Error("the extension's process was not found under RIE");
      const cpuBefore = ext === undefined ? 0 : cpuMs(ext);
      const extensionCpuMsCold = ext === undefined ? undefined : cpuBefore;
      for (let i = 0; i < WARM_PER_ENV; i++) {
        const r = await rie.invoke({});
        const w = parse(r);
        warmMs.push(r.ms);
        warmHandlerMs.push(w.handler_end - w.handler_start);
      }
      const rtdone = () => rie.lines.flatMap((l) => {
        const m = RTDONE.exec(l);
        return m ? [Number(m[1])] : [];
      });
      // RIE writes its RTDONE line before it answers; the pipe may deliver it a moment later.
      for (let i = 0; i < 50 && rtdone().length < 1 + WARM_PER_ENV; i++) await new Promise((r) => setTimeout(r, 20));
      const warmRieMs = rtdone().slice(1, 1 + WARM_PER_ENV);
      const extensionCpuMsPerWarm = ext === undefined ? undefined : (cpuMs(ext) - cpuBefore) / WARM_PER_ENV;
      const inHandler: Cold["inHandler"] = [];
      if (kind === "broker") {
        for (let i = 0; i < IN_HANDLER_PER_ENV; i++) {
          const apiBefore = db.apiCalls.length;
          const w = parse(await rie.invoke({ client: "handler" }));
          const arrived = db.apiCalls[apiBefore]?.time;
          if (arrived === undefined) throw new Error("no /Me call recorded");
          inHandler.push({ toMeMs: arrived - w.handler_at, buildMs: w.handler_client_ms! });
        }
      }
      if (measureAsks) {
        const metadata = `http://localhost:${port}/metadata`;
        if (!bare) {
          const res = await fetch(`http://127.0.0.1:${port}/metadata`, { headers: { "x-databricks-metadata-version": "1", "x-databricks-host": db.url } });
          const body = await res.text();
          if (res.status !== 200) throw new Error(`broker /metadata answered ${res.status}: ${body}`);
          bare = await d.startBareServer(body);
        }
        const bareUrl = `http://localhost:${bare.port}/metadata`;
        const r = await rie.invoke({ ask: { urls: [metadata, bareUrl], n: ASKS } });
        if (r.status !== 200) throw new Error(`asks: ${r.status} ${r.body}`);
        const times = (JSON.parse(r.body) as { asks: Record<string, number[]> }).asks;
        // The first of each is a connection set-up like the rest (requests keeps none), but it
        // also warms the SDK's code paths: left out of both alike.
        asks.broker.push(...times[metadata]!.slice(1));
        asks.bare.push(...times[bareUrl]!.slice(1));
      }
      return {
        firstInvokeMs: first.ms,
        rieInitMs,
        rieInvokeMs,
        handlerToMeMs: meAt - a.handler_at,
        handlerMs: a.handler_end - a.handler_start,
        importsMs: a.imported,
        sdkImportMs: a.sdk_import_ms,
        clientMs: a.client_ready - a.imported,
        at,
        stsCalls: stsCalls.length,
        stsInInit: a.sts_calls.filter(([s]) => s < a.client_ready).length,
        stsInHandler: a.sts_calls.filter(([s]) => s >= a.handler_start).length,
        exchanges: exchanges.length,
        warmMs,
        warmRieMs,
        warmHandlerMs,
        extensionCpuMsCold,
        extensionCpuMsPerWarm,
        inHandler,
      };
    } finally {
      await rie.close();
    }
  };

  const versions = (
    await promisify(execFile)(PYTHON, [
      "-c",
      "import sys, importlib.metadata as m; print('Python ' + sys.version.split()[0] + ', ' + ', '.join(p + ' ' + m.version(p) for p in ('awslambdaric', 'databricks-sdk', 'boto3', 'botocore')))",
    ])
  ).stdout.trim();
  const runs: Record<Kind, Cold[]> = { documented: [], broker: [] };
  d.setDelays(true);
  try {
    // Untimed: Python's bytecode caches, the file cache and the stand-ins' key caches warm for both.
    await environment("documented", false);
    await environment("broker", false);
    const n = d.reps(10);
    for (let i = 0; i < n; i++) {
      // Alternating which goes first, so drift in the machine's load falls on both alike.
      const order: Kind[] = i % 2 ? ["broker", "documented"] : ["documented", "broker"];
      for (const kind of order) {
        const r = await environment(kind, kind === "broker");
        runs[kind].push(r);
        d.log(
          `  ${kind.padEnd(10)} cold ${ms(r.firstInvokeMs)} (RIE init ${ms(r.rieInitMs)}, imports ${ms(r.importsMs)}, client ${ms(r.clientMs)}); handler → /Me ${ms(r.handlerToMeMs)}; warm ${ms(median(r.warmMs))}; STS ${r.stsCalls}, exchanges ${r.exchanges}`,
        );
      }
    }
  } finally {
    d.setDelays(false);
    bare?.stop();
    await rm(empty, { recursive: true, force: true });
  }

  const section = "6. Python, documented way";
  const B = runs.broker;
  const D = runs.documented;
  const pick = (rs: Cold[], f: (r: Cold) => number) => rs.map(f);
  const row = (name: string, f: (r: Cold) => number, goal = "report", met?: boolean) => {
    const b = pick(B, f);
    const o = pick(D, f);
    d.figure({ section, name, broker: mp(b), baseline: mp(o), ratio: `${(median(b) / median(o)).toFixed(2)}×`, goal, met });
  };
  const coldToMe = pick(B, (r) => r.handlerToMeMs);
  row("cold: init + first invoke (invoke wall time)", (r) => r.firstInvokeMs);
  row("cold: the same, less the function's databricks-sdk import (common to both)", (r) => r.firstInvokeMs - r.sdkImportMs);
  row("cold: RIE's INIT REPORT duration", (r) => r.rieInitMs);
  row("cold: RIE's first INVOKE duration", (r) => r.rieInvokeMs);
  row("cold: handler start → /Me arrives at Databricks", (r) => r.handlerToMeMs, "broker ≤ 10 ms", median(coldToMe) <= 10);
  row("cold: handler start → current_user.me() returned", (r) => r.handlerMs);
  row("cold: the function's imports (databricks-sdk; boto3 too, documented)", (r) => r.importsMs);
  row("cold: of which the databricks-sdk import alone", (r) => r.sdkImportMs);
  row("cold: building the WorkspaceClient", (r) => r.clientMs);
  const extCold = B.map((r) => r.extensionCpuMsCold!);
  d.figure({ section, name: "cold: the extension's CPU time, start → first invoke answered (all its threads)", broker: mp(extCold), baseline: "no extension", ratio: "—", goal: "report", met: undefined });
  const warmB = B.flatMap((r) => r.warmMs);
  const warmD = D.flatMap((r) => r.warmMs);
  d.figure({
    section,
    name: `warm invoke (wall time; ${WARM_PER_ENV} per environment)`,
    broker: mp(warmB),
    baseline: mp(warmD),
    ratio: `${(median(warmB) / median(warmD)).toFixed(2)}×; ${(median(warmB) - median(warmD) >= 0 ? "+" : "") + (median(warmB) - median(warmD)).toFixed(2)} ms`,
    goal: "report",
    met: undefined,
  });
  const warmRB = B.flatMap((r) => r.warmRieMs);
  const warmRD = D.flatMap((r) => r.warmRieMs);
  d.figure({ section, name: "warm: RIE's INVOKE duration (runtime's part)", broker: mp(warmRB), baseline: mp(warmRD), ratio: `${(median(warmRB) / median(warmRD)).toFixed(2)}×`, goal: "report", met: undefined });
  const extCpu = B.map((r) => r.extensionCpuMsPerWarm!);
  d.figure({ section, name: "warm: the extension's CPU time per invoke (all its threads)", broker: mp(extCpu), baseline: "no extension", ratio: "—", goal: "report", met: undefined });
  const warmHB = B.flatMap((r) => r.warmHandlerMs);
  const warmHD = D.flatMap((r) => r.warmHandlerMs);
  d.figure({ section, name: "warm: handler start → current_user.me() returned", broker: mp(warmHB), baseline: mp(warmHD), ratio: `${(median(warmHB) / median(warmHD)).toFixed(2)}×`, goal: "report", met: undefined });
  const inH = B.flatMap((r) => r.inHandler);
  d.figure({
    section,
    name: "warm, WorkspaceClient() built in the handler on every invoke: handler start → /Me arrives",
    broker: `${mp(inH.map((x) => x.toMeMs))}; of which building ${ms(median(inH.map((x) => x.buildMs)))}`,
    baseline: "—",
    ratio: "—",
    goal: "report",
    met: undefined,
  });
  const askAdds = median(asks.broker) - median(asks.bare);
  d.figure({
    section,
    name: "one ask as the SDK makes it (MetadataServiceTokenSource.refresh) from a warm function",
    broker: `${mp(asks.broker)} (broker's /metadata)`,
    baseline: `${mp(asks.bare)} (bare node:http, same bytes)`,
    ratio: `${askAdds >= 0 ? "+" : ""}${askAdds.toFixed(2)} ms`,
    goal: "adds < 1 ms",
    met: askAdds < 1,
  });
  const calls = (rs: Cold[]) => {
    const sts = [...new Set(rs.map((r) => r.stsCalls))].join("/");
    const ex = [...new Set(rs.map((r) => r.exchanges))].join("/");
    return `${sts} STS, ${ex} exchange`;
  };
  d.figure({
    section,
    name: "upstream calls per cold start",
    broker: `${calls(B)} (the extension's)`,
    baseline: `${calls(D)} (the function's: ${median(D.map((r) => r.stsInInit))} STS while building the client, ${median(D.map((r) => r.stsInHandler))} in the handler)`,
    ratio: "—",
    goal: "report",
    met: undefined,
  });

  const timeline = (rs: Cold[]) => {
    const keys = [...new Set(rs.flatMap((r) => Object.keys(r.at)))];
    return keys
      .map((k) => [k, median(rs.flatMap((r) => (k in r.at ? [r.at[k]!] : [])))] as const)
      .sort((x, y) => x[1] - y[1])
      .map(([k, v]) => `${k} ${v.toFixed(0)}`)
      .join(", ");
  };
  const tokenMargin = B.flatMap((r) => ("broker's token ready" in r.at ? [r.at["WorkspaceClient built"]! - r.at["broker's token ready"]!] : []));
  d.note(
    `Runs: ${B.length} cold starts of each kind, interleaved (which goes first alternates), each a fresh RIE, after one untimed of each; each cold invoke is followed by ${WARM_PER_ENV} warm ones. Medians, and p90 by nearest rank (the sample of rank ⌈0.9·n⌉ in ascending order: ${Math.ceil(0.9 * B.length)} of ${B.length} for the cold figures), over the cold starts and over all warm invokes.`,
  );
  d.note(
    `The two functions. Documented (test/peers/functions/python-documented), as the Databricks page has it: a module-level WorkspaceClient(host, client_id, credentials_strategy) whose oidc.IdTokenSource builds a boto3 STS client and calls get_web_identity_token (audience databricks, RS256, 300 s) on every call; boto3 reaches the STS stand-in through AWS_ENDPOINT_URL_STS, and its SigV4-signed requests pass the stand-in's verification. /opt is an empty directory: no extension process at all. Broker (test/peers/functions/python-broker): the same module-level client, built as WorkspaceClient() from the README's environment (DATABRICKS_HOST, DATABRICKS_METADATA_SERVICE_URL, DATABRICKS_AUTH_TYPE=metadata-service), the built layer on /opt. Both: the same handler (w.current_user.me() and nothing else), the same stand-ins (STS ${d.stsDelayMs} ms, exchange ${d.exchangeDelayMs} ms, per call; host metadata, OIDC discovery and /Me undelayed), the same credentials (a ${d.credentials.sessionToken.length}-character session token), the same Python (${versions}; test/peers/requirements.txt). Both find the OIDC endpoints from the host's /.well-known/databricks-config, as against a real workspace.`,
  );
  d.note(
    `Cold figures. Init + first invoke: wall time of the first invoke request, from its first try while RIE starts listening to its answer. RIE inits only when the first invoke arrives, as Lambda does for an on-demand cold start, so this is RIE's start, the extension's start and registration (Lambda and RIE start the runtime only after it), the runtime's init and the invoke. Less the databricks-sdk import: the same per cold start less that process's own \`from databricks.sdk import\` line, which both have and which swings with the machine's load more than all the rest (boto3's import stays in: it is the documented way's own). RIE's INIT REPORT and first INVOKE RTDONE durations are RIE's own log lines (its REPORT line's "Init Duration" is no use: RIE writes 0.0x ms there). Handler start → /Me arrives: time.time() at the handler's first line against the Databricks stand-in's Date.now() when the SCIM /Me request arrives (same clock, 1 ms resolution). The extension's CPU time: the sum of /proc/<pid>/task/*/schedstat over its threads, read once the first invoke is answered.`,
  );
  d.note(
    `Warm figures. Wall time of each later invoke request; RIE's INVOKE duration is its RTDONE figure, the runtime's part. The extension's CPU per warm invoke: the growth of its schedstat over the ${WARM_PER_ENV} warm invokes, divided by ${WARM_PER_ENV}. A client per invoke: ${IN_HANDLER_PER_ENV} more warm invokes of each broker environment in which the handler builds WorkspaceClient() itself (the README and examples/python/app.py build it once, at init), before current_user.me() (the SDK's Config init: a GET of the host's /.well-known/databricks-config, then one /metadata request to the broker). One ask: the function calls the SDK's own MetadataServiceTokenSource.refresh() (requests.get, a new connection each time, as when the SDK's cached token goes stale) ${ASKS} times against the broker's /metadata and as many against a bare node:http server answering the same bytes, in turn, in a warm invoke of each broker environment; the first of each left out. With a module-level client neither function asks for a token on a warm invoke: the SDK keeps it until half its life (at most 20 minutes) is left.`,
  );
  d.note(
    `Median timelines, ms from RIE's spawn. Documented: ${timeline(D)}. Broker: ${timeline(B)}. The broker's token was ready ${ms(median(tokenMargin))} (${range(tokenMargin)}) before the function's WorkspaceClient() was built: WorkspaceClient() asks /metadata once while it is built (the metadata-service provider fetches a token to validate itself), so with a module-level client any wait for the broker's first token falls in init, never in the handler, and here there was none. What RIE does not show: it never freezes, so under provisioned concurrency or SnapStart (frozen right after init) a prefetch still in flight would finish only at the thaw (the SDK's init-time ask keeps init open until the token is there, so a module-level client is not affected); and it runs on this machine's CPUs, where Lambda gives a function CPU in proportion to its memory, shared by the runtime and every extension.`,
  );
}
