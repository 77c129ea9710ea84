/**
 * The secrets scan (SPEC §6): no access token, JWT, session token or AWS secret key may show
 * in anything the extension says — its log lines, the errors it reports to Lambda, and every
 * answer it gives. The stack runs it on `close()`, so every test that runs the real extension
 * is scanned, whatever it set out to test.
 */
import { createHash } from "node:crypto";

/** One answer the broker gave a test; `route` is the path without the query. */
export interface RecordedAnswer {
  method: string;
  route: string;
  status: number;
  body: string;
}

/** Three base64url parts whose first two are JSON objects: how every JWT starts. */
export const JWT_SHAPE = /eyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}/;

/** The routes whose 200 answer carries an access token on purpose. */
const TOKEN_ROUTE = /^\/(token|metadata)(\/[^/]*)?$/;

/** Names a secret in a failure message without printing it. */
const tag = (secret: string) => `secret#${createHash("sha256").update(secret).digest("hex").slice(0, 8)}`;

/**
 * A 200 token answer legitimately carries its own token and nothing else secret: drop the
 * `access_token` value so the rest of the body is scanned like any other answer.
 */
function scannable(a: RecordedAnswer): string {
  if (a.status !== 200 || !TOKEN_ROUTE.test(a.route)) return a.body;
  try {
    const { access_token: _served, ...rest } = JSON.parse(a.body) as Record<string, unknown>;
    return JSON.stringify(rest);
  } catch {
    return a.body;
  }
}

export interface ScanInput {
  /** Raw log lines, stdout and stderr. */
  lines: readonly string[];
  /** Error reports sent to the Extensions API (init/error, exit/error). */
  reports: readonly unknown[];
  answers: readonly RecordedAnswer[];
  /** Every secret that existed during the run; short or empty values are ignored. */
  secrets: Iterable<string | undefined>;
}

/** Describes each leak found; empty when clean. */
export function findLeaks({ lines, reports, answers, secrets }: ScanInput): string[] {
  // Under 16 characters a "secret" is a test's own placeholder and would match by chance.
  const list = [...new Set([...secrets].filter((s): s is string => typeof s === "string" && s.length >= 16))];
  const leaks: string[] = [];
  const check = (where: string, text: string) => {
    for (const s of list) if (text.includes(s)) leaks.push(`${where} contains ${tag(s)}`);
    if (JWT_SHAPE.test(text)) leaks.push(`${where} contains a JWT`);
  };
  lines.forEach((l, i) => check(`log line ${i}`, l));
  reports.forEach((r, i) => check(`error report ${i}`, typeof r === "string" ? r : JSON.stringify(r)));
  answers.forEach((a, i) => check(`answer ${i} (${a.method} ${a.route} → ${a.status})`, scannable(a)));
  return leaks;
}
