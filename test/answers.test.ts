/**
 * src/answers.ts: the one writer of SPEC §5's error answers, to a node:http response and to a
 * socket the parser refused, on a loopback server on port 0.
 */
import http from "node:http";
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { errorAnswer, Refusal, writeError, writeErrorToSocket } from "../src/answers.js";
import { listenOnLoopback, type Listener } from "../src/listener.js";

/** Sends `text` on a fresh connection and gives back everything the server wrote before closing. */
function rawExchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let out = "";
    socket.on("data", (d) => (out += d));
    socket.on("close", () => resolve(out));
    socket.on("error", reject);
    socket.write(text);
  });
}

describe("errorAnswer", () => {
  it("maps each code to its status, with the SPEC's shape, Cache-Control and the extra fields after", () => {
    const a = errorAnswer("token_unavailable", "no token", { extra: { step: "sts", hint: null } });
    expect(a.status).toBe(503);
    expect(a.headers).toEqual({ "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
    expect(a.body).toBe('{"error":"token_unavailable","message":"no token","step":"sts","hint":null}');
    expect(errorAnswer("method_not_allowed", "no", { allow: "GET" }).headers.allow).toBe("GET");
    for (const [code, status] of [["bad_request", 400], ["unauthorized", 401], ["forbidden", 403], ["not_found", 404], ["internal", 500]] as const) {
      expect(errorAnswer(code, "x").status).toBe(status);
    }
  });

  it("redacts anything shaped like a JWT in the message", () => {
    const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
    expect(errorAnswer("bad_request", `got ${jwt}`).body).not.toContain(jwt);
    expect(new Refusal("forbidden", `got ${jwt}`).answer.body).not.toContain(jwt);
  });
});

describe("writing", () => {
  let listener: Listener | undefined;
  afterEach(async () => {
    await listener?.close();
    listener = undefined;
  });

  it("writes to a node:http response with Content-Length", async () => {
    listener = await listenOnLoopback(0);
    listener.serve((_req, res) => writeError(res, errorAnswer("internal", "internal error")));
    const r = await new Promise<http.IncomingMessage & { text: string }>((resolve, reject) => {
      http
        .get({ host: "127.0.0.1", port: listener!.addresses[0]!.port, path: "/token", agent: false }, (res) => {
          let text = "";
          res.on("data", (d) => (text += d));
          res.on("end", () => resolve(Object.assign(res, { text })));
        })
        .on("error", reject);
    });
    expect(r.statusCode).toBe(500);
    expect(r.headers["cache-control"]).toBe("no-store");
    expect(r.headers["content-length"]).toBe(String(Buffer.byteLength(r.text)));
    expect(JSON.parse(r.text)).toEqual({ error: "internal", message: "internal error" });
  });

  it("answers CONNECT and a request the parser refuses on the socket, then closes it", async () => {
    listener = await listenOnLoopback(0);
    const port = listener.addresses[0]!.port;
    const connect = await rawExchange(port, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    expect(connect).toMatch(/^HTTP\/1\.1 405 Method Not Allowed\r\n/);
    expect(connect).toMatch(/\r\nallow: GET\r\n/);
    expect(connect).toMatch(/\r\ncache-control: no-store\r\n/);
    expect(connect.endsWith('\r\n\r\n{"error":"method_not_allowed","message":"CONNECT is not allowed; use GET"}')).toBe(true);
    const malformed = await rawExchange(port, "GET /token HTTP/1.1\r\nBad Header: x\r\n\r\n");
    expect(malformed).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(JSON.parse(malformed.slice(malformed.indexOf("\r\n\r\n") + 4))).toEqual({ error: "bad_request", message: "malformed HTTP request (HPE_INVALID_HEADER_TOKEN)" });
  });

  it("writes nothing to a socket already closed", () => {
    const socket = new net.Socket();
    socket.destroy();
    expect(() => writeErrorToSocket(socket, errorAnswer("bad_request", "x"))).not.toThrow();
  });
});
