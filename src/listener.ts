/**
 * The loopback listener (SPEC §5), on plain node:http: it is up before fastify is loaded, and
 * holds requests until the app is ready. Nothing here may import fastify, or start-up would load it.
 */
import http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { errorAnswer, writeErrorToSocket } from "./answers.js";

/** Answers a request that has not finished arriving in this long: slow clients cannot pin sockets. */
export const REQUEST_TIMEOUT_MS = 10_000;
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
  const server = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES }, dispatch);
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
    if (handler) handler(req, res);
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
