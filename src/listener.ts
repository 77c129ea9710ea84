/**
 * The loopback listener (SPEC §5), on plain node:http: it is up before fastify is loaded, and
 * holds requests until the app is ready. Nothing here may import fastify, or start-up would load it.
 */
import http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { errorAnswer, writeError, writeErrorToSocket } from "./answers.js";

/** Answers a request that has not finished arriving in this long: slow clients cannot pin sockets. */
export const REQUEST_TIMEOUT_MS = 10_000;
/**
 * How often Node.js looks for requests over that limit: its default, 30 s, let one run to 40 s.
 * Each check walks the open connections, a handful here, so once a second costs nothing.
 */
const TIMEOUT_CHECK_INTERVAL_MS = 1_000;
/** Header budget well above any real client, well below Node's 16 KiB default. */
export const MAX_HEADER_BYTES = 8 * 1024;
/** What fastify would set: SDKs keep their connection to the broker for a whole invoke and more. */
const KEEP_ALIVE_TIMEOUT_MS = 72_000;

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/**
 * Answers what the HTTP parser refused before any route ran (broken framing, control
 * characters, headers over the limit, a request that never finished arriving) in the shape of
 * every other answer, as 400: Node's own answers are bare 400, 408 and 431 without Cache-Control.
 */
function answerClientError(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  const why =
    err.code === "HPE_HEADER_OVERFLOW"
      ? `request headers over ${MAX_HEADER_BYTES} bytes`
      : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? `request not received in full within ${REQUEST_TIMEOUT_MS} ms`
        : `malformed HTTP request${err.code ? ` (${err.code})` : ""}`;
  writeErrorToSocket(socket, errorAnswer("bad_request", why));
}

/** The names a loopback client writes in `Host` (SPEC §5); any other is a rebound name (DNS rebinding). */
const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "[::1]"]);
/** The port a `Host` without one means, for plain http (RFC 9110 §4.2.2). */
const HTTP_DEFAULT_PORT = "80";

/**
 * Why `Host` refuses the request, or undefined for a loopback name with the port the client
 * dialled (the socket's, which is the configured one but for tests on port 0): a rebound page
 * sends its own name, every SDK the one it dialled. None or two (RFC 9112 §3.2) is refused too.
 */
function hostRefusal(req: http.IncomingMessage): string | undefined {
  const host = req.headers.host;
  const port = req.socket.localPort;
  const problem =
    host === undefined ? "no Host header" : hostCount(req.rawHeaders) > 1 ? "more than one Host header" : isLoopbackHost(host, port) ? undefined : "a Host header not addressed to the broker";
  if (problem === undefined) return undefined;
  return `${problem}: Host must be localhost:${port}, 127.0.0.1:${port} or [::1]:${port}, the address the request was sent to; the broker answers only local callers (DNS rebinding)`;
}

function isLoopbackHost(host: string, port: number | undefined): boolean {
  const h = host.toLowerCase();
  const colon = h.lastIndexOf(":");
  // "[::1]" has colons of its own: a port follows the last colon only when it is past the "]".
  const hasPort = colon > h.lastIndexOf("]");
  const given = hasPort ? h.slice(colon + 1) : HTTP_DEFAULT_PORT;
  return port !== undefined && given === String(port) && LOOPBACK_HOSTS.has(hasPort ? h.slice(0, colon) : h);
}

/** Node.js keeps the first of repeated Host headers and drops the rest; the raw list still has them all. */
function hostCount(raw: string[]): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 4 && raw[i]!.toLowerCase() === "host") n++;
  return n;
}

/** The broker is never a tunnel: CONNECT gets the 405 any other method gets, not a silent close. */
function answerConnect(_req: http.IncomingMessage, socket: Socket): void {
  writeErrorToSocket(socket, errorAnswer("method_not_allowed", "CONNECT is not allowed; use GET", { allow: "GET" }));
}

export interface Listener {
  /** Every address bound: 127.0.0.1 first, then ::1 once `listenOnIpv6` has bound it. */
  readonly addresses: AddressInfo[];
  /**
   * Binds ::1 on 127.0.0.1's port, once however often called: undefined on a host without IPv6
   * loopback, a rejection on any other failure. Apart because a process's first IPv6 bind
   * compiles Node.js's address pattern, which start-up can overlap with its registration.
   */
  listenOnIpv6(): Promise<AddressInfo | undefined>;
  /** Hands every request to `handler` from now on, those held so far first, in arrival order. */
  serve(handler: Handler): void;
  /** Stops listening and closes idle connections; resolves once every connection has ended. */
  close(): Promise<void>;
  /**
   * Closes the connections idle now. `close` closes only those idle when it is called: one
   * whose answer was still on its way stays open, kept alive, until its client lets go.
   */
  closeIdle(): void;
}

/** A server set up as fastify sets up its own, for the same answers on the same sockets. */
function createServer(dispatch: Handler): http.Server {
  // Node's own 400 for HTTP/1.1 without Host is bare; hostRefusal answers it in the SPEC's shape.
  const server = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES, requireHostHeader: false, connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS }, dispatch);
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.on("clientError", answerClientError);
  server.on("connect", answerConnect);
  // Node answers an Expect other than 100-continue with its own 417, outside every route and
  // without Cache-Control; RFC 9110 §10.1.1 lets a server ignore it, so it is routed as usual.
  server.on("checkExpectation", dispatch);
  return server;
}

function listenOn(server: http.Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      server.off("listening", onListening);
      reject(err);
    };
    const onListening = () => {
      server.off("error", onError);
      resolve(server.address() as AddressInfo);
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen({ host, port });
  });
}

function closeServer(server: http.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * SPEC §5's addresses, bound as literals: a client's `localhost` resolves to one or both, and
 * no name is looked up, so nothing outside this list can ever be bound (and start-up spends
 * no time on a resolver).
 */
export const IPV4_LOOPBACK = "127.0.0.1";
export const IPV6_LOOPBACK = "::1";

/** What binding ::1 fails with on a host without IPv6 loopback; anything else is a real failure. */
const NO_IPV6 = new Set(["EADDRNOTAVAIL", "EAFNOSUPPORT"]);

/**
 * Listens on 127.0.0.1 (`port`, or a free one for 0); `listenOnIpv6` adds ::1 on the same port, so
 * a client's `localhost` reaches the broker either way. Requests are held until `serve`.
 */
export async function listenOnLoopback(port: number): Promise<Listener> {
  let handler: Handler | undefined;
  const held: [http.IncomingMessage, http.ServerResponse][] = [];
  const dispatch: Handler = (req, res) => {
    // Before anything else, held requests included: a rebound request gets no further.
    const refused = hostRefusal(req);
    if (refused !== undefined) writeError(res, errorAnswer("bad_request", refused));
    else if (handler) handler(req, res);
    else held.push([req, res]);
  };

  const first = createServer(dispatch);
  const servers: http.Server[] = [first];
  const addresses: AddressInfo[] = [await listenOn(first, IPV4_LOOPBACK, port)];
  let ipv6: Promise<AddressInfo | undefined> | undefined;

  return {
    addresses,
    listenOnIpv6() {
      ipv6 ??= (async () => {
        const server = createServer(dispatch);
        try {
          const address = await listenOn(server, IPV6_LOOPBACK, addresses[0]!.port);
          servers.push(server);
          addresses.push(address);
          return address;
        } catch (err) {
          if (NO_IPV6.has((err as { code?: string }).code ?? "")) return undefined;
          throw err;
        }
      })();
      return ipv6;
    },
    serve(h) {
      handler = h;
      for (const [req, res] of held.splice(0)) h(req, res);
    },
    close: () => Promise.all(servers.map(closeServer)).then(() => {}),
    closeIdle: () => {
      for (const server of servers) server.closeIdleConnections();
    },
  };
}
