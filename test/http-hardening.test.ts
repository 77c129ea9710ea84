/**
 * Issue 12's HTTP items, each pinned where it lives: the `Host` check against DNS rebinding
 * (on the loopback listener, real sockets, the port each request came in on), the proxy
 * headers, `?min_ttl` on `/metadata`, and the request timeout Node.js checks only now and then.
 */
import http from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { buildApp } from "../src/app.js";
import { parseConfig } from "../src/config.js";
import type { AccessToken } from "../src/exchange.js";
import { listenOnLoopback, type Listener, REQUEST_TIMEOUT_MS } from "../src/listener.js";
import { silentLogger } from "../src/log.js";
import { TokenCache } from "../src/token-cache.js";
import { stackPerTest } from "./harness.js";
import { type RawAnswer, rawRequest } from "./raw-http.js";

const SESSION = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN";
const HOST = "https://dbc-1234.cloud.databricks.com";
const T0 = Date.UTC(2026, 10, 29, 12);
const auth = { "x-aws-session-token": SESSION };
const meta = { "x-databricks-metadata-version": "1", "x-databricks-host": HOST };
/** Every credential right, so only the check under test can refuse. */
const everything = { ...auth, ...meta };

/** The app on a clock the test moves, counting the tokens its source fetches (one per exchange). */
function setup() {
  const parsed = parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: "true", DATABRICKS_HOST: HOST, AWS_REGION: "us-east-1" });
  if (!parsed.enabled) throw new Error("config");
  const clock = { t: T0 };
  const fetched = { n: 0 };
  const cache = new TokenCache({
    targets: parsed.config.targets,
    refreshAheadSeconds: 600,
    minTtlSeconds: 120,
    now: () => clock.t,
    source: async (target): Promise<AccessToken> => {
      fetched.n += 1;
      return { accessToken: `dapi-${target.name}-${fetched.n}`, tokenType: "Bearer", scope: target.scope, issuedAt: clock.t, expiresAt: clock.t + 3_600_000 };
    },
  });
  const app = buildApp({ config: parsed.config, cache, sessionToken: SESSION, log: silentLogger, now: () => clock.t });
  cleanups.push(() => app.close());
  return { app, clock, fetched, config: parsed.config };
}

/** The app behind a real loopback listener on a free port, as src/lifecycle.ts serves it. */
async function served(): Promise<{ listener: Listener; port: number }> {
  const { app } = setup();
  const listener = await listening();
  await app.ready();
  listener.serve(app.routing);
  return { listener, port: listener.addresses[0]!.port };
}

async function listening(): Promise<Listener> {
  const listener = await listenOnLoopback(0);
  cleanups.push(() => listener.close());
  return listener;
}

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function request(method: string, path: string, host: string | undefined, headers: Record<string, string> = {}, version = "1.1"): string {
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  return `${method} ${path} HTTP/${version}\r\n${host === undefined ? "" : `Host: ${host}\r\n`}${lines}Connection: close\r\n\r\n`;
}

/** A 400 in the SPEC's shape whose message is about `about`. */
function expectRefused(a: RawAnswer, about: RegExp, what: string): void {
  expect(a.status, what).toBe(400);
  expect(a.headers["cache-control"], what).toBe("no-store");
  const body = JSON.parse(a.body) as { error: string; message: string };
  expect(body.error, what).toBe("bad_request");
  expect(body.message, what).toMatch(about);
}

describe("Host header (DNS rebinding)", () => {
  /** A path and the headers that would earn it anything but a 400 were Host not checked first. */
  const routes: [string, string, Record<string, string>][] = [
    ["GET", "/token", everything],
    ["GET", "/token/default", everything],
    ["GET", "/metadata", everything],
    ["GET", "/metadata/default", everything],
    ["GET", "/health", {}],
    ["GET", "/nowhere", {}],
    ["POST", "/token", everything],
    ["GET", "/token?min_ttl=nope", everything],
    ["GET", "/token", { ...everything, "x-forwarded-for": "127.0.0.1" }],
  ];

  it("refuses, 400 on every route, a Host other than localhost, 127.0.0.1 or [::1] with the port", async () => {
    const { port } = await served();
    const hosts = [
      `rebind.attacker.example:${port}`,
      `attacker.example`,
      `localhost.attacker.example:${port}`,
      `localhost.:${port}`,
      `127.0.0.2:${port}`,
      `[::ffff:127.0.0.1]:${port}`,
      `0.0.0.0:${port}`,
      // The right name on a port the broker is not listening on (2775 is the configured one).
      `localhost:${port + 1}`,
      "localhost:2775",
      "localhost",
      `localhost:`,
      `localhost:0${port}`,
      `127.0.0.1:${port}@attacker.example`,
      `127.0.0.1:${port}, attacker.example`,
      "",
    ];
    for (const host of hosts) {
      for (const [method, path, headers] of routes) {
        const a = await rawRequest(port, request(method, path, host, headers));
        expectRefused(a, /Host/, `${method} ${path} with Host ${JSON.stringify(host)}`);
      }
    }
  });

  it("serves localhost, 127.0.0.1 and [::1] with the port the request came in on, in any case", async () => {
    const { port } = await served();
    for (const host of [`localhost:${port}`, `LocalHost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`]) {
      expect((await rawRequest(port, request("GET", "/health", host))).status, host).toBe(200);
      expect((await rawRequest(port, request("GET", "/metadata", host, meta))).status, host).toBe(200);
      expect((await rawRequest(port, request("GET", "/token", host, auth))).status, host).toBe(200);
    }
  });

  it("refuses a request without a Host, in HTTP/1.0 as in 1.1, and one with two", async () => {
    const { port } = await served();
    for (const version of ["1.0", "1.1"]) {
      expectRefused(await rawRequest(port, request("GET", "/health", undefined, {}, version)), /Host/, `HTTP/${version} without Host`);
    }
    const two = `GET /health HTTP/1.1\r\nHost: localhost:${port}\r\nHost: attacker.example:${port}\r\nConnection: close\r\n\r\n`;
    expectRefused(await rawRequest(port, two), /Host/, "two Host headers");
  });

  it("refuses a rebound request even before the app is there to answer it", async () => {
    const listener = await listening();
    const port = listener.addresses[0]!.port;
    // No serve(): a good request would be held until the app is ready; a bad one is answered now.
    expectRefused(await rawRequest(port, request("GET", "/health", `attacker.example:${port}`), { timeoutMs: 2_000 }), /Host/, "held");
  });

  it("takes [::1] on the IPv6 listener too, from a real client", async (ctx) => {
    const { listener, port } = await served();
    if (!(await listener.listenOnIpv6())) return ctx.skip();
    // node:http writes `Host: [::1]:PORT` itself, as every SDK's client does.
    const status = await new Promise<number>((resolve, reject) => {
      http.get({ host: "::1", port, path: "/health", agent: false }, (r) => resolve(r.resume().statusCode ?? 0)).on("error", reject);
    });
    expect(status).toBe(200);
  });

  it("does not tell a caller with the wrong X-Databricks-Host which host is right", async () => {
    const { app } = setup();
    const r = await app.inject({ url: "/metadata", headers: { ...meta, "x-databricks-host": "https://evil.example.com" } });
    expect(r.statusCode).toBe(403);
    expect(r.body).not.toMatch(/dbc-1234/i);
    expect(r.json().message).toMatch(/DATABRICKS_HOST/);
  });
});

describe("proxy headers", () => {
  it.each(["Forwarded", "Via", "X-Real-IP", "X-Forwarded-For"])("refuses a request carrying %s, even with every credential right", async (name) => {
    const { port } = await served();
    for (const path of ["/token", "/metadata", "/metadata/default", "/health", "/nowhere"]) {
      const a = await rawRequest(port, request("GET", path, `localhost:${port}`, { ...everything, [name]: name === "Forwarded" ? "for=203.0.113.7" : "1.1 proxy" }));
      expectRefused(a, new RegExp(name, "i"), `${path} with ${name}`);
    }
  });
});

describe("?min_ttl on /metadata", () => {
  it("is ignored: six asks with min_ttl=3600 past the 5 s fresh window make no extra exchange", async () => {
    const { app, clock, fetched } = setup();
    for (let i = 0; i < 6; i++) {
      const r = await app.inject({ url: "/metadata?min_ttl=3600", headers: meta });
      expect(r.statusCode).toBe(200);
      expect(r.json().access_token).toBe("dapi-default-1");
      clock.t += 6_000;
    }
    expect(fetched.n).toBe(1);
  });

  it("is not even read there: a value /token would refuse is no error on /metadata", async () => {
    const { app } = setup();
    expect((await app.inject({ url: "/metadata?min_ttl=abc", headers: meta })).statusCode).toBe(200);
    expect((await app.inject({ url: "/token?min_ttl=abc", headers: auth })).statusCode).toBe(400);
  });

  it("still bounds /token: min_ttl=3600 past the fresh window fetches anew", async () => {
    const { app, clock, fetched } = setup();
    await app.inject({ url: "/token", headers: auth });
    clock.t += 6_000;
    expect((await app.inject({ url: "/token?min_ttl=3600", headers: auth })).json().access_token).toBe("dapi-default-2");
    expect(fetched.n).toBe(2);
  });
});

describe("request timeout", () => {
  it(`answers a request that never finishes arriving soon after ${REQUEST_TIMEOUT_MS} ms, not up to 30 s later`, async () => {
    const { port } = await served();
    const started = Date.now();
    // Half a request: the header block never ends.
    const a = await rawRequest(port, `GET /health HTTP/1.1\r\nHost: localhost:${port}\r\nX-Slow: `, { timeoutMs: 20_000 });
    const took = Date.now() - started;
    expectRefused(a, /not received in full/, "half a request");
    expect(took).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 500);
    // Node.js checks every connectionsCheckingInterval: 30 s by default, so this took 30-40 s.
    expect(took).toBeLessThan(15_000);
  }, 30_000);
});

describe("the running extension (the built layer under the Lambda emulator)", () => {
  const stack = stackPerTest();

  it("refuses the review's rebound and proxied /metadata requests, which it answered 200", async () => {
    // Raw requests come from outside any invoke: the environment is kept running.
    const s = await stack({ lambda: { freezeWhenIdle: false } });
    expect((await s.lambda.init).ok).toBe(true);
    const metadata = { "X-Databricks-Metadata-Version": "1", "X-Databricks-Host": s.db.url };
    const ask = async (host: string, extra: Record<string, string> = {}) => {
      const a = await rawRequest(s.port, request("GET", "/metadata", host, { ...metadata, ...extra }));
      s.record({ method: "GET", route: "/metadata", status: a.status, body: a.body });
      return a;
    };
    expect((await ask(`localhost:${s.port}`)).status).toBe(200);
    expectRefused(await ask(`rebind.attacker.example:${s.port}`), /Host/, "rebound");
    for (const [name, value] of [["Forwarded", "for=203.0.113.7"], ["Via", "1.1 proxy"], ["X-Real-IP", "203.0.113.7"]]) {
      expectRefused(await ask(`localhost:${s.port}`, { [name!]: value! }), new RegExp(name!, "i"), name!);
    }
  });
});
