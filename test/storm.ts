/**
 * A cold-start storm (issue 15): many execution environments of the built layer, each under the
 * Lambda emulator in SnapStart mode, restored at the same instant against STS and Databricks
 * stand-ins that rate-limit with token buckets. Each function asks `GET /token` the moment it is
 * invoked and waits as the broker does (DATABRICKS_TOKEN_BROKER_WAIT_SECONDS, 10 s by default).
 * test/storm.test.ts judges one storm; bench section 8 compares backoff variants with it.
 *
 * SnapStart is the sharpest storm: every restored environment has the SDK and the app loaded,
 * and asks STS within milliseconds of the others.
 */
import { performance } from "node:perf_hooks";
import { startDatabricks, type DatabricksStandIn } from "./standins/databricks.js";
import { type LambdaEmulator, startLambda } from "./standins/lambda.js";
import { type RateLimit, startSts, type StsStandIn } from "./standins/sts.js";
import { CLIENT_ID, freePort, LAUNCHER, ROLE_CREDENTIALS } from "./stack.js";

export interface StormOptions {
  environments: number;
  sts: RateLimit;
  databricks: RateLimit;
  /** The extension's launcher (default: the built layer's). */
  command?: string;
  /** Also for each environment's extension. */
  env?: Record<string, string>;
}

export interface StormResult {
  environments: number;
  /** Ms from the restore to each 200, in order. */
  servedAtMs: number[];
  /** Every other answer: status and body. */
  failures: string[];
  /** How long the rate limits alone need to serve every environment, in ms. */
  rateAloneMs: number;
  stsCalls: number;
  stsThrottled: number;
  exchanges: number;
  exchangesThrottled: number;
}

/** The handler's wait for its token, past the broker's own 10 s (so the broker's answer is what counts). */
const ASK_TIMEOUT_MS = 15_000;

/** Time the bucket needs to admit `n` calls, all asked at once: the burst at once, then one per 1/perSecond. */
export const rateAloneMs = (n: number, r: RateLimit) => (Math.max(0, n - r.burst) / r.perSecond) * 1000;

/** Ports given to this process's storms: freePort draws at random, and two environments must never share one. */
const taken = new Set<number>();

async function startEnvironment(sts: StsStandIn, db: DatabricksStandIn, o: StormOptions): Promise<{ lambda: LambdaEmulator; port: number }> {
  let port = await freePort();
  while (taken.has(port)) port = await freePort();
  taken.add(port);
  const lambda = await startLambda({
    command: o.command ?? LAUNCHER,
    functionTimeoutMs: 30_000,
    // The role's credentials, served at SnapStart's credentials endpoint; the STS stand-in knows them.
    credentials: ROLE_CREDENTIALS,
    env: {
      AWS_LAMBDA_INITIALIZATION_TYPE: "snap-start",
      DATABRICKS_TOKEN_BROKER_ENABLED: "true",
      DATABRICKS_HOST: db.url,
      DATABRICKS_CLIENT_ID: CLIENT_ID,
      DATABRICKS_TOKEN_BROKER_PORT: String(port),
      AWS_ENDPOINT_URL_STS: sts.url,
      AWS_REGION: "us-east-1",
      ...o.env,
    },
  });
  return { lambda, port };
}

export async function runStorm(o: StormOptions): Promise<StormResult> {
  const sts = await startSts({ region: "us-east-1", credentials: [ROLE_CREDENTIALS] });
  const db = await startDatabricks({ policy: { issuer: sts.issuer, audiences: ["databricks"], subject: sts.settings.roleArn, servicePrincipalId: CLIENT_ID } });
  const envs: { lambda: LambdaEmulator; port: number }[] = [];
  try {
    // Started a few at a time: 30 Node.js start-ups at once on two cores would only slow each other.
    for (let i = 0; i < o.environments; i += 4) {
      envs.push(...(await Promise.all(Array.from({ length: Math.min(4, o.environments - i) }, () => startEnvironment(sts, db, o)))));
    }
    for (const e of envs) {
      const init = await e.lambda.init;
      if (!init.ok) throw new Error(`storm: an environment's init failed: ${init.status}; ${[...e.lambda.stdout, ...e.lambda.stderr].slice(-3).join(" / ")}`);
    }
    // SnapStart fetched nothing at init; the limits apply from the restore on.
    sts.settings.rateLimit = o.sts;
    db.settings.rateLimit = o.databricks;
    const t0 = performance.now();
    const answers = await Promise.all(
      envs.map((e) =>
        e.lambda.invoke(async () => {
          const res = await fetch(`http://127.0.0.1:${e.port}/token`, {
            headers: { "x-aws-session-token": e.lambda.env.AWS_CONTAINER_AUTHORIZATION_TOKEN ?? "" },
            signal: AbortSignal.timeout(ASK_TIMEOUT_MS),
          });
          return { status: res.status, body: await res.text(), atMs: performance.now() - t0 };
        }),
      ),
    );
    const servedAtMs: number[] = [];
    const failures: string[] = [];
    for (const a of answers) {
      const r = a.result;
      if (r?.status === 200) servedAtMs.push(r.atMs);
      else failures.push(r ? `${r.status} after ${r.atMs.toFixed(0)} ms: ${r.body.slice(0, 300)}` : `invoke timed out: ${a.timedOut}`);
    }
    const webIdentity = sts.calls.filter((c) => c.action === "GetWebIdentityToken");
    return {
      environments: o.environments,
      servedAtMs: servedAtMs.sort((a, b) => a - b),
      failures,
      rateAloneMs: Math.max(rateAloneMs(o.environments, o.sts), rateAloneMs(o.environments, o.databricks)),
      stsCalls: webIdentity.length,
      stsThrottled: webIdentity.filter((c) => c.error === "Throttling").length,
      exchanges: db.exchanges.length,
      exchangesThrottled: db.exchanges.filter((x) => x.status === 429).length,
    };
  } finally {
    for (const e of envs) taken.delete(e.port);
    await Promise.all(envs.map((e) => e.lambda.close()));
    await Promise.all([sts.close(), db.close()]);
  }
}

/** One line for a log or a failure message. */
export function describeStorm(r: StormResult): string {
  const last = r.servedAtMs.at(-1);
  return (
    `${r.servedAtMs.length}/${r.environments} served, the last after ${last === undefined ? "—" : `${(last / 1000).toFixed(2)} s`} ` +
    `(the rate alone needs ${(r.rateAloneMs / 1000).toFixed(2)} s); STS ${r.stsCalls} calls (${(r.stsCalls / r.environments).toFixed(2)} per environment, ${r.stsThrottled} throttled), ` +
    `exchange ${r.exchanges} (${(r.exchanges / r.environments).toFixed(2)} per environment, ${r.exchangesThrottled} throttled)` +
    (r.failures.length ? `; failures: ${r.failures.join(" | ")}` : "")
  );
}
