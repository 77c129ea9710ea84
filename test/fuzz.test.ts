/**
 * Hostile and malformed requests against the running extension (the built layer under the
 * Lambda emulator), sent over raw loopback sockets: property-based fuzzing of methods, paths,
 * percent-encoding, query values and headers; near-miss credentials; very many connections at
 * once; clients that never finish. Whatever arrives, the answer is one of the documented
 * statuses in the documented shape, never a crash, and never a token where none is due.
 */
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ask, crashLines, servedWrong, sleep } from "./harness.js";
import { open, type RawAnswer, rawRequest } from "./raw-http.js";
import { SESSION_TOKEN, type Stack, startStack } from "./stack.js";

/** SPEC §5: 200, and errors 400, 401, 403, 404, 405 and 503. */
const DOCUMENTED = new Set([200, 400, 401, 403, 404, 405, 503]);
/** Token lifetimes in this file: the JWT's 300 s, so every 200 is checked against this minimum. */
const MIN_TTL_SECONDS = 120;

let s: Stack;
beforeAll(async () => {
  // Fuzzed requests come all the time from outside any invoke: the environment is kept running.
  s = await startStack({ lambda: { freezeWhenIdle: false } });
  const init = await s.lambda.init;
  if (!init.ok) throw new Error(`init ${init.status}: ${JSON.stringify(init)}`);
  // Warm: the first token is fetched, so fuzzed requests are answered from the cache.
  expect((await ask(s, "token")).status).toBe(200);
});
afterAll(async () => {
  // close() fails the file if any answer or log line of the run carried a secret.
  await s?.close();
});

interface Req {
  method: string;
  path: string;
  headers: [string, string][];
  body?: string;
}

function render(r: Req): string {
  const lines = r.headers.map(([k, v]) => `${k}: ${v}\r\n`).join("");
  return `${r.method} ${r.path} HTTP/1.1\r\nHost: 127.0.0.1:${s.port}\r\n${lines}Connection: close\r\n\r\n${r.body ?? ""}`;
}

/**
 * The path a server may legitimately take `target` for: absolute-form and a fragment are
 * accepted, percent-encoding decoded (`/%74oken` is `/token`). Undefined when it does not decode.
 */
function routeOf(target: string): string | undefined {
  let p = target.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i, "").replace(/[?#].*$/s, "");
  try {
    p = decodeURIComponent(p);
  } catch {
    return undefined;
  }
  return p;
}

/** Sends `r`, records the answer for the secrets scan, and checks what holds for every answer. */
async function send(r: Req): Promise<RawAnswer> {
  // Every request here ends with Connection: close, so the server's close ends each answer, HEAD's included.
  const a = await rawRequest(s.port, render(r));
  s.record({ method: r.method, route: routeOf(r.path) ?? r.path, status: a.status, body: a.body });
  return a;
}

const secrets = () => [SESSION_TOKEN, ...s.db.issuedTokens.map((t) => t.token), ...s.sts.issued.map((j) => j.token)];

/** What must hold for any answer at all; returns the problems. */
function answerWrong(r: Req, a: RawAnswer): string[] {
  const problems: string[] = [];
  if (a.noAnswer) return [`no answer to ${JSON.stringify(render(r).slice(0, 200))}`];
  if (!DOCUMENTED.has(a.status)) problems.push(`status ${a.status}`);
  if (a.headers["cache-control"] !== "no-store") problems.push(`Cache-Control ${String(a.headers["cache-control"])} on ${a.status}`);
  if (a.status !== 200 && r.method !== "HEAD") {
    let body: unknown;
    try {
      body = JSON.parse(a.body);
    } catch {
      body = undefined;
    }
    const b = body as { error?: unknown; message?: unknown } | undefined;
    if (typeof b?.error !== "string" || typeof b.message !== "string") problems.push(`error body not {error, message}: ${a.body.slice(0, 200)}`);
    for (const secret of secrets()) if (a.body.includes(secret)) problems.push(`a secret in a ${a.status} answer`);
  }
  return problems;
}

const header = (r: Req, name: string) => r.headers.filter(([k]) => k.toLowerCase() === name);

/** A 200 must have been earned: a GET with the right credentials and no proxy in between. */
function unearned(r: Req, a: RawAnswer): string | undefined {
  if (a.status !== 200) return undefined;
  if (r.method !== "GET") return `200 to ${r.method}`;
  if (header(r, "x-forwarded-for").length > 0) return "200 through a proxy (X-Forwarded-For)";
  const route = routeOf(r.path);
  if (route === undefined) return `200 to a path that does not decode`;
  if (/^\/token(\/|$)/.test(route)) {
    const given = header(r, "x-aws-session-token");
    // Node trims optional whitespace around a header value, as HTTP says it must.
    if (given.length !== 1 || given[0]![1].trim() !== SESSION_TOKEN) return `token route answered 200 to session header ${JSON.stringify(given)}`;
  } else if (/^\/metadata(\/|$)/.test(route)) {
    const version = header(r, "x-databricks-metadata-version");
    const host = header(r, "x-databricks-host");
    const same = [s.db.url, `${s.db.url}/`, s.db.url.toUpperCase()];
    if (version.length !== 1 || version[0]![1].trim() !== "1") return `metadata route answered 200 to version ${JSON.stringify(version)}`;
    if (host.length !== 1 || !same.includes(host[0]![1].trim())) return `metadata route answered 200 to host ${JSON.stringify(host)}`;
  } else if (route !== "/health") {
    return `200 on ${route}`;
  }
  return undefined;
}

// ---- arbitraries -----------------------------------------------------------------------------

/** `arb` one time in `1 + absent`, else undefined: most requests must stay plausible to reach the routes. */
const sometimes = <T>(arb: fc.Arbitrary<T>, absent = 3) => fc.oneof({ weight: absent, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });

const nearMisses = (secret: string) =>
  fc.oneof(
    fc.nat({ max: secret.length - 1 }).map((i) => secret.slice(0, i) + String.fromCharCode(secret.charCodeAt(i) ^ 1) + secret.slice(i + 1)),
    fc.integer({ min: 1, max: secret.length - 1 }).map((i) => secret.slice(0, i)),
    fc.constantFrom(`${secret}x`, `x${secret}`, secret.toUpperCase(), secret.toLowerCase(), `${secret},${secret}`, `Bearer ${secret}`, secret.replace(/\//g, "")),
    fc.string({ unit: "binary-ascii", minLength: 1, maxLength: 80 }).filter((v) => /^[\x21-\x7e]+$/.test(v)),
  );

const segment = fc.oneof(
  fc.constantFrom("token", "metadata", "health", "default", "other", "..", ".", "%2e%2e", "%2F", "%00", "%zz", "%", "%c3%28", "%E2%80%AE", "TOKEN", "token%20", "%74oken", "~", "x".repeat(150), "default%00", "__proto__"),
  fc.string({ unit: "binary", maxLength: 12 }).map(encodeURIComponent),
  fc.string({ unit: "binary-ascii", maxLength: 6 }),
);

const path = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(fc.constantFrom("/token", "/metadata", "/health", "/token/default", "/metadata/default"), fc.constantFrom("", "", "", "/", "//", "/x")).map(([a, b]) => a + b) },
  { weight: 3, arbitrary: fc.array(segment, { maxLength: 4 }).map((parts) => `/${parts.join("/")}`) },
  { weight: 1, arbitrary: fc.constantFrom("*", "http://127.0.0.1/token", "token", "/token#frag", "//token", "/./token", "/token/../health", "/%2e%2e/token", "/token;a=b", "/token/default/", "/health/..") },
);

const queryValue = fc.oneof(
  fc.integer({ min: -10, max: 5000 }).map(String),
  fc.constantFrom("", "1e3", "0x10", "60.5", " 60", "%36%30", "99999999999999999999", "NaN", "-0", "\u0663", "3600", "3601", "0"),
  fc.string({ unit: "binary", maxLength: 8 }).map(encodeURIComponent),
);
const query = fc.option(
  fc
    .array(fc.tuple(fc.constantFrom("min_ttl", "min_ttl", "MIN_TTL", "x", "min_ttl[]", "__proto__", "constructor", "min_ttl[a]"), queryValue), { minLength: 1, maxLength: 3 })
    .map((pairs) => `?${pairs.map(([k, v]) => `${k}=${v}`).join("&")}`),
  { nil: "" },
);

const method = fc.oneof(
  { weight: 6, arbitrary: fc.constant("GET") },
  { weight: 3, arbitrary: fc.constantFrom("HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get", "Get", "M-SEARCH", "CONNECT") },
  { weight: 1, arbitrary: fc.stringMatching(/^[A-Z]{1,12}$/) },
);

const printable = fc.string({ unit: "binary-ascii", maxLength: 40 }).map((v) => v.replace(/[\r\n]/g, ""));
const extraHeader: fc.Arbitrary<[string, string]> = fc.oneof(
  fc.tuple(fc.stringMatching(/^[A-Za-z0-9-]{1,20}$/), printable),
  fc.tuple(fc.constantFrom("Upgrade", "Connection", "Expect", "Content-Type", "Accept", "Forwarded", "X-Real-Ip", "Origin", "Authorization", "Cookie"), fc.constantFrom("websocket", "upgrade", "100-continue", "application/json", "*/*", "for=1.2.3.4", "evil.example", `Bearer ${"x".repeat(10)}`, "a=b")),
  // Values a parser must refuse: control characters, bytes past ASCII.
  fc.tuple(fc.constant("X-Odd"), fc.constantFrom("a\u0000b", "a\u0007b", "caf\u00e9", "\u00ff\u00fe", "a\tb", "a\u000bb")),
);

const request: fc.Arbitrary<Req> = fc
  .record({
    method,
    path: fc.tuple(path, query).map(([p, q]) => p + q),
    session: fc.oneof(
      { weight: 3, arbitrary: fc.constant<string[]>([SESSION_TOKEN]) },
      { weight: 1, arbitrary: fc.constant<string[]>([]) },
      { weight: 3, arbitrary: nearMisses(SESSION_TOKEN).map((v) => [v]) },
      { weight: 1, arbitrary: fc.constantFrom<string[]>([SESSION_TOKEN, SESSION_TOKEN], [""], [` ${SESSION_TOKEN} `], [SESSION_TOKEN, "x"]) },
    ),
    version: sometimes(fc.constantFrom("1", "1", "1", "2", "0", "", "1.0", " 1", "01", "1,1", "v1"), 1),
    host: sometimes(fc.constantFrom("good", "good", "good", "good/", "GOOD", "https", "http://evil.example", "good/path", "good@evil", "127.0.0.1", "localhost", ""), 1),
    xff: sometimes(fc.constantFrom("127.0.0.1", "", "1.2.3.4, 5.6.7.8"), 6),
    extra: fc.oneof({ weight: 2, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(extraHeader, { minLength: 1, maxLength: 4 }) }),
    pad: sometimes(fc.constantFrom(1, 4, 7, 9, 16, 64), 6),
    body: fc.constantFrom<"none" | "length" | "chunked" | "both">("none", "none", "none", "length", "chunked", "both"),
  })
  .map((g) => {
    const hostValue = (h: string) =>
      ({ good: s.db.url, "good/": `${s.db.url}/`, GOOD: s.db.url.toUpperCase(), https: s.db.url.replace("http:", "https:"), "good/path": `${s.db.url}/path`, "good@evil": `${s.db.url}@evil.example` })[h] ?? h;
    const headers: [string, string][] = g.session.map((v) => ["X-Aws-Session-Token", v] as [string, string]);
    if (g.version !== undefined) headers.push(["X-Databricks-Metadata-Version", g.version]);
    if (g.host !== undefined) headers.push(["X-Databricks-Host", hostValue(g.host)]);
    if (g.xff !== undefined) headers.push(["X-Forwarded-For", g.xff]);
    headers.push(...(g.extra as [string, string][]).filter(([k]) => !/^(content-length|transfer-encoding|host|connection)$/i.test(k)));
    // Header sizes on both sides of the 8 KiB limit.
    if (g.pad !== undefined) headers.push(["X-Pad", "p".repeat(g.pad * 1024)]);
    let body: string | undefined;
    if (g.body === "length" || g.body === "both") headers.push(["Content-Length", "5"]);
    if (g.body === "chunked" || g.body === "both") headers.push(["Transfer-Encoding", "chunked"]);
    if (g.body === "length") body = "hello";
    if (g.body === "chunked" || g.body === "both") body = "5\r\nhello\r\n0\r\n\r\n";
    return { method: g.method, path: g.path, headers, ...(body === undefined ? {} : { body }) };
  });

// ---- tests -----------------------------------------------------------------------------------

describe("fuzzing the running server", () => {
  it("answers any request with a documented status and shape, a 200 only when earned, and never a misplaced token", async () => {
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(request, async (r) => {
        const sentAt = Date.now();
        const a = await send(r);
        statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
        const problems = answerWrong(r, a);
        const why = unearned(r, a);
        if (why) problems.push(why);
        const path = routeOf(r.path) ?? "";
        if (a.status === 200 && !path.startsWith("/health") && r.method === "GET") {
          const body = JSON.parse(a.body) as Record<string, unknown>;
          const route = path.startsWith("/metadata") ? "metadata" : "token";
          problems.push(...servedWrong(s, { route, status: 200, body, sentAt, receivedAt: Date.now() }, MIN_TTL_SECONDS));
        }
        if (problems.length > 0) throw new Error(`${problems.join("; ")}\nrequest: ${JSON.stringify(render(r).slice(0, 400))}\nanswer: ${a.status} ${a.body.slice(0, 300)}`);
      }),
      // FUZZ_RUNS raises the count for a long hunt; the suite's default keeps it to seconds.
      { numRuns: Number(process.env.FUZZ_RUNS ?? 1_500) },
    );
    if (process.env.FUZZ_RUNS) console.log(`statuses: ${JSON.stringify(Object.fromEntries(statuses))}`);
    // The generator reached the interesting answers, not just one kind.
    for (const code of [200, 400, 401, 403, 404, 405]) expect(statuses.get(code) ?? 0, `answers with ${code}`).toBeGreaterThan(0);
    expect(s.lambda.alive).toBe(true);
    expect(crashLines(s)).toEqual([]);
  }, 600_000);

  it("refuses missing, wrong and near-miss session tokens (401, 403) and serves the exact one", async () => {
    const get = (headers: [string, string][]) => send({ method: "GET", path: "/token", headers });
    expect((await get([])).status).toBe(401);
    expect((await get([["X-Aws-Session-Token", ""]])).status).toBe(401);
    await fc.assert(
      fc.asyncProperty(nearMisses(SESSION_TOKEN), async (v) => {
        const a = await get([["X-Aws-Session-Token", v]]);
        expect(answerWrong({ method: "GET", path: "/token", headers: [] }, a)).toEqual([]);
        expect(a.status).toBe(403);
        expect(JSON.parse(a.body)).toMatchObject({ error: "forbidden" });
      }),
      { numRuns: 150 },
    );
    const sentAt = Date.now();
    const ok = await get([["X-Aws-Session-Token", SESSION_TOKEN]]);
    expect(ok.status).toBe(200);
    expect(servedWrong(s, { route: "token", status: 200, body: JSON.parse(ok.body) as Record<string, unknown>, sentAt, receivedAt: Date.now() }, MIN_TTL_SECONDS)).toEqual([]);
  });

  it("metadata routes: 400 without version 1, 403 without this target's host, whatever else is right", async () => {
    const good = s.db.url;
    const meta = (headers: [string, string][], path = "/metadata") => send({ method: "GET", path, headers });
    for (const path of ["/metadata", "/metadata/default"]) {
      expect((await meta([["X-Databricks-Host", good]], path)).status).toBe(400);
      for (const v of ["2", "0", "", "1.0", "01", "v1", "1,1"]) expect((await meta([["X-Databricks-Metadata-Version", v], ["X-Databricks-Host", good]], path)).status, `version ${v}`).toBe(400);
      expect((await meta([["X-Databricks-Metadata-Version", "1"]], path)).status).toBe(403);
      for (const h of ["http://evil.example", `${good}/path`, good.replace("http:", "https:"), `${good}@evil.example`, good.replace(/:\d+$/, ":1"), "", "127.0.0.1"]) {
        expect((await meta([["X-Databricks-Metadata-Version", "1"], ["X-Databricks-Host", h]], path)).status, `host ${h}`).toBe(403);
      }
      // The session token is no key to the metadata route.
      expect((await meta([["X-Aws-Session-Token", SESSION_TOKEN]], path)).status).toBe(400);
      for (const h of [good, `${good}/`, good.toUpperCase()]) expect((await meta([["X-Databricks-Metadata-Version", "1"], ["X-Databricks-Host", h]], path)).status, `host ${h}`).toBe(200);
    }
  });

  it("refuses anything that came through a proxy (X-Forwarded-For), even with every credential right", async () => {
    const full: [string, string][] = [
      ["X-Aws-Session-Token", SESSION_TOKEN],
      ["X-Databricks-Metadata-Version", "1"],
      ["X-Databricks-Host", s.db.url],
    ];
    for (const path of ["/token", "/token/default", "/metadata", "/metadata/default", "/health", "/nowhere"]) {
      for (const xff of ["127.0.0.1", "", "203.0.113.7, 127.0.0.1"]) {
        const a = await send({ method: "GET", path, headers: [...full, ["X-Forwarded-For", xff]] });
        expect(a.status, `${path} with X-Forwarded-For ${JSON.stringify(xff)}`).toBe(400);
        expect(answerWrong({ method: "GET", path, headers: [] }, a)).toEqual([]);
      }
    }
  });

  it("answers every one of 1000 connections opened at once", async () => {
    const sentAt = Date.now();
    const answers = await Promise.all(
      Array.from({ length: 1000 }, (_, i) => {
        const r: Req = i % 4 === 3 ? { method: "GET", path: "/health", headers: [] } : { method: "GET", path: i % 2 ? "/metadata" : "/token", headers: [["X-Aws-Session-Token", SESSION_TOKEN], ["X-Databricks-Metadata-Version", "1"], ["X-Databricks-Host", s.db.url]] };
        return send(r).then((a) => ({ r, a }));
      }),
    );
    expect(answers.filter(({ a }) => a.status !== 200).map(({ a }) => a.status)).toEqual([]);
    for (const { r, a } of answers) {
      if (r.path === "/health") continue;
      const route = r.path === "/metadata" ? "metadata" : "token";
      expect(servedWrong(s, { route, status: 200, body: JSON.parse(a.body) as Record<string, unknown>, sentAt, receivedAt: Date.now() }, MIN_TTL_SECONDS)).toEqual([]);
    }
    expect(s.lambda.alive).toBe(true);
  }, 60_000);

  it("keeps serving while slow clients hold connections open without ever finishing a request", async () => {
    // Half a request line, headers trickled a byte at a time, a body that never comes.
    const slow = await Promise.all(Array.from({ length: 150 }, () => open(s.port)));
    slow.forEach((sock, i) => {
      sock.on("error", () => {});
      sock.write(i % 3 === 0 ? "GET /tok" : i % 3 === 1 ? `GET /token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Aws-Session-Token: ${SESSION_TOKEN}\r\nX-Slow: ` : "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nab");
    });
    let trickling = true;
    const trickle = (async () => {
      while (trickling) {
        for (const sock of slow) if (!sock.destroyed) sock.write("a");
        await sleep(200);
      }
    })();
    try {
      // A reader that never reads: its answer waits in the kernel, not in the broker.
      const stalled = await open(s.port);
      stalled.pause();
      stalled.write(`GET /token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Aws-Session-Token: ${SESSION_TOKEN}\r\n\r\n`);
      for (let i = 0; i < 60; i++) {
        const o = await ask(s, i % 2 ? "metadata" : "token");
        expect(o.status).toBe(200);
        expect(servedWrong(s, o, MIN_TTL_SECONDS)).toEqual([]);
        await sleep(20);
      }
      stalled.destroy();
    } finally {
      trickling = false;
      await trickle;
      for (const sock of slow) sock.destroy();
    }
    expect(s.lambda.alive).toBe(true);
    expect((await ask(s, "health")).status).toBe(200);
  }, 60_000);
});
