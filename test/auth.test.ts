/**
 * The session-token check is made in constant time: whatever was sent — empty, one character
 * off, a prefix, a thousand characters — the comparison that decides is `timingSafeEqual` over
 * two equal-length digests, with no early exit on length or content before it. Timing itself is
 * not measured (a benchmark's job); what is shown is that nothing but that comparison decides.
 */
import fc from "fast-check";
import { afterAll, describe, expect, it, vi } from "vitest";

const compared = vi.hoisted(() => [] as { a: number; b: number; result: boolean }[]);
vi.mock("node:crypto", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:crypto")>();
  return {
    ...real,
    timingSafeEqual: (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => {
      const result = real.timingSafeEqual(a, b);
      compared.push({ a: a.byteLength, b: b.byteLength, result });
      return result;
    },
  };
});

const { buildApp } = await import("../src/app.js");
const { parseConfig } = await import("../src/config.js");
const { silentLogger } = await import("../src/log.js");

const SESSION = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKENwith/slashes+and=padding";
const parsed = parseConfig({ DATABRICKS_TOKEN_BROKER_ENABLED: "true", DATABRICKS_HOST: "https://dbc-1234.cloud.databricks.com", AWS_REGION: "us-east-1" });
if (!parsed.enabled) throw new Error("config");
const expiresAt = Date.now() + 3_600_000;
const app = buildApp({
  config: parsed.config,
  cache: {
    has: (name: string) => name === "default",
    health: () => ({}),
    get: async () => ({ accessToken: "dapi-test", tokenType: "Bearer", scope: "all-apis", issuedAt: Date.now(), expiresAt }),
  },
  sessionToken: SESSION,
  log: silentLogger,
});
afterAll(() => app.close());

const ask = (value: string) => app.inject({ url: "/token", headers: { "x-aws-session-token": value } });

describe("session token comparison", () => {
  it("decides every present token by one timingSafeEqual over two 32-byte digests", async () => {
    const candidates = fc.oneof(
      fc.nat({ max: SESSION.length - 1 }).map((i) => SESSION.slice(0, i) + String.fromCharCode(SESSION.charCodeAt(i) ^ 1) + SESSION.slice(i + 1)),
      fc.integer({ min: 1, max: SESSION.length - 1 }).map((i) => SESSION.slice(0, i)),
      fc.string({ unit: "binary-ascii", minLength: 1, maxLength: 1000 }).filter((v) => /^[\x21-\x7e]+$/.test(v)),
      fc.constantFrom(`${SESSION}x`, SESSION.toLowerCase(), SESSION),
    );
    await fc.assert(
      fc.asyncProperty(candidates, async (value) => {
        compared.length = 0;
        const r = await ask(value);
        expect(r.statusCode).toBe(value === SESSION ? 200 : 403);
        expect(compared).toEqual([{ a: 32, b: 32, result: value === SESSION }]);
      }),
      { numRuns: 300 },
    );
  });

  it("a missing token is refused (401) without any comparison", async () => {
    compared.length = 0;
    expect((await app.inject({ url: "/token" })).statusCode).toBe(401);
    expect(compared).toEqual([]);
  });
});
