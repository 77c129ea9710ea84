/**
 * SPEC §5's error answers, built in one place and written to a fastify reply, a node:http
 * response or a bare socket. No run-time import of fastify: the listener loads this before it.
 */
import { type ServerResponse, STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { FastifyReply } from "fastify";
import { redact } from "./log.js";

export type ErrorCode = "bad_request" | "unauthorized" | "forbidden" | "not_found" | "method_not_allowed" | "token_unavailable" | "internal";

/** The one place that maps an error code to its HTTP status. */
const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  token_unavailable: 503,
  internal: 500,
};

/** What fastify sets on JSON it serializes itself; every answer of the broker says the same. */
export const JSON_TYPE = "application/json; charset=utf-8";

export interface ErrorAnswer {
  readonly status: number;
  /** Lower-case names; the writers add Content-Length. */
  readonly headers: Readonly<Record<string, string>>;
  /** The JSON text. */
  readonly body: string;
}

export interface ErrorAnswerOptions {
  /** Fields after `error` and `message`, such as a 503's `step` and `hint`. */
  extra?: Record<string, unknown>;
  /** The methods a 405 names in its `Allow` header. */
  allow?: string;
}

/** Builds an error answer; the message is redacted, as it may quote what a client sent. */
export function errorAnswer(code: ErrorCode, message: string, { extra, allow }: ErrorAnswerOptions = {}): ErrorAnswer {
  const headers: Record<string, string> = { "content-type": JSON_TYPE, "cache-control": "no-store" };
  if (allow !== undefined) headers.allow = allow;
  return { status: STATUS[code], headers, body: JSON.stringify({ error: code, message: redact(message), ...extra }) };
}

/** An error answer thrown by a route's helper; the app's error handler sends it. */
export class Refusal extends Error {
  readonly answer: ErrorAnswer;
  constructor(code: ErrorCode, message: string, options?: ErrorAnswerOptions) {
    super(message);
    this.name = "Refusal";
    this.answer = errorAnswer(code, message, options);
  }
}

/** Sends an error answer through fastify. */
export function sendError(reply: FastifyReply, answer: ErrorAnswer): FastifyReply {
  return reply.code(answer.status).headers(answer.headers).send(answer.body);
}

/** Writes an error answer to a node:http response, for requests that no fastify app serves. */
export function writeError(res: ServerResponse, answer: ErrorAnswer): void {
  res.writeHead(answer.status, { ...answer.headers, "content-length": String(Buffer.byteLength(answer.body)) }).end(answer.body);
}

/** Writes an error answer straight to a socket that no request owns (the parser refused it), and closes it. */
export function writeErrorToSocket(socket: Socket, answer: ErrorAnswer): void {
  if (socket.writable) {
    let head = `HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status] ?? ""}\r\n`;
    for (const [name, value] of Object.entries(answer.headers)) head += `${name}: ${value}\r\n`;
    socket.write(`${head}content-length: ${Buffer.byteLength(answer.body)}\r\nconnection: close\r\n\r\n${answer.body}`);
  }
  socket.destroy();
}
