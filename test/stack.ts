/**
 * The whole local stack: STS and Databricks stand-ins, and the built layer's extension run
 * under the Lambda emulator with the variables a user would set. Shared by the end-to-end
 * tests (and by `npm start`).
 */
import { appendFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startDatabricks, type DatabricksOptions, type DatabricksStandIn } from "./standins/databricks.js";
import { type LambdaEmulator, startLambda, type StartLambdaOptions } from "./standins/lambda.js";
import { startSts, type StsOptions, type StsStandIn } from "./standins/sts.js";
import { LAMBDA_CREDENTIALS } from "./standins/credentials.js";
import { findLeaks, type RecordedAnswer } from "./secrets.js";

export const ROOT = join(fileURLToPath(new URL(".", import.meta.url)), "..");
export const LAUNCHER = join(ROOT, "dist", "layer", "extensions", "databricks-token-broker");
export const SESSION_TOKEN = "IQoJb3JpZ2luX2VjEOv//////////test-session-token";
export const CLIENT_ID = "5e1ad7f0-6b1f-4c58-a3c2-9d6a3f7c1b20";

/**
 * Ports for the extension come from below Linux's ephemeral range (32768–60999 by default,
 * /proc/sys/net/ipv4/ip_local_port_range): a port the kernel handed out for port 0 is free
 * again once closed, but under load the kernel may reuse it as the source port of an outgoing
 * connection before the extension binds it, and its listen then fails with EADDRINUSE.
 */
const PORT_RANGE = [20_000, 32_000] as const;

/** A free loopback port: the extension's port must be known before it starts. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = PORT_RANGE[0] + Math.floor(Math.random() * (PORT_RANGE[1] - PORT_RANGE[0]));
    const server = createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (free) {
      await new Promise((r) => server.close(r));
      return port;
    }
  }
}

export interface Stack {
  sts: StsStandIn;
  db: DatabricksStandIn;
  lambda: LambdaEmulator;
  port: number;
  base: string;
  env: Record<string, string | undefined>;
  /**
   * GET on the broker with the function's session token (AWS_SESSION_TOKEN, else SnapStart's
   * AWS_CONTAINER_AUTHORIZATION_TOKEN). Asked while the environment is frozen
   * (between invokes), it is asked inside an invoke the stack runs for it, as only a function
   * could ask, and a function runs only inside an invoke.
   */
  token(path?: string, headers?: Record<string, string>): Promise<Response>;
  /** GET on the broker with exactly these headers (no session token added). */
  get(path: string, headers?: Record<string, string>): Promise<Response>;
  /** Every answer the broker gave through `token`, `get` or `record`: the secrets scan reads them. */
  readonly answers: RecordedAnswer[];
  /** Adds an answer read some other way (a raw socket) to the secrets scan. */
  record(answer: RecordedAnswer): void;
  /** Secrets beyond the ones the stand-ins issue (a token crafted into a fault's body). */
  readonly secrets: Set<string>;
  /** What the secrets scan finds so far: log lines, error reports and answers. */
  leaks(): Promise<string[]>;
  /** Invokes the stack ran around requests made while the environment was frozen (see `token`). */
  readonly implicitInvokes: number;
  /** Stops everything, then fails if any log line, error report or answer carried a secret. */
  close(): Promise<void>;
}

export interface StackOptions {
  sts?: StsOptions;
  db?: Partial<DatabricksOptions>;
  env?: Record<string, string | undefined>;
  lambda?: Partial<StartLambdaOptions>;
  command?: string;
  /** Runs once the stand-ins are up and before the extension starts: faults for its cold start. */
  before?: (standIns: { sts: StsStandIn; db: DatabricksStandIn }) => void;
  /**
   * The function's init code (see StartLambdaOptions.functionInit), given the stack's `token`
   * and `get` to ask the extension with; its result is the init result's `functionInit`.
   */
  functionInit?: (ask: Pick<Stack, "token" | "get">) => unknown;
}

/** The execution role's credentials in the emulated environment, and so the key the STS stand-in knows. */
export const ROLE_CREDENTIALS = { ...LAMBDA_CREDENTIALS, sessionToken: SESSION_TOKEN };

export async function startStack(o: StackOptions = {}): Promise<Stack> {
  // The account knows the role's key; a test that puts other credentials into `env` is refused as AWS would refuse it.
  const sts = await startSts({ region: "us-east-1", credentials: [ROLE_CREDENTIALS], ...o.sts });
  const db = await startDatabricks({
    policy: { issuer: sts.issuer, audiences: ["databricks"], subject: sts.settings.roleArn, servicePrincipalId: CLIENT_ID },
    ...o.db,
  });
  const port = await freePort();
  const env: Record<string, string | undefined> = {
    DATABRICKS_TOKEN_BROKER_ENABLED: "true",
    DATABRICKS_HOST: db.url,
    DATABRICKS_CLIENT_ID: CLIENT_ID,
    DATABRICKS_TOKEN_BROKER_PORT: String(port),
    DATABRICKS_TOKEN_BROKER_LOG_LEVEL: "debug",
    AWS_ENDPOINT_URL_STS: sts.url,
    AWS_REGION: "us-east-1",
    ...o.env,
  };
  o.before?.({ sts, db });
  const base = `http://127.0.0.1:${port}`;
  const answers: RecordedAnswer[] = [];
  const secrets = new Set<string>();
  const reading = new Set<Promise<void>>();
  // Set once startLambda returns; the function's init code may ask before that.
  let lambda: LambdaEmulator | undefined;
  /** Requests the stack wrapped in an invoke of its own, and that invoke. */
  let batch: { pending: Set<Promise<unknown>>; invoke: Promise<unknown> } | undefined;
  /**
   * Only a function asks the extension, and a function runs only inside an invoke: a request
   * made while the environment is frozen (between invokes, as Lambda leaves it) is made inside
   * an invoke the stack runs for it, which lasts until it and every request made meanwhile are
   * answered. Tests that drive invokes themselves ask inside them instead (`implicitInvokes`
   * counts the others). Only for the emulator's own freezes: one a test makes itself is the
   * test's to end.
   */
  const freezesWhenIdle = o.lambda?.freezeWhenIdle ?? true;
  const asTheFunction = <T>(request: () => Promise<T>): Promise<T> => {
    const env = lambda;
    // A test that freezes the environment itself (freezeWhenIdle: false) means its requests to wait for the thaw.
    if (!freezesWhenIdle || (!batch && !env?.frozen)) return request();
    const p = request();
    if (batch) {
      batch.pending.add(p);
      return p;
    }
    const pending = new Set<Promise<unknown>>([p]);
    implicitInvokes += 1;
    const invoke = env!
      .invoke(async () => {
        while (pending.size > 0) {
          const now = [...pending];
          await Promise.allSettled(now);
          for (const q of now) pending.delete(q);
        }
      })
      .finally(() => {
        batch = undefined;
      });
    batch = { pending, invoke };
    // The request was started before the thaw: it is answered once the invoke has thawed the process.
    return p;
  };
  let implicitInvokes = 0;
  // The caller reads the answer as it likes; a clone feeds the scan.
  const recorded = async (path: string, headers: Record<string, string>): Promise<Response> => {
    const res = await asTheFunction(() => fetch(`${base}${path}`, { headers }));
    const copy = res
      .clone()
      .text()
      .then(
        (body) => void answers.push({ method: "GET", route: path.split("?")[0] ?? path, status: res.status, body }),
        () => {},
      );
    reading.add(copy);
    void copy.finally(() => reading.delete(copy));
    return res;
  };
  // What the function has to show: its AWS_SESSION_TOKEN, or in SnapStart (which has none) its AWS_CONTAINER_AUTHORIZATION_TOKEN.
  const sessionToken = () => lambda?.env.AWS_SESSION_TOKEN ?? lambda?.env.AWS_CONTAINER_AUTHORIZATION_TOKEN ?? SESSION_TOKEN;
  const token = (path = "/token", headers: Record<string, string> = {}) => recorded(path, { "x-aws-session-token": sessionToken(), ...headers });
  const get = (path: string, headers: Record<string, string> = {}) => recorded(path, headers);
  const functionInit = o.functionInit;
  const started = await startLambda({
    command: o.command ?? LAUNCHER,
    env,
    // The role's credentials, in the environment (or, for SnapStart, at its credentials endpoint).
    credentials: ROLE_CREDENTIALS,
    ...(functionInit ? { functionInit: () => functionInit({ token, get }) } : {}),
    ...o.lambda,
  });
  lambda = started;
  const leaks = async () => {
    await Promise.all(reading);
    return findLeaks({
      lines: [...lambda.stdout, ...lambda.stderr],
      reports: [...lambda.initErrors, ...lambda.exitErrors].map((e) => e.body),
      answers,
      secrets: [
        ...db.issuedTokens.map((t) => t.token),
        ...sts.issued.map((j) => j.token),
        lambda.env.AWS_SESSION_TOKEN,
        lambda.env.AWS_CONTAINER_AUTHORIZATION_TOKEN,
        lambda.env.AWS_SECRET_ACCESS_KEY,
        ...secrets,
      ],
    });
  };
  return {
    sts,
    db,
    lambda,
    port,
    base,
    env,
    token,
    get,
    answers,
    record: (a) => void answers.push(a),
    secrets,
    leaks,
    get implicitInvokes() {
      return implicitInvokes;
    },
    async close() {
      await batch?.invoke.catch(() => {});
      await lambda.close();
      await Promise.all([sts.close(), db.close()]);
      const found = await leaks();
      // Lets a run report how much the scan covered across the whole suite.
      if (process.env.BROKER_SCAN_REPORT) {
        const lines = lambda.stdout.length + lambda.stderr.length;
        appendFileSync(process.env.BROKER_SCAN_REPORT, `${JSON.stringify({ lines, answers: answers.length, leaks: found.length })}\n`);
      }
      if (found.length > 0) throw new Error(`secrets leaked:\n${found.slice(0, 20).join("\n")}`);
    },
  };
}

/** Parsed JSON log lines of the extension. */
export function logs(lambda: LambdaEmulator): Record<string, unknown>[] {
  return lambda.stdout.flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}
