/**
 * A raw HTTP/1.1 client over a TCP socket to 127.0.0.1: hostile requests (odd methods, broken
 * percent-encoding, control characters, huge headers, half-sent requests) cannot be made with
 * fetch, which checks what it sends. Loopback only, by construction.
 */
import { connect, type Socket } from "node:net";

export interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The server closed the connection without answering. */
  noAnswer: boolean;
}

function decodeChunked(body: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = body.indexOf("\r\n", at);
    if (eol < 0) break;
    const size = Number.parseInt(body.subarray(at, eol).toString("latin1"), 16);
    if (!Number.isFinite(size) || size === 0) break;
    parts.push(body.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
  return Buffer.concat(parts);
}

/** Parses one HTTP/1.1 answer, or undefined while it is incomplete. */
export function parseAnswer(data: Buffer, final: boolean): RawAnswer | undefined {
  // An interim answer (100 Continue to an Expect header) comes before the real one.
  while (/^HTTP\/1\.[01] 1\d\d /.test(data.subarray(0, 13).toString("latin1"))) {
    const interim = data.indexOf("\r\n\r\n");
    if (interim < 0) break;
    data = data.subarray(interim + 4);
  }
  const end = data.indexOf("\r\n\r\n");
  if (end < 0) return final ? { status: 0, headers: {}, body: data.toString("latin1"), noAnswer: true } : undefined;
  const [statusLine = "", ...lines] = data.subarray(0, end).toString("latin1").split("\r\n");
  const headers: Record<string, string> = {};
  for (const l of lines) {
    const i = l.indexOf(":");
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  const status = Number(statusLine.split(" ")[1]);
  const rest = data.subarray(end + 4);
  const length = headers["content-length"] === undefined ? undefined : Number(headers["content-length"]);
  if (length !== undefined && rest.length >= length) return { status, headers, body: rest.subarray(0, length).toString("utf8"), noAnswer: false };
  if (headers["transfer-encoding"] === "chunked" && (final || rest.includes("0\r\n\r\n"))) {
    return { status, headers, body: decodeChunked(rest).toString("utf8"), noAnswer: false };
  }
  return final ? { status, headers, body: rest.toString("utf8"), noAnswer: false } : undefined;
}

/** Opens a socket to 127.0.0.1:`port`. */
export function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port }, () => resolve(socket));
    socket.once("error", reject);
  });
}

/**
 * Sends `request` as is and reads one answer; a socket the server closes without answering
 * gives `noAnswer`. A `HEAD` answer, which has no body whatever its headers say, ends when the
 * server closes: send it with `Connection: close`.
 */
export async function rawRequest(port: number, request: string | Buffer, { timeoutMs = 15_000 } = {}): Promise<RawAnswer> {
  const socket = await open(port);
  return new Promise<RawAnswer>((resolve, reject) => {
    let data = Buffer.alloc(0);
    let done = false;
    const finish = (a: RawAnswer | undefined, err?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      if (a) resolve(a);
      else reject(err ?? new Error("no answer"));
    };
    const timer = setTimeout(() => finish(undefined, new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    socket.on("data", (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      const a = parseAnswer(data, false);
      if (a) finish(a);
    });
    // A reset after a complete answer is still an answer; before one, it is none.
    socket.on("error", () => finish(parseAnswer(data, true)));
    socket.on("close", () => finish(parseAnswer(data, true)));
    socket.write(request);
  });
}
