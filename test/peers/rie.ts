/**
 * AWS's Lambda Runtime Interface Emulator (RIE, built by test/peers/install.mjs) running the
 * built layer and a function the way Lambda does: the layer at /opt (RIE starts every file
 * under /opt/extensions and serves the real Extensions and Runtime APIs), the function at
 * /var/task, a real runtime interface client as the bootstrap. Each RIE runs in its own mount
 * namespace (`unshare -m`, then bind mounts), so the machine's own /opt never changes and test
 * files run side by side on their own ports.
 *
 * What RIE does not emulate, read from its source at the pinned version, and so what no test
 * here can show:
 * - no freeze: between invokes every process keeps running (Lambda stops them all);
 * - init is lazy: extensions and the runtime start at the first invoke, and init's duration is
 *   counted into it (the Managed Instances mode, `AWS_LAMBDA_MAX_CONCURRENCY`, inits at start);
 * - SIGTERM to RIE sends SHUTDOWN with reason `SandboxTerminated`, a value the Extensions API
 *   reference does not list (it lists spindown, timeout, failure);
 * - whatever RIE's own environment holds is the function's and the extensions' environment:
 *   Lambda's reserved variables are set here by the test, as Lambda would set them.
 * The Managed Instances mode differs from the on-demand one: it ignores the bootstrap given
 * here (only the handler, its last word, is read) and runs the first of /var/runtime/bootstrap,
 * /var/task/bootstrap, /opt/bootstrap that exists; and it runs every process as uid 993, as
 * Lambda does. This machine has no /etc/passwd entry for it, like a container image not built
 * on Lambda's base images, so those tests also show the layer copes without one.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { freePort } from "../stack.js";
import { LAMBDA_CREDENTIALS } from "../standins/credentials.js";
import { OPT, RIE, TASK_ROOT } from "./paths.mjs";

export interface RieOptions {
  /** The directory bound on /opt: the unpacked layer (dist/layer). */
  layer: string;
  /** The directory bound on /var/task: the function's code. */
  task: string;
  /** The runtime's bootstrap command; its last word is the handler (as RIE reads it). */
  bootstrap: string[];
  /** The function's configuration: merged over the Lambda variables below, `undefined` removes one. */
  env?: Record<string, string | undefined>;
  /** Runs RIE's Managed Instances mode with this many concurrent invokes. */
  maxConcurrency?: number;
  /** RIE's own log level (default info); debug adds, among others, each process's exit status. */
  logLevel?: "debug" | "info" | "warn" | "error";
  /**
   * Files of this machine the function's runtime would not have, hidden inside the namespace
   * (/dev/null bound over each): the machine's own `node` for a Python function, say.
   */
  hide?: string[];
  /** Echo every line RIE, the runtime and the extension write (debugging). */
  echo?: boolean;
}

export interface InvokeResult {
  status: number;
  body: string;
  /** Wall time of the invoke request, init included on the first one. */
  ms: number;
}

export interface Rie {
  /** Every line written by RIE, the runtime and the extension, in order. */
  readonly lines: string[];
  /** The extension's JSON log lines. */
  extensionLogs(): Record<string, unknown>[];
  invoke(payload?: unknown, timeoutMs?: number): Promise<InvokeResult>;
  /** Resolves with the next line matching `re`, among the lines already written or to come. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<string>;
  /** SIGTERM (Lambda's SHUTDOWN) and wait for RIE to exit; its exit code. */
  close(): Promise<number | null>;
  readonly child: ChildProcess;
  /** The environment RIE and so the function and the extension were given. */
  readonly env: Readonly<Record<string, string>>;
}

/**
 * The part of a Lambda environment a runtime and an extension read: what Lambda sets on every
 * function (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime).
 */
const lambdaEnv = (o: RieOptions): Record<string, string> => ({
  PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
  LANG: "en_US.UTF-8",
  TZ: ":UTC",
  LAMBDA_TASK_ROOT: TASK_ROOT,
  AWS_LAMBDA_FUNCTION_NAME: "peer-function",
  AWS_LAMBDA_FUNCTION_MEMORY_SIZE: "512",
  AWS_LAMBDA_FUNCTION_VERSION: "$LATEST",
  AWS_LAMBDA_FUNCTION_TIMEOUT: "30",
  AWS_REGION: "us-east-1",
  AWS_DEFAULT_REGION: "us-east-1",
  AWS_LAMBDA_INITIALIZATION_TYPE: o.maxConcurrency ? "lambda-managed-instances" : "on-demand",
  // The execution role's session credentials; the STS stand-in accepts these by default.
  AWS_ACCESS_KEY_ID: LAMBDA_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: LAMBDA_CREDENTIALS.secretAccessKey,
  AWS_SESSION_TOKEN: LAMBDA_CREDENTIALS.sessionToken!,
  ...(o.maxConcurrency ? { AWS_LAMBDA_MAX_CONCURRENCY: String(o.maxConcurrency) } : {}),
});

export async function startRie(o: RieOptions): Promise<Rie> {
  const [runtimePort, invokePort] = [await freePort(), await freePort()];
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...lambdaEnv(o), ...o.env })) if (v !== undefined) env[k] = v;
  // The mounts are private to this namespace and vanish with it; `exec` leaves RIE itself as
  // the process SIGTERM reaches. RIE's default listen address is 0.0.0.0: both are loopback here.
  const hide = (o.hide ?? []).map((p) => ` && mount --bind /dev/null ${JSON.stringify(p)}`).join("");
  const script = `mount --bind "$1" ${OPT} && mount --bind "$2" ${TASK_ROOT}${hide} && cd ${TASK_ROOT} && shift 2 && exec "$@"`;
  const child = spawn(
    "unshare",
    [
      "-m",
      "--propagation",
      "private",
      "sh",
      "-c",
      script,
      "rie",
      o.layer,
      o.task,
      RIE,
      "--runtime-api-address",
      `127.0.0.1:${runtimePort}`,
      "--runtime-interface-emulator-address",
      `127.0.0.1:${invokePort}`,
      "--log-level",
      o.logLevel ?? "info",
      // RIE reads its options leniently (unknown ones, such as python's -m, pass through to
      // the bootstrap) and does not take "--" as their end.
      ...o.bootstrap,
    ],
    { env, stdio: ["ignore", "pipe", "pipe"] },
  );
  const lines: string[] = [];
  const waiters = new Set<{ re: RegExp; resolve: (l: string) => void }>();
  const onLine = (line: string) => {
    lines.push(line);
    if (o.echo) process.stderr.write(`[rie] ${line}\n`);
    for (const w of waiters) if (w.re.test(line)) (waiters.delete(w), w.resolve(line));
  };
  createInterface({ input: child.stdout! }).on("line", onLine);
  createInterface({ input: child.stderr! }).on("line", onLine);
  const exited = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => resolve(code)),
  );

  const invokeUrl = `http://127.0.0.1:${invokePort}/2015-03-31/functions/function/invocations`;
  // RIE listens a moment after it starts; the first invoke retries a refused connection.
  const post = async (payload: unknown, signal: AbortSignal): Promise<Response> => {
    for (;;) {
      try {
        // The Managed Instances mode hands the runtime this Content-Type (awslambdaric then passes
        // the handler bytes, not the parsed event, unless it is application/json); fetch's
        // default for a string is text/plain.
        return await fetch(invokeUrl, { method: "POST", body: JSON.stringify(payload ?? {}), headers: { "content-type": "application/json" }, signal });
      } catch (err) {
        if (signal.aborted || !/ECONNREFUSED/.test(String((err as Error).cause ?? err))) throw err;
        if (child.exitCode !== null) throw new Error(`RIE exited (${child.exitCode}):\n${lines.slice(-30).join("\n")}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  };

  return {
    lines,
    child,
    env,
    extensionLogs: () =>
      lines.flatMap((l) => {
        if (!l.startsWith("{")) return [];
        try {
          const j = JSON.parse(l) as Record<string, unknown>;
          return typeof j.msg === "string" && typeof j.level === "string" ? [j] : [];
        } catch {
          return [];
        }
      }),
    async invoke(payload, timeoutMs = 60_000) {
      const started = performance.now();
      const res = await post(payload, AbortSignal.timeout(timeoutMs));
      const body = await res.text();
      return { status: res.status, body, ms: performance.now() - started };
    },
    waitFor(re, timeoutMs = 20_000) {
      const seen = lines.find((l) => re.test(l));
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = { re, resolve };
        waiters.add(w);
        setTimeout(() => {
          if (waiters.delete(w)) reject(new Error(`no line matching ${re} within ${timeoutMs} ms:\n${lines.slice(-30).join("\n")}`));
        }, timeoutMs).unref();
      });
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      // RIE waits for the extensions' SHUTDOWN; past that it is killed, as Lambda would.
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
