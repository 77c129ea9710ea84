/**
 * JSON-lines logger (SPEC §6): one object per line with `time`, `level`, `msg` and fields.
 * Lambda sends stdout to CloudWatch Logs, where JSON lines are queryable by field.
 */
import { createHash } from "node:crypto";
import type { LogLevel } from "./config.js";

export type Fields = Record<string, unknown>;

export interface Logger {
  readonly level: LogLevel;
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/**
 * Anything shaped like a JWT (three base64url parts, the first two JSON objects, which
 * start with `eyJ`). Callers never pass a token on purpose; this catches the accident of
 * an upstream error message that echoes one back.
 */
const JWT_LIKE = /eyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*/g;

/** Removes JWT-shaped substrings; used on every string that crosses into a log or an answer. */
export function redact(text: string): string {
  return text.replace(JWT_LIKE, "[redacted-jwt]");
}

/** Names a token without revealing it: the first 8 hex digits of its SHA-256 (SPEC §6). */
export function fingerprint(token: string): string {
  return createHash("sha256").update(token).digest("hex").slice(0, 8);
}

function plain(value: unknown, depth = 0): unknown {
  if (typeof value === "string") return redact(value);
  if (value instanceof Error) {
    const e = value as Error & { code?: unknown };
    return { name: e.name, message: redact(e.message), ...(typeof e.code === "string" ? { code: e.code } : {}) };
  }
  if (value === null || typeof value !== "object" || depth > 4) return value;
  if (Array.isArray(value)) return value.map((v) => plain(v, depth + 1));
  const out: Fields = {};
  for (const [k, v] of Object.entries(value)) out[k] = plain(v, depth + 1);
  return out;
}

export interface LoggerOptions {
  level: LogLevel;
  write?: (line: string) => void;
  now?: () => number;
}

/** Where log lines go unless told otherwise, and metric records with them (SPEC §6, §8). */
export const writeStdout = (line: string): void => void process.stdout.write(line);

/** A logger that writes JSON lines at or above `level`. */
export function createLogger({ level, write = writeStdout, now = Date.now }: LoggerOptions): Logger {
  const min = RANK[level];
  const emit = (lvl: LogLevel) => (msg: string, fields?: Fields) => {
    if (RANK[lvl] < min) return;
    const record = { time: new Date(now()).toISOString(), level: lvl, msg: redact(msg), ...(fields ? (plain(fields) as Fields) : {}) };
    write(`${JSON.stringify(record)}\n`);
  };
  return { level, debug: emit("debug"), info: emit("info"), warn: emit("warn"), error: emit("error") };
}

/** A logger that drops everything, for tests that do not read logs. */
export const silentLogger: Logger = createLogger({ level: "error", write: () => {} });
