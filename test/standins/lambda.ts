// A local stand-in for the AWS Lambda execution environment, seen from an external
// extension: it serves the Extensions API on loopback, runs the extension as a child
// process the way Lambda runs /opt/extensions/*, and lets a test or the demo drive the
// lifecycle (init, invoke, freeze/thaw, shutdown). As Lambda does, it knows the extension by
// its executable's file name, and freezes the environment whenever nothing runs in it: once
// init completes (as provisioned concurrency and SnapStart do, with the prefetch often still in
// flight) and after every invoke; an invoke thaws it.
//
// Wire behaviour follows the Extensions API reference
// (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html) and, where
// the reference is silent (error bodies, status codes, Managed Instances), the published
// Runtime Interface Emulator (github.com/aws/aws-lambda-runtime-interface-emulator).

import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { basename } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { LAMBDA_CREDENTIALS } from "./credentials.js";
import type { AwsCredential } from "./sigv4.js";

const API_PREFIX = "/2020-01-01/extension";

/** Lambda's Init phase limit. */
export const DEFAULT_INIT_TIMEOUT_MS = 10_000;
/** Lambda's default function timeout; it bounds the whole Invoke phase, extensions included. */
export const DEFAULT_FUNCTION_TIMEOUT_MS = 3_000;
/** Shutdown phase limit for a function with one or more external extensions. */
export const SHUTDOWN_LIMIT_MS = 2_000;
/** How long an extension that reported init/error gets to exit on its own before the reset kills it. */
export const INIT_ERROR_GRACE_MS = 300;

export type ShutdownReason = "spindown" | "timeout" | "failure";
export type OutputStream = "stdout" | "stderr";

export interface StartLambdaOptions {
  /**
   * Executable to run, e.g. the layer's `extensions/<name>` launcher. Its file name is the name
   * Lambda expects in `Lambda-Extension-Name` (any other is taken for an internal extension).
   */
  command: string;
  args?: string[];
  /** Merged over the emulated Lambda environment; the caller wins, `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /**
   * Run the extension as this user (and `gid`, default the same), as Lambda runs extensions as
   * its sandbox user (uid 993, sbx_user1051) rather than root. Needs a root test process.
   */
  uid?: number;
  gid?: number;
  initTimeoutMs?: number;
  /** The function's timeout: sets INVOKE `deadlineMs` and bounds `invoke()`. */
  functionTimeoutMs?: number;
  /**
   * Freeze the environment whenever Lambda would (default true): once init completes and after
   * every completed invoke; an invoke or a shutdown thaws it. False keeps it running between
   * invokes, for a test that talks to the extension from outside any invoke (which no function
   * in Lambda can do; a Managed Instances environment is never frozen anyway).
   */
  freezeWhenIdle?: boolean;
  /**
   * The function's init code (the runtime's Init phase). Lambda starts the runtime once the
   * extensions have registered, so this runs then, beside the extension's own init; init
   * completes when both are done (the extension has asked for its first event). Its result
   * is the init result's `functionInit`; a throw fails the init as a function init error.
   */
  functionInit?: () => unknown;
  /**
   * The execution role's temporary credentials (default: LAMBDA_CREDENTIALS). In the environment
   * as AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; for SnapStart
   * (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start) served instead at AWS_CONTAINER_CREDENTIALS_FULL_URI
   * to whoever sends AWS_CONTAINER_AUTHORIZATION_TOKEN, as Lambda does for SnapStart functions.
   */
  credentials?: AwsCredential;
  accountId?: string;
  handler?: string;
  onLine?: (stream: OutputStream, line: string) => void;
}

export interface Registration {
  extensionId: string;
  name: string;
  /** A name other than the expected one is taken as an internal extension, as Lambda does. */
  kind: "external" | "internal";
  events: string[];
  at: number;
}

export interface ReportedError {
  extensionId: string;
  extensionName: string;
  /** The `Lambda-Extension-Function-Error-Type` header. */
  errorType: string;
  /** The JSON body when it parses, else the raw text. */
  body: unknown;
  at: number;
}

/** `performance.now()` readings in this process; fields stay undefined until they happen. */
export interface InitTimings {
  spawnedAt: number;
  registeredAt?: number;
  firstNextAt?: number;
  initDoneAt?: number;
}

export type InitResult =
  | { ok: true; status: "registered"; spawnToRegisteredMs: number; spawnToReadyMs: number; registration: Registration; functionInit?: unknown }
  | { ok: false; status: "failed"; errorType: string; initErrors: ReportedError[]; exitErrors: ReportedError[] }
  | { ok: false; status: "timeout"; timeoutMs: number }
  | { ok: false; status: "exited"; code: number | null; signal: NodeJS.Signals | null; spawnError?: string };

export interface InvokeContext {
  requestId: string;
  deadlineMs: number;
  invokedFunctionArn: string;
  traceId: string;
}

export interface InvokeTimings {
  startedAt: number;
  handlerDoneAt: number | undefined;
  extensionsDoneAt: number | undefined;
  durationMs: number;
  /** Time extensions kept the invoke open after the function returned (Lambda's PostRuntimeExecutionDuration). */
  postRuntimeMs: number;
}

export interface InvokeResult<T> {
  requestId: string;
  /** Undefined when the invoke timed out before the handler returned. */
  result: T | undefined;
  /** How many registered extensions were sent this INVOKE. */
  deliveredTo: number;
  timedOut: boolean;
  timings: InvokeTimings;
  /** Set when a timeout made the emulator reset the environment, as Lambda does. */
  shutdown?: ShutdownResult;
}

export interface ShutdownResult {
  reason: ShutdownReason;
  deadlineMs: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  elapsedMs: number;
  /** True when the process was still alive at the deadline (or never asked for SHUTDOWN) and got SIGKILL. */
  killed: boolean;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  spawnError?: string;
}

export interface LambdaEmulator {
  /** `127.0.0.1:PORT`, the child's `AWS_LAMBDA_RUNTIME_API`. */
  readonly runtimeApi: string;
  readonly child: ChildProcess;
  readonly pid: number | undefined;
  /** The environment the child was started with. */
  readonly env: Readonly<Record<string, string>>;
  readonly managedInstances: boolean;
  readonly init: Promise<InitResult>;
  readonly exited: Promise<ExitInfo>;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly initErrors: ReportedError[];
  readonly exitErrors: ReportedError[];
  readonly registrations: Registration[];
  /** Requests to the SnapStart credentials endpoint, and whether each carried the right token. */
  readonly credentialRequests: { at: number; authorized: boolean }[];
  readonly timings: InitTimings;
  readonly frozen: boolean;
  readonly alive: boolean;
  invoke<T = void>(handler?: (ctx: InvokeContext) => T | Promise<T>): Promise<InvokeResult<T>>;
  freeze(): void;
  thaw(): void;
  shutdown(reason?: ShutdownReason): Promise<ShutdownResult>;
  /** Resolves with the first stdout/stderr line (past or future) that matches. */
  waitForLine(match: RegExp | ((line: string) => boolean), options?: { stream?: OutputStream; timeoutMs?: number }): Promise<string>;
  close(): Promise<void>;
}

// Every live child, so that a crashing test run or Ctrl-C in the demo leaves nothing behind.
const liveGroups = new Set<number>();
let exitHooksInstalled = false;

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the whole group is gone already.
  }
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  const killAll = (): void => {
    for (const pid of liveGroups) killGroup(pid, "SIGKILL");
    liveGroups.clear();
  };
  process.on("exit", killAll);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const onSignal = (): void => {
      killAll();
      // Only stand in for the default action when nobody else handles the signal.
      if (process.listenerCount(signal) === 1) {
        process.removeListener(signal, onSignal);
        process.kill(process.pid, signal);
      }
    };
    process.on(signal, onSignal);
  }
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface PendingEvent {
  eventType: "INVOKE" | "SHUTDOWN";
  body: string;
  /** Settles once the extension asks for the next event after this one (or can no longer). */
  done: Deferred<void>;
}

type AgentState = "Registered" | "Ready" | "Running" | "InitError" | "ExitError" | "Exited";

interface Agent {
  registration: Registration;
  state: AgentState;
  waiting: ServerResponse | undefined;
  queue: PendingEvent[];
  current: PendingEvent | undefined;
}

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/**
 * Where a SnapStart environment's SDKs get the execution role's credentials. The path is the
 * emulator's own (Lambda's is not documented, and no client depends on it: the SDKs read the
 * whole URL from AWS_CONTAINER_CREDENTIALS_FULL_URI).
 */
export const CREDENTIALS_PATH = "/2021-04-23/credentials";

function lambdaDefaults(runtimeApi: string, snapStart: boolean, credentials: AwsCredential, containerToken: string): Record<string, string> {
  // Only what an external extension sees: the reference lists _HANDLER, LAMBDA_TASK_ROOT,
  // LAMBDA_RUNTIME_DIR, AWS_EXECUTION_ENV, the log group/stream and X-Ray variables as
  // runtime-only, so they are left out here; a caller may still add them through `env`.
  return {
    AWS_LAMBDA_RUNTIME_API: runtimeApi,
    AWS_REGION: "us-east-1",
    AWS_DEFAULT_REGION: "us-east-1",
    AWS_LAMBDA_FUNCTION_NAME: "token-broker-demo",
    AWS_LAMBDA_FUNCTION_VERSION: "$LATEST",
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: "128",
    AWS_LAMBDA_INITIALIZATION_TYPE: "on-demand",
    // The execution role's temporary credentials. SnapStart environments get none in the
    // environment (they would be frozen into the snapshot): the SDKs fetch them from a
    // container credentials endpoint, with AWS_CONTAINER_AUTHORIZATION_TOKEN.
    ...(snapStart
      ? { AWS_CONTAINER_CREDENTIALS_FULL_URI: `http://${runtimeApi}${CREDENTIALS_PATH}`, AWS_CONTAINER_AUTHORIZATION_TOKEN: containerToken }
      : {
          AWS_ACCESS_KEY_ID: credentials.accessKeyId,
          AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
          ...(credentials.sessionToken !== undefined ? { AWS_SESSION_TOKEN: credentials.sessionToken } : {}),
        }),
    TZ: ":UTC",
    LANG: "en_US.UTF-8",
  };
}

function buildEnv(runtimeApi: string, overrides: Record<string, string | undefined> | undefined, credentials: AwsCredential, containerToken: string): Record<string, string> {
  const env: Record<string, string> = {};
  // PATH lets a launcher find `node`; nothing else of the parent's environment leaks in,
  // so a test cannot pass by accident on the developer's own AWS or Databricks settings.
  // Lambda sets no HOME either (its runtime variables do not include it).
  if (process.env.PATH !== undefined) env.PATH = process.env.PATH;
  Object.assign(env, lambdaDefaults(runtimeApi, overrides?.AWS_LAMBDA_INITIALIZATION_TYPE === "snap-start", credentials, containerToken));
  for (const [key, value] of Object.entries(overrides ?? {})) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  return env;
}

function traceHeader(): string {
  const epochHex = Math.floor(Date.now() / 1000).toString(16).padStart(8, "0");
  return `Root=1-${epochHex}-${randomBytes(12).toString("hex")};Parent=${randomBytes(8).toString("hex")};Sampled=0`;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  // Lambda's Go encoder ends every JSON body with a newline.
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text), ...headers });
  res.end(text);
}

function forbidden(res: ServerResponse, errorType: string, errorMessage: string): void {
  sendJson(res, 403, { errorMessage, errorType });
}

function transitionError(res: ServerResponse, from: string, to: string, who: string): void {
  forbidden(
    res,
    "Extension.InvalidExtensionState",
    `State transition from ${from} to ${to} failed for extension ${who}. Error: state transition is not allowed`,
  );
}

function parseJsonOrText(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export async function startLambda(options: StartLambdaOptions): Promise<LambdaEmulator> {
  // Lambda knows an external extension by its executable's file name in /opt/extensions.
  const extensionName = basename(options.command);
  const freezeWhenIdle = options.freezeWhenIdle ?? true;
  const initTimeoutMs = options.initTimeoutMs ?? DEFAULT_INIT_TIMEOUT_MS;
  const functionTimeoutMs = options.functionTimeoutMs ?? DEFAULT_FUNCTION_TIMEOUT_MS;
  const accountId = options.accountId ?? "123456789012";
  const handlerName = options.handler ?? "index.handler";

  const agents = new Map<string, Agent>();
  const registrations: Registration[] = [];
  const initErrors: ReportedError[] = [];
  const exitErrors: ReportedError[] = [];
  const stdout: string[] = [];
  const stderr: string[] = [];
  const lineWaiters = new Set<(stream: OutputStream, line: string) => void>();

  const initDeferred = deferred<InitResult>();
  let initSettled: InitResult | undefined;
  let registrationClosed = false;
  let shuttingDown = false;
  let shutdownPromise: Promise<ShutdownResult> | undefined;
  let frozen = false;
  let invokeInFlight = false;
  /** The function's init code, started once the extension registered. */
  let functionInitRun: Promise<{ ok: true; value: unknown } | { ok: false; error: unknown }> | undefined;
  let closed = false;
  let exitInfo: ExitInfo | undefined;

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) sendJson(res, 500, { errorMessage: "Internal Server Error", errorType: "InternalServerError" });
    });
  });
  // /event/next is a long poll with no upper bound: an extension may sit in it for the
  // whole life of the environment.
  server.requestTimeout = 0;
  server.headersTimeout = 0;
  server.keepAliveTimeout = 0;
  server.timeout = 0;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const runtimeApi = `127.0.0.1:${port}`;

  const credentials = options.credentials ?? LAMBDA_CREDENTIALS;
  const containerToken = `LambdaContainerAuth-${randomBytes(24).toString("base64url")}`;
  const env = buildEnv(runtimeApi, options.env, credentials, containerToken);
  const credentialRequests: { at: number; authorized: boolean }[] = [];
  const managedInstances = env.AWS_LAMBDA_INITIALIZATION_TYPE === "lambda-managed-instances";
  const functionName = env.AWS_LAMBDA_FUNCTION_NAME ?? "";
  const functionVersion = env.AWS_LAMBDA_FUNCTION_VERSION ?? "";
  const invokedFunctionArn = `arn:aws:lambda:${env.AWS_REGION ?? "us-east-1"}:${accountId}:function:${functionName}`;

  const timings: InitTimings = { spawnedAt: performance.now() };
  // Its own process group, so freeze, thaw and kill reach a launcher script's children too:
  // Lambda freezes the whole environment, not one PID.
  const child = spawn(options.command, options.args ?? [], {
    cwd: options.cwd,
    env,
    ...(options.uid !== undefined ? { uid: options.uid, gid: options.gid ?? options.uid } : {}),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const pid = child.pid;
  if (pid !== undefined) {
    installExitHooks();
    liveGroups.add(pid);
  }

  const exitedDeferred = deferred<ExitInfo>();
  const currentExit = (): ExitInfo | undefined => exitInfo;
  const onExit = (info: ExitInfo): void => {
    if (exitInfo) return;
    exitInfo = info;
    frozen = false;
    if (pid !== undefined) {
      // Stragglers a launcher left in the group go with it, as when Lambda drops the sandbox.
      killGroup(pid, "SIGKILL");
      liveGroups.delete(pid);
    }
    for (const agent of agents.values()) {
      agent.state = "Exited";
      agent.current?.done.resolve();
      for (const ev of agent.queue) ev.done.resolve();
      agent.queue = [];
      agent.current = undefined;
    }
    settleInit({ ok: false, status: "exited", code: info.code, signal: info.signal, ...(info.spawnError ? { spawnError: info.spawnError } : {}) });
    exitedDeferred.resolve(info);
  };
  child.once("exit", (code, signal) => onExit({ code, signal }));
  child.once("error", (err) => {
    // A spawn failure emits no 'exit'; Lambda reports it as an extension launch error.
    if (pid === undefined) onExit({ code: null, signal: null, spawnError: err.message });
  });

  const emitLine = (stream: OutputStream, line: string): void => {
    (stream === "stdout" ? stdout : stderr).push(line);
    options.onLine?.(stream, line);
    for (const waiter of lineWaiters) waiter(stream, line);
  };
  for (const stream of ["stdout", "stderr"] as const) {
    const readable = child[stream];
    if (readable) createInterface({ input: readable, crlfDelay: Infinity }).on("line", (line) => emitLine(stream, line));
  }

  const initTimer = setTimeout(() => {
    if (initSettled) return;
    settleInit({ ok: false, status: "timeout", timeoutMs: initTimeoutMs });
    // A timed-out init is followed by a reset of the environment.
    if (pid !== undefined && !exitInfo) killGroup(pid, "SIGKILL");
  }, initTimeoutMs);

  function settleInit(result: InitResult): void {
    if (initSettled) return;
    initSettled = result;
    clearTimeout(initTimer);
    registrationClosed = true;
    initDeferred.resolve(result);
  }

  function failInit(errorType: string): void {
    if (initSettled) return;
    settleInit({ ok: false, status: "failed", errorType, initErrors: [...initErrors], exitErrors: [...exitErrors] });
    const deadline = setTimeout(() => {
      if (pid !== undefined && !exitInfo) killGroup(pid, "SIGKILL");
    }, INIT_ERROR_GRACE_MS);
    deadline.unref();
  }

  function expectedAgent(): Agent | undefined {
    for (const agent of agents.values()) if (agent.registration.kind === "external") return agent;
    return undefined;
  }

  function deliver(agent: Agent, event: PendingEvent): void {
    agent.queue.push(event);
    pump(agent);
  }

  function pump(agent: Agent): void {
    const res = agent.waiting;
    const event = agent.queue[0];
    if (!res || !event) return;
    agent.queue.shift();
    agent.waiting = undefined;
    agent.current = event;
    agent.state = "Running";
    if (event.eventType === "INVOKE") {
      res.writeHead(200, {
        "Content-Type": "application/json",
        "Lambda-Extension-Event-Identifier": randomUUID(),
        "Content-Length": Buffer.byteLength(event.body),
      });
    } else {
      // Lambda writes the SHUTDOWN body without setting any header, so Go sniffs a
      // text/plain content type and no event identifier is sent.
      res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8", "Content-Length": Buffer.byteLength(event.body) });
    }
    res.end(event.body);
  }

  function agentFromHeader(req: IncomingMessage, res: ServerResponse): Agent | undefined {
    const raw = req.headers["lambda-extension-identifier"];
    const id = Array.isArray(raw) ? raw[0] : raw;
    if (!id) {
      forbidden(res, "Extension.MissingExtensionIdentifier", "Missing Lambda-Extension-Identifier header");
      return undefined;
    }
    if (!UUID_RE.test(id)) {
      forbidden(res, "Extension.InvalidExtensionIdentifier", "Invalid Lambda-Extension-Identifier");
      return undefined;
    }
    const agent = agents.get(id.toLowerCase());
    if (!agent) {
      forbidden(res, "Extension.UnknownExtensionIdentifier", `Unknown extension ${id}`);
      return undefined;
    }
    return agent;
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "").split("?")[0] ?? "";
    const body = await readBody(req);
    const route = `${req.method ?? ""} ${path}`;
    switch (route) {
      case `POST ${API_PREFIX}/register`:
        return register(req, res, body);
      case `GET ${API_PREFIX}/event/next`:
        return next(req, res);
      case `POST ${API_PREFIX}/init/error`:
        return reportError(req, res, body, "init");
      case `POST ${API_PREFIX}/exit/error`:
        return reportError(req, res, body, "exit");
      case `GET ${CREDENTIALS_PATH}`:
        return serveCredentials(req, res);
      default:
        res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" });
        res.end("404 page not found\n");
    }
  }

  /** The container credentials endpoint of a SnapStart environment (the SDKs' HTTP credential provider). */
  function serveCredentials(req: IncomingMessage, res: ServerResponse): void {
    const authorized = req.headers.authorization === env.AWS_CONTAINER_AUTHORIZATION_TOKEN && env.AWS_CONTAINER_AUTHORIZATION_TOKEN !== undefined;
    credentialRequests.push({ at: performance.now(), authorized });
    if (!authorized) {
      sendJson(res, 401, { Code: "AccessDeniedException", Message: "Authorization token is missing or invalid" });
      return;
    }
    sendJson(res, 200, {
      AccessKeyId: credentials.accessKeyId,
      SecretAccessKey: credentials.secretAccessKey,
      Token: credentials.sessionToken ?? "",
      Expiration: new Date(Date.now() + 6 * 3600_000).toISOString(),
    });
  }

  function register(req: IncomingMessage, res: ServerResponse, body: string): void {
    const rawName = req.headers["lambda-extension-name"];
    const name = (Array.isArray(rawName) ? rawName[0] : rawName) ?? "";
    if (name === "") {
      forbidden(res, "Extension.InvalidExtensionName", "Empty extension name");
      return;
    }
    let events: string[];
    try {
      const parsed = (JSON.parse(body) ?? {}) as { events?: unknown; configurationKeys?: unknown };
      if (Array.isArray(parsed.configurationKeys) && parsed.configurationKeys.length > 0) {
        throw new Error("configurationKeys are deprecated; use environment variables instead");
      }
      if (parsed.events !== undefined && parsed.events !== null && !Array.isArray(parsed.events)) {
        throw new Error("json: cannot unmarshal events into []core.Event");
      }
      events = ((parsed.events as unknown[] | null | undefined) ?? []).map(String);
    } catch (err) {
      forbidden(res, "InvalidRequestFormat", err instanceof Error ? err.message : String(err));
      return;
    }

    const external = name === extensionName;
    if (external) {
      // Lambda knows its external extensions by the executable's file name; any other
      // name is taken as an internal extension (one living inside the runtime process).
      for (const e of events) {
        const allowed = managedInstances ? e === "SHUTDOWN" : e === "INVOKE" || e === "SHUTDOWN";
        if (!allowed) {
          forbidden(res, "Extension.InvalidEventType", `${e}: ErrorInvalidEventType`);
          return;
        }
      }
      const existing = expectedAgent();
      if (existing || exitInfo) {
        transitionError(res, existing?.state ?? "Exited", "Registered", name);
        return;
      }
    } else {
      if (managedInstances && events.length > 0) {
        forbidden(res, "Extension.InvalidEventType", "No events allowed for internal extensions");
        return;
      }
      for (const e of events) {
        if (e === "SHUTDOWN") {
          forbidden(res, "Extension.InvalidEventType", `${e}: ShutdownEventNotSupportedForInternalExtension`);
          return;
        }
        if (e !== "INVOKE") {
          forbidden(res, "Extension.InvalidEventType", `${e}: ErrorInvalidEventType`);
          return;
        }
      }
      if (registrationClosed) {
        forbidden(res, "Extension.RegistrationClosed", "Extension registration closed already");
        return;
      }
      for (const agent of agents.values()) {
        if (agent.registration.name === name) {
          forbidden(res, "Extension.InvalidExtensionState", "Extension with this name already registered");
          return;
        }
      }
    }

    const extensionId = randomUUID();
    const registration: Registration = { extensionId, name, kind: external ? "external" : "internal", events, at: performance.now() };
    agents.set(extensionId, { registration, state: "Registered", waiting: undefined, queue: [], current: undefined });
    registrations.push(registration);
    if (external) {
      timings.registeredAt = registration.at;
      // The extensions have registered: Lambda starts the runtime, which runs the function's init code.
      functionInitRun = Promise.resolve()
        .then(() => options.functionInit?.())
        .then(
          (value) => ({ ok: true as const, value }),
          (error: unknown) => ({ ok: false as const, error }),
        );
    }

    const features = String(req.headers["lambda-extension-accept-feature"] ?? "")
      .split(",")
      .map((f) => f.trim());
    sendJson(
      res,
      200,
      {
        ...(features.includes("accountId") ? { accountId } : {}),
        functionName,
        functionVersion,
        handler: handlerName,
      },
      { "Lambda-Extension-Identifier": extensionId },
    );
  }

  function next(req: IncomingMessage, res: ServerResponse): void {
    const agent = agentFromHeader(req, res);
    if (!agent) return;
    if (agent.state === "InitError" || agent.state === "ExitError" || agent.state === "Exited" || agent.waiting) {
      transitionError(res, agent.waiting ? "Ready" : agent.state, "Ready", agent.registration.extensionId);
      return;
    }
    // Asking for the next event is how an extension says it is done with the current one.
    agent.current?.done.resolve();
    agent.current = undefined;
    agent.state = "Ready";
    agent.waiting = res;
    res.on("close", () => {
      if (agent.waiting === res) agent.waiting = undefined;
    });

    if (agent.registration.kind === "external" && timings.firstNextAt === undefined) {
      timings.firstNextAt = performance.now();
      const registration = agent.registration;
      void (functionInitRun ?? Promise.resolve({ ok: true as const, value: undefined })).then((fn) => {
        if (initSettled || exitInfo) return;
        timings.initDoneAt = performance.now();
        if (!fn.ok) {
          // Recorded beside the extensions' reports, so a test sees why its init failed.
          initErrors.push({ extensionId: "", extensionName: "(function init)", errorType: "Function.InitError", body: fn.error instanceof Error ? fn.error.message : String(fn.error), at: performance.now() });
          failInit("Function.InitError");
          return;
        }
        settleInit({
          ok: true,
          status: "registered",
          spawnToRegisteredMs: (timings.registeredAt ?? timings.firstNextAt!) - timings.spawnedAt,
          spawnToReadyMs: timings.firstNextAt! - timings.spawnedAt,
          registration,
          ...(options.functionInit ? { functionInit: fn.value } : {}),
        });
        // Init is complete: with nothing to run, Lambda freezes the environment until an invoke
        // (at once for provisioned concurrency; a SnapStart snapshot is taken of it frozen), often
        // with the extension's prefetch still in flight. Done before the init promise's callbacks
        // run, so no caller sees the extension running after init.
        if (freezeWhenIdle && !managedInstances && !shuttingDown) freeze();
      });
    }
    pump(agent);
  }

  function reportError(req: IncomingMessage, res: ServerResponse, body: string, kind: "init" | "exit"): void {
    const agent = agentFromHeader(req, res);
    if (!agent) return;
    const rawType = req.headers["lambda-extension-function-error-type"];
    const errorType = (Array.isArray(rawType) ? rawType[0] : rawType) ?? "";
    if (errorType === "") {
      forbidden(res, "Extension.MissingHeader", "Lambda-Extension-Function-Error-Type not found");
      return;
    }
    const target = kind === "init" ? "InitError" : "Exited";
    if (agent.state === "InitError" || agent.state === "ExitError" || agent.state === "Exited") {
      transitionError(res, agent.state, target, agent.registration.extensionId);
      return;
    }
    if (kind === "init" && agent.state !== "Registered") {
      // init/error is only for an extension that registered and has not yet become ready.
      transitionError(res, agent.state, target, agent.registration.extensionId);
      return;
    }
    const record: ReportedError = {
      extensionId: agent.registration.extensionId,
      extensionName: agent.registration.name,
      errorType,
      body: parseJsonOrText(body),
      at: performance.now(),
    };
    (kind === "init" ? initErrors : exitErrors).push(record);
    agent.state = kind === "init" ? "InitError" : "ExitError";
    agent.current?.done.resolve();
    agent.current = undefined;
    sendJson(res, 202, { status: "OK" });
    failInit(errorType);
  }

  function signalGroup(signal: NodeJS.Signals): void {
    if (pid !== undefined && !exitInfo) killGroup(pid, signal);
  }

  function freeze(): void {
    if (managedInstances) throw new Error("Lambda Managed Instances environments are never frozen");
    if (invokeInFlight) throw new Error("cannot freeze while an invoke is in flight");
    if (exitInfo || frozen) return;
    signalGroup("SIGSTOP");
    frozen = true;
  }

  function thaw(): void {
    if (!frozen) return;
    signalGroup("SIGCONT");
    frozen = false;
  }

  async function invoke<T>(handler?: (ctx: InvokeContext) => T | Promise<T>): Promise<InvokeResult<T>> {
    const init = await initDeferred.promise;
    if (!init.ok) throw new Error(`cannot invoke: init ${init.status}`);
    if (shuttingDown || exitInfo) throw new Error("cannot invoke: the environment is shut down");
    // Classic Lambda runs one invoke at a time per environment; Managed Instances run many.
    if (!managedInstances && invokeInFlight) throw new Error("cannot invoke: another invoke is in flight");
    invokeInFlight = true;
    try {
      thaw();
      const startedAt = performance.now();
      const ctx: InvokeContext = {
        requestId: randomUUID(),
        deadlineMs: Date.now() + functionTimeoutMs,
        invokedFunctionArn,
        traceId: traceHeader(),
      };
      const eventBody = JSON.stringify({
        eventType: "INVOKE",
        deadlineMs: ctx.deadlineMs,
        requestId: ctx.requestId,
        invokedFunctionArn: ctx.invokedFunctionArn,
        tracing: { type: "X-Amzn-Trace-Id", value: ctx.traceId },
      });
      const pending: Promise<void>[] = [];
      for (const agent of agents.values()) {
        if (!agent.registration.events.includes("INVOKE")) continue;
        if (agent.state !== "Ready" && agent.state !== "Running") continue;
        const event: PendingEvent = { eventType: "INVOKE", body: eventBody, done: deferred<void>() };
        pending.push(event.done.promise);
        deliver(agent, event);
      }

      let handlerDoneAt: number | undefined;
      let extensionsDoneAt: number | undefined;
      let outcome: { ok: true; value: T } | { ok: false; error: unknown } | undefined;
      const handlerRun = Promise.resolve()
        .then(() => (handler ? handler(ctx) : (undefined as T)))
        .then(
          (value) => {
            outcome = { ok: true, value };
          },
          (error: unknown) => {
            outcome = { ok: false, error };
          },
        )
        .finally(() => {
          handlerDoneAt = performance.now();
        });
      const extensionsRun = Promise.all(pending).then(() => {
        extensionsDoneAt = performance.now();
      });

      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        Promise.all([handlerRun, extensionsRun]).then(() => false),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), Math.max(0, ctx.deadlineMs - Date.now()));
        }),
      ]);
      clearTimeout(timer);

      const doneAt = performance.now();
      const result: InvokeResult<T> = {
        requestId: ctx.requestId,
        result: outcome?.ok ? outcome.value : undefined,
        deliveredTo: pending.length,
        timedOut,
        timings: {
          startedAt,
          handlerDoneAt,
          extensionsDoneAt,
          durationMs: doneAt - startedAt,
          postRuntimeMs:
            handlerDoneAt !== undefined && extensionsDoneAt !== undefined ? Math.max(0, extensionsDoneAt - handlerDoneAt) : 0,
        },
      };
      if (timedOut) {
        // A timed-out invoke makes Lambda reset the environment.
        invokeInFlight = false;
        result.shutdown = await shutdown("timeout");
        return result;
      }
      // Read through a call: the exit handler may have set it while this function awaited.
      const exit = currentExit();
      if (exit) {
        throw new Error(`extension process exited during the invoke (code ${exit.code}, signal ${exit.signal})`);
      }
      if (outcome && !outcome.ok) throw outcome.error;
      // Idle again, unless a shutdown began meanwhile (it thawed the process to deliver SHUTDOWN).
      if (freezeWhenIdle && !managedInstances && !shuttingDown) {
        invokeInFlight = false;
        freeze();
      }
      return result;
    } finally {
      invokeInFlight = false;
    }
  }

  function shutdown(reason: ShutdownReason = "spindown"): Promise<ShutdownResult> {
    shutdownPromise ??= runShutdown(reason);
    return shutdownPromise;
  }

  async function runShutdown(reason: ShutdownReason): Promise<ShutdownResult> {
    shuttingDown = true;
    registrationClosed = true;
    const started = performance.now();
    const deadlineMs = Date.now() + SHUTDOWN_LIMIT_MS;
    if (exitInfo) {
      return { reason, deadlineMs, code: exitInfo.code, signal: exitInfo.signal, elapsedMs: 0, killed: false };
    }
    thaw();
    const body = JSON.stringify({ eventType: "SHUTDOWN", shutdownReason: reason, deadlineMs });
    let subscribers = 0;
    for (const agent of agents.values()) {
      if (!agent.registration.events.includes("SHUTDOWN")) continue;
      if (agent.state === "InitError" || agent.state === "ExitError" || agent.state === "Exited") continue;
      subscribers += 1;
      deliver(agent, { eventType: "SHUTDOWN", body, done: deferred<void>() });
    }
    let killed = false;
    if (subscribers === 0) {
      // Nobody to notify: Lambda simply tears the sandbox down.
      killed = true;
      signalGroup("SIGKILL");
    } else {
      const inTime = await Promise.race([
        exitedDeferred.promise.then(() => true),
        sleep(Math.max(0, deadlineMs - Date.now())).then(() => false),
      ]);
      if (!inTime) {
        killed = true;
        signalGroup("SIGKILL");
      }
    }
    const info = await exitedDeferred.promise;
    return { reason, deadlineMs, code: info.code, signal: info.signal, elapsedMs: performance.now() - started, killed };
  }

  function waitForLine(
    match: RegExp | ((line: string) => boolean),
    opts: { stream?: OutputStream; timeoutMs?: number } = {},
  ): Promise<string> {
    const test = typeof match === "function" ? match : (line: string): boolean => match.test(line);
    const fits = (stream: OutputStream, line: string): boolean => (opts.stream === undefined || opts.stream === stream) && test(line);
    for (const stream of ["stdout", "stderr"] as const) {
      const found = (stream === "stdout" ? stdout : stderr).find((line) => fits(stream, line));
      if (found !== undefined) return Promise.resolve(found);
    }
    return new Promise<string>((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? 5_000;
      const timer = setTimeout(() => {
        lineWaiters.delete(waiter);
        reject(new Error(`no output line matched ${String(match)} within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (stream: OutputStream, line: string): void => {
        if (!fits(stream, line)) return;
        clearTimeout(timer);
        lineWaiters.delete(waiter);
        resolve(line);
      };
      lineWaiters.add(waiter);
    });
  }

  async function close(): Promise<void> {
    if (closed) return;
    closed = true;
    clearTimeout(initTimer);
    if (pid !== undefined && !exitInfo) {
      // SIGKILL also ends a stopped process, so no thaw is needed first.
      killGroup(pid, "SIGKILL");
      await Promise.race([exitedDeferred.promise, sleep(2_000)]);
    }
    if (!initSettled) settleInit({ ok: false, status: "exited", code: exitInfo?.code ?? null, signal: exitInfo?.signal ?? "SIGKILL" });
    for (const agent of agents.values()) agent.waiting?.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  return {
    runtimeApi,
    child,
    pid,
    env,
    managedInstances,
    init: initDeferred.promise,
    exited: exitedDeferred.promise,
    stdout,
    stderr,
    initErrors,
    exitErrors,
    registrations,
    credentialRequests,
    timings,
    get frozen() {
      return frozen;
    },
    get alive() {
      return exitInfo === undefined;
    },
    invoke,
    freeze,
    thaw,
    shutdown,
    waitForLine,
    close,
  };
}
