import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { Target } from "../src/config.js";
import { createExchange, MAX_BODY_BYTES } from "../src/exchange.js";
import { httpPost } from "../src/http-post.js";
import { silentLogger } from "../src/log.js";
import { freePort } from "./stack.js";

const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A loopback server answering with `handle`; its token endpoint's URL, and every request's method, headers and body. */
async function serve(handle: (req: IncomingMessage, res: ServerResponse) => void) {
  const seen: { method?: string; headers: IncomingMessage["headers"]; body: string }[] = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => {
      seen.push({ method: req.method, headers: req.headers, body });
      handle(req, res);
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/oidc/v1/token`, seen, server };
}

const init = (signal = AbortSignal.timeout(5_000)) => ({ method: "POST" as const, headers: { "content-type": "application/x-www-form-urlencoded" }, body: "a=1&b=%C3%A9", redirect: "error" as const, signal });

async function text(body: AsyncIterable<Uint8Array> | null): Promise<string> {
  let s = "";
  for await (const c of body ?? []) s += Buffer.from(c).toString();
  return s;
}

const targetAt = (tokenEndpoint: string): Target => ({ name: "default", host: "http://127.0.0.1", isAccounts: false, accountId: undefined, clientId: "sp", scope: "all-apis", tokenEndpoint });

describe("httpPost (the extension's HTTP client for the exchange)", () => {
  it("sends the method, headers and body with its length, and answers status, headers (any case) and body", async () => {
    const s = await serve((_req, res) => {
      res.writeHead(201, "Made", { "content-type": "application/json", "x-two": ["a", "b"] });
      res.end('{"ok":true}');
    });
    const res = await httpPost(s.url, init());
    expect({ status: res.status, ok: res.ok, statusText: res.statusText }).toEqual({ status: 201, ok: true, statusText: "Made" });
    expect(res.headers.get("Content-Type")).toBe("application/json");
    expect(res.headers.get("x-two")).toBe("a, b");
    expect(res.headers.get("absent")).toBeNull();
    expect(await text(res.body)).toBe('{"ok":true}');
    expect(s.seen[0]).toMatchObject({ method: "POST", body: "a=1&b=%C3%A9", headers: { "content-length": "12", "content-type": "application/x-www-form-urlencoded" } });
  });

  it("does not follow a redirect: the 3xx is the answer", async () => {
    const s = await serve((_req, res) => {
      res.writeHead(302, { location: "http://127.0.0.1:1/elsewhere" });
      res.end();
    });
    const res = await httpPost(s.url, init());
    expect([res.status, res.ok]).toEqual([302, false]);
    expect(s.seen).toHaveLength(1);
  });

  it("rejects with the system error's code when nothing listens", async () => {
    const port = await freePort();
    await expect(httpPost(`http://127.0.0.1:${port}/oidc/v1/token`, init())).rejects.toMatchObject({ code: "ECONNREFUSED" });
  });

  it("refuses a scheme other than http and https", async () => {
    await expect(httpPost("ftp://127.0.0.1/x", init())).rejects.toThrow(/unsupported URL scheme ftp:/);
  });

  it("stops at the signal, while waiting for headers and while reading the body", async () => {
    const silent = await serve(() => {});
    const early = new AbortController();
    const pending = httpPost(silent.url, init(early.signal));
    setTimeout(() => early.abort(), 50);
    await expect(pending).rejects.toMatchObject({ name: "AbortError" });

    const slow = await serve((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"access_token":');
    });
    const late = new AbortController();
    const res = await httpPost(slow.url, init(late.signal));
    setTimeout(() => late.abort(), 50);
    // node:http ends the body with its own error (ECONNRESET, "aborted"), which the exchange reports as unreachable.
    await expect(text(res.body)).rejects.toThrow();
  });
});

describe("the exchange over httpPost", () => {
  it("reports a refused connection as unreachable, with the system error's code", async () => {
    const port = await freePort();
    const exchange = createExchange({ fetch: httpPost, now: Date.now, log: silentLogger });
    await expect(exchange(targetAt(`http://127.0.0.1:${port}/oidc/v1/token`), { jwt: "x" })).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE", upstreamCode: "ECONNREFUSED" });
  });

  it("reports its own timeout as such", async () => {
    const s = await serve(() => {});
    const exchange = createExchange({ fetch: httpPost, now: Date.now, log: silentLogger, timeoutMs: 100 });
    await expect(exchange(targetAt(s.url), { jwt: "x" })).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE", upstreamCode: "timeout" });
  });

  it("stops reading a body over the limit, declared or streamed, and says so", async () => {
    const chunk = "x".repeat(16 * 1024);
    for (const declared of [true, false]) {
      let closed = false;
      // A body that never ends: a client that read on would hit the exchange's timeout instead.
      const s = await serve((_req, res) => {
        res.writeHead(200, declared ? { "content-type": "application/json", "content-length": String(MAX_BODY_BYTES * 1024) } : { "content-type": "application/json" });
        res.on("close", () => (closed = true));
        const write = (): void => {
          while (!closed && res.write(chunk));
          if (!closed) res.once("drain", write);
        };
        write();
      });
      const exchange = createExchange({ fetch: httpPost, now: Date.now, log: silentLogger, timeoutMs: 3_000 });
      await expect(exchange(targetAt(s.url), { jwt: "x" })).rejects.toMatchObject({ code: "ERR_EXCHANGE_INVALID_RESPONSE", message: expect.stringContaining(`over ${MAX_BODY_BYTES} bytes`) });
      await expect.poll(() => closed, { timeout: 2_000 }).toBe(true);
    }
  });
});
