/**
 * Shared by the reliability tests (faults, fuzz, soak): asking the running extension for a
 * token as a function would, and checking every token it serves against what Databricks
 * actually issued — the broker's own word is never the evidence.
 */
import { readFileSync } from "node:fs";
import { afterEach } from "vitest";
import { type Stack, type StackOptions, startStack } from "./stack.js";

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Token lifetimes of seconds, so refresh windows, expiry and faults all happen within a test:
 * 8 s tokens; the refresh window opens with 4 s left (half the life); never served under 2 s.
 * The 2 s between the window opening and the minimum TTL is what a scenario has to see the
 * old token still served while its refresh fails: a second was too little on a loaded machine.
 */
export const FAST = {
  expiresIn: 8,
  refreshAheadSeconds: 4,
  minTtlSeconds: 2,
  waitSeconds: 3,
} as const;

export const fastEnv = (o: Partial<Record<keyof typeof FAST, number>> = {}) => {
  const f = { ...FAST, ...o };
  return {
    DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: String(f.refreshAheadSeconds),
    DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: String(f.minTtlSeconds),
    DATABRICKS_TOKEN_BROKER_WAIT_SECONDS: String(f.waitSeconds),
  };
};

export type Route = "token" | "metadata" | "health";

/** One answer as the test saw it. */
export interface Observation {
  route: Route;
  status: number;
  body: Record<string, unknown>;
  sentAt: number;
  receivedAt: number;
  /** Set when the request itself failed (connection refused or reset). */
  failure?: string;
}

/** Asks the broker as the function (token route) or an SDK (metadata route) would. */
export async function ask(s: Stack, route: Route, query = ""): Promise<Observation> {
  const sentAt = Date.now();
  try {
    const res =
      route === "token"
        ? await s.token(`/token${query}`)
        : route === "metadata"
          ? await s.get(`/metadata${query}`, { "x-databricks-metadata-version": "1", "x-databricks-host": s.db.url })
          : await s.get("/health");
    const text = await res.text();
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch {
      body = { unparsed: text };
    }
    return { route, status: res.status, body, sentAt, receivedAt: Date.now() };
  } catch (err) {
    return { route, status: 0, body: {}, sentAt, receivedAt: Date.now(), failure: String((err as Error).cause ?? err) };
  }
}

/**
 * What is wrong with a 200 token answer, judged by the Databricks stand-in's own record of
 * the token: never one it did not issue, never expired, never under the minimum TTL when it
 * left the broker, never claiming more life than it has. The life left is counted from when
 * the request was sent: the broker answered later than that, so a token it rightly served
 * had at least the minimum TTL left then, however long the answer took to arrive on a loaded
 * machine. `slackMs` loosens that further where a caller wants to.
 */
export function servedWrong(s: Stack, o: Observation, minTtlSeconds: number, slackMs = 0): string[] {
  if (o.status !== 200 || o.route === "health") return [];
  const problems: string[] = [];
  const token = o.body.access_token;
  const issued = typeof token === "string" ? s.db.issuedTokens.find((t) => t.token === token) : undefined;
  if (!issued) return [`${o.route}: served a token Databricks never issued`];
  const left = issued.expiresAt - o.sentAt;
  if (left <= 0) problems.push(`${o.route}: served a token expired ${-left} ms before it was asked for`);
  else if (left < minTtlSeconds * 1000 - slackMs) problems.push(`${o.route}: served a token with ${left} ms left when asked for, under the minimum TTL`);
  const expiresOn = o.body.expires_on;
  // Whole seconds on both sides (expires_in, expires_on, a JWT's exp) leave up to a second of
  // rounding; anything more is the broker believing a lifetime the token does not have.
  if (typeof expiresOn !== "number" || expiresOn * 1000 > issued.expiresAt + 1_000) {
    problems.push(`${o.route}: claims expires_on ${String(expiresOn)}, past the token's real expiry ${Math.floor(issued.expiresAt / 1000)}`);
  }
  if (o.route === "token") {
    const expiresIn = o.body.expires_in;
    // expires_in is whole seconds rounded down, so a token just at the minimum may show one less.
    if (typeof expiresIn !== "number" || expiresIn < minTtlSeconds - 1) problems.push(`token: expires_in ${String(expiresIn)} under the minimum TTL`);
  }
  if (o.body.token_type !== "Bearer") problems.push(`${o.route}: token_type ${String(o.body.token_type)}`);
  return problems;
}

/** Parsed JSON log lines of the extension from line `from` on. */
export function logLines(s: Stack, from = 0): Record<string, unknown>[] {
  return s.lambda.stdout.slice(from).flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

/** Log lines that mean the process hit something nobody handled. */
export const crashLines = (s: Stack) =>
  [...s.lambda.stdout, ...s.lambda.stderr].filter((l) => /uncaught exception|unhandled rejection|extension failed|FATAL|heap out of memory/i.test(l));

/** Resident set size of a process in KiB, from /proc/<pid>/status. */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/** Runs `fn` over `items`, at most `size` at a time. */
export async function pool<T, R>(items: readonly T[], size: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(size, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i]!);
      }
    }),
  );
  return results;
}

/**
 * For a test file: `stack(options)` starts a stack that is closed (and scanned for leaked
 * secrets) after each test.
 */
export function stackPerTest(): (o?: StackOptions) => Promise<Stack> {
  const stacks: Stack[] = [];
  afterEach(async () => {
    await Promise.all(stacks.splice(0).map((s) => s.close()));
  });
  return async (o = {}) => {
    const s = await startStack(o);
    stacks.push(s);
    return s;
  };
}
