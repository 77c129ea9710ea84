/**
 * The work done while the first STS call is on the wire: the warm-up request that opens the
 * connection to each token endpoint (src/preconnect.ts), started with the prefetch. Also the
 * Extensions API client's signal that the registration request is out (src/extensions-api.ts).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import type { Target } from "../src/config.js";
import { createExtensionsApi } from "../src/extensions-api.js";
import { createLogger, silentLogger } from "../src/log.js";
import { discoveryUrlOf, preconnect, preconnectUrls } from "../src/preconnect.js";

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

const target = (name: string, tokenEndpoint: string): Target => ({
  name,
  host: new URL(tokenEndpoint).origin,
  isAccounts: tokenEndpoint.includes("/accounts/"),
  accountId: undefined,
  clientId: undefined,
  scope: "all-apis",
  tokenEndpoint,
});

/** A loopback server that records each request and answers with `answer`. */
async function server(answer: (req: http.IncomingMessage, res: http.ServerResponse) => void) {
  const seen: { method?: string; url?: string; headers: http.IncomingHttpHeaders; at: number }[] = [];
  const s = http.createServer((req, res) => {
    seen.push({ method: req.method, url: req.url, headers: req.headers, at: performance.now() });
    answer(req, res);
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  closers.push(() => new Promise<void>((r) => s.close(() => r())));
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, seen, server: s };
}

describe("the token endpoint's discovery document", () => {
  it.each([
    ["https://dbc-1.cloud.databricks.com/oidc/v1/token", "https://dbc-1.cloud.databricks.com/oidc/.well-known/oauth-authorization-server"],
    ["https://accounts.cloud.databricks.com/oidc/accounts/a-1/v1/token", "https://accounts.cloud.databricks.com/oidc/accounts/a-1/.well-known/oauth-authorization-server"],
    ["https://proxy.example.com:8443/custom/token?x=1", "https://proxy.example.com:8443/oidc/.well-known/oauth-authorization-server"],
  ])("beside %s is %s", (endpoint, expected) => {
    expect(discoveryUrlOf(endpoint)).toBe(expected);
  });

  it("is asked once per origin: targets on one workspace share a connection", () => {
    const urls = preconnectUrls([
      target("default", "https://dbc-1.cloud.databricks.com/oidc/v1/token"),
      target("sql", "https://dbc-1.cloud.databricks.com/oidc/v1/token"),
      target("other", "https://dbc-2.cloud.databricks.com/oidc/v1/token"),
    ]);
    expect(urls).toEqual(["https://dbc-1.cloud.databricks.com/oidc/.well-known/oauth-authorization-server", "https://dbc-2.cloud.databricks.com/oidc/.well-known/oauth-authorization-server"]);
  });
});

describe("preconnect", () => {
  it("sends a plain GET, reads the answer to its end, and the next request reuses the connection", async () => {
    const sockets = new Set<unknown>();
    const s = await server((req, res) => {
      sockets.add(req.socket);
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ issuer: "x" }));
    });
    await preconnect(fetch, [`${s.url}/oidc/.well-known/oauth-authorization-server`], silentLogger);
    expect(s.seen).toEqual([expect.objectContaining({ method: "GET", url: "/oidc/.well-known/oauth-authorization-server" })]);
    // Nothing that identifies the function goes with it.
    expect(s.seen[0]!.headers.authorization).toBeUndefined();
    // undici hands the connection back to its pool just after the body ends; the exchange
    // comes an STS round trip later, which 20 ms stands for.
    await new Promise((r) => setTimeout(r, 20));
    const res = await fetch(`${s.url}/oidc/v1/token`, { method: "POST", body: "x" });
    await res.arrayBuffer();
    expect(sockets.size).toBe(1);
  });

  it("does not follow a redirect: only the token endpoint's origin is wanted", async () => {
    const elsewhere = await server((_req, res) => res.end("{}"));
    const redirecting = await server((_req, res) => res.writeHead(302, { location: `${elsewhere.url}/login` }).end());
    await preconnect(fetch, [`${redirecting.url}/oidc/.well-known/oauth-authorization-server`], silentLogger);
    expect(redirecting.seen).toHaveLength(1);
    expect(elsewhere.seen).toEqual([]);
  });

  it("never rejects: a refused connection, an error status, or an endless body is only logged at debug", async () => {
    const lines: string[] = [];
    const log = createLogger({ level: "debug", write: (l) => lines.push(l) });
    const refused = await server(() => {});
    const port = new URL(refused.url).port;
    await new Promise<void>((r) => refused.server.close(() => r()));
    const failing = await server((_req, res) => res.writeHead(503).end("busy"));
    const endless = await server((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      const chunk = Buffer.alloc(16 * 1024, 0x20);
      const pump = () => {
        while (res.write(chunk));
      };
      res.on("drain", pump);
      pump();
      res.on("close", () => res.off("drain", pump));
    });
    await expect(preconnect(fetch, [`http://127.0.0.1:${port}/x`, `${failing.url}/x`, `${endless.url}/x`], log)).resolves.toBeUndefined();
    const records = lines.map((l) => JSON.parse(l) as { level: string; msg: string; url: string; status?: number });
    expect(records.every((r) => r.level === "debug")).toBe(true);
    expect(records.find((r) => r.url.startsWith(`http://127.0.0.1:${port}`))?.msg).toMatch(/could not open/);
    expect(records.find((r) => r.url.startsWith(failing.url))).toMatchObject({ status: 503 });
    expect(records.find((r) => r.url.startsWith(endless.url))).toMatchObject({ status: 200 });
  });
});

describe("the Extensions API client", () => {
  it("reports the registration request sent before Lambda has answered it", async () => {
    let answer: (() => void) | undefined;
    const api = await server((_req, res) => {
      answer = () => res.writeHead(200, { "lambda-extension-identifier": "id-1", "content-type": "application/json" }).end("{}");
    });
    let sentAt: number | undefined;
    const registered = createExtensionsApi(new URL(api.url).host).register("databricks-token-broker", ["INVOKE", "SHUTDOWN"], () => (sentAt = performance.now()));
    while (!answer) await new Promise((r) => setTimeout(r, 5));
    expect(sentAt).toBeDefined();
    answer();
    await expect(registered).resolves.toBe("id-1");
  });
});
