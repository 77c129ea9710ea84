import type { STSClient } from "@aws-sdk/client-sts";
import { describe, expect, it } from "vitest";
import type { Target } from "../src/config.js";
import { MAX_QUOTED_CODE_CHARS } from "../src/errors.js";
import { createExchange, MAX_BODY_BYTES, MAX_LIFETIME_SECONDS } from "../src/exchange.js";
import { silentLogger } from "../src/log.js";
import { createStsSource, type GetWebIdentityToken } from "../src/sts.js";
import { webIdentityTokenPort } from "../src/sts-client.js";
import { classifyStsError } from "../src/sts-errors.js";

/** An error shaped as the AWS SDK throws it for an awsQuery error answer. */
function awsError(name: string, status: number) {
  return Object.assign(new Error(`${name} message`), { name, $metadata: { httpStatusCode: status }, $fault: status >= 500 ? "server" : "client" });
}

/** The port's adapter over a fake `STSClient.send`, which answers `answer(input)`. */
function portOver(answer: (input: { Audience?: string[]; SigningAlgorithm?: string; DurationSeconds?: number }) => Promise<object>): GetWebIdentityToken {
  return webIdentityTokenPort({ send: ((cmd: { input: object }) => answer(cmd.input)) as unknown as STSClient["send"] });
}

describe("STS port (the adapter over the SDK's client)", () => {
  const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";

  it("asks with the given audience, algorithm and duration, and answers the JWT and its expiry", async () => {
    const inputs: unknown[] = [];
    const expiration = new Date(Date.now() + 300_000);
    const port = portOver(async (input) => {
      inputs.push(input);
      return { WebIdentityToken: jwt, Expiration: expiration };
    });
    await expect(port({ audience: "databricks", signingAlgorithm: "ES384", durationSeconds: 300 })).resolves.toEqual({ jwt, expiresAt: expiration.getTime() });
    expect(inputs).toEqual([{ Audience: ["databricks"], SigningAlgorithm: "ES384", DurationSeconds: 300 }]);
  });

  it("refuses an answer without a token", async () => {
    const port = portOver(async () => ({ Expiration: new Date() }));
    await expect(port({ audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300 })).rejects.toMatchObject({ code: "ERR_STS_INVALID_RESPONSE" });
  });

  it("rejects with the SDK's error classified", async () => {
    const port = portOver(async () => {
      throw awsError("AccessDenied", 403);
    });
    await expect(port({ audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300 })).rejects.toMatchObject({ code: "ERR_STS_ACCESS_DENIED", step: "sts" });
  });
});

describe("STS source", () => {
  const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";

  it("asks the port with the configured audience, algorithm and duration", async () => {
    const asked: unknown[] = [];
    const port: GetWebIdentityToken = async (params) => {
      asked.push(params);
      return { jwt, expiresAt: Date.now() + 300_000 };
    };
    const got = await createStsSource({ getWebIdentityToken: port, audience: "databricks", signingAlgorithm: "ES384", durationSeconds: 300, log: silentLogger })();
    expect(got.jwt).toBe(jwt);
    expect(asked).toEqual([{ audience: "databricks", signingAlgorithm: "ES384", durationSeconds: 300 }]);
  });

  it("answers SessionDurationEscalation by asking for less, down to 60 s", async () => {
    const durations: number[] = [];
    const sessionLeft = 70;
    const port = portOver(async (input) => {
      const d = input.DurationSeconds ?? 300;
      durations.push(d);
      if (d > sessionLeft) throw awsError("SessionDurationEscalationException", 403);
      return { WebIdentityToken: jwt, Expiration: new Date(Date.now() + d * 1000) };
    });
    const got = await createStsSource({ getWebIdentityToken: port, audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300, log: silentLogger })();
    expect(durations).toEqual([300, 150, 75, 60]);
    expect(got.durationSeconds).toBe(60);
  });

  it("gives up after 60 s is refused too, as a retryable error", async () => {
    const port: GetWebIdentityToken = async () => {
      throw awsError("SessionDurationEscalation", 403);
    };
    await expect(createStsSource({ getWebIdentityToken: port, audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 60, log: silentLogger })()).rejects.toMatchObject({
      code: "ERR_STS_SESSION_DURATION",
      retryable: true,
    });
  });
});

describe("STS errors", () => {
  it.each([
    ["AccessDenied", 403, "ERR_STS_ACCESS_DENIED", false, "AccessDenied"],
    ["AccessDeniedException", 403, "ERR_STS_ACCESS_DENIED", false, "AccessDenied"],
    ["OutboundWebIdentityFederationDisabled", 403, "ERR_STS_FEDERATION_DISABLED", false, "OutboundWebIdentityFederationDisabled"],
    ["OutboundWebIdentityFederationDisabledException", 403, "ERR_STS_FEDERATION_DISABLED", false, "OutboundWebIdentityFederationDisabled"],
    ["Throttling", 400, "ERR_STS_UNAVAILABLE", true, "Throttling"],
    ["ThrottlingException", 400, "ERR_STS_UNAVAILABLE", true, "Throttling"],
    ["InternalFailure", 500, "ERR_STS_UNAVAILABLE", true, "InternalFailure"],
    ["ValidationError", 400, "ERR_STS_REJECTED", false, "ValidationError"],
    ["SignatureDoesNotMatch", 403, "ERR_STS_CREDENTIALS", false, "SignatureDoesNotMatch"],
    ["InvalidClientTokenId", 403, "ERR_STS_CREDENTIALS", false, "InvalidClientTokenId"],
    ["UnrecognizedClientException", 403, "ERR_STS_CREDENTIALS", false, "UnrecognizedClient"],
    ["ExpiredToken", 403, "ERR_STS_CREDENTIALS", false, "ExpiredToken"],
    ["ExpiredTokenException", 400, "ERR_STS_CREDENTIALS", false, "ExpiredToken"],
  ])("classifies %s (%i) as %s", (name, status, code, retryable, upstream) => {
    const e = classifyStsError(awsError(name, status));
    expect(e).toMatchObject({ code, retryable, upstreamCode: upstream, step: "sts", throttled: upstream === "Throttling" });
    expect(e.hint).toBeTruthy();
  });

  it("refused credentials: the hint names the role session's variables, not the audience", () => {
    for (const name of ["SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken"]) {
      const { hint } = classifyStsError(awsError(name, 403));
      expect(hint).toMatch(/AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN/);
      expect(hint).not.toMatch(/AUDIENCE|SIGNING_ALGORITHM|DURATION/);
    }
  });

  it.each([
    ["Signature expired: 20261129T114400Z is now earlier than 20261129T114500Z (20261129T120000Z - 15 min.)"],
    ["Signature not yet current: 20261129T121600Z is still later than 20261129T121500Z (20261129T120000Z + 15 min.)"],
  ])("a clock more than 15 min off (%s) is retryable: the SDK takes STS's time from the answer", (message) => {
    const e = classifyStsError(Object.assign(awsError("SignatureDoesNotMatch", 403), { message }));
    expect(e).toMatchObject({ code: "ERR_STS_CREDENTIALS", retryable: true, upstreamCode: "SignatureDoesNotMatch", step: "sts", hint: expect.stringMatching(/clock/) });
  });

  it("no credentials at all (the SDK's CredentialsProviderError, nothing sent): ERR_STS_CREDENTIALS, retried, naming the variables", () => {
    // The shape of what @aws-sdk/credential-provider-node throws when every provider came up empty.
    const e = classifyStsError(Object.assign(new Error("Could not load credentials from any providers"), { name: "CredentialsProviderError", tryNextLink: false }));
    expect(e).toMatchObject({ code: "ERR_STS_CREDENTIALS", retryable: true, upstreamCode: "CredentialsProviderError", step: "sts" });
    expect(e.hint).toMatch(/AWS_CONTAINER_CREDENTIALS_FULL_URI/);
  });

  it("classifies network failures as transient", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    expect(classifyStsError(refused)).toMatchObject({ code: "ERR_STS_UNAVAILABLE", retryable: true });
    expect(classifyStsError(Object.assign(new Error("timeout"), { name: "TimeoutError" }))).toMatchObject({ code: "ERR_STS_UNAVAILABLE", retryable: true });
  });
});

describe("Databricks exchange", () => {
  const target: Target = {
    name: "default",
    host: "https://dbc-1.cloud.databricks.com",
    isAccounts: false,
    accountId: undefined,
    clientId: "sp-app-id",
    scope: "all-apis",
    tokenEndpoint: "https://dbc-1.cloud.databricks.com/oidc/v1/token",
  };
  const T0 = Date.UTC(2026, 10, 29);

  function exchangeWith(answer: () => Response | Promise<Response>) {
    const seen: { url: string; init: RequestInit }[] = [];
    const exchange = createExchange({
      fetch: async (url, init) => {
        seen.push({ url, init });
        return answer();
      },
      now: () => T0,
      log: silentLogger,
    });
    return { exchange, seen };
  }

  const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

  it("posts the RFC 8693 form and counts expiry from the request", async () => {
    const { exchange, seen } = exchangeWith(() => json(200, { access_token: "dapi-opaque", token_type: "Bearer", expires_in: 3600, scope: "all-apis" }));
    const t = await exchange(target, { jwt: "the.jwt.here" });
    expect(t).toEqual({ accessToken: "dapi-opaque", tokenType: "Bearer", scope: "all-apis", issuedAt: T0, expiresAt: T0 + 3_600_000 });
    expect(seen[0]?.url).toBe(target.tokenEndpoint);
    const form = new URLSearchParams(seen[0]?.init.body as string);
    expect(Object.fromEntries(form)).toEqual({
      grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
      subject_token: "the.jwt.here",
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
      scope: "all-apis",
      client_id: "sp-app-id",
    });
    expect(seen[0]?.init.method).toBe("POST");
  });

  it("omits client_id for an account-wide policy", async () => {
    const { exchange, seen } = exchangeWith(() => json(200, { access_token: "a", token_type: "Bearer", expires_in: 60 }));
    await exchange({ ...target, clientId: undefined }, { jwt: "j.w.t" });
    expect(new URLSearchParams(seen[0]?.init.body as string).has("client_id")).toBe(false);
  });

  it.each([
    [400, { error: "invalid_grant", error_description: "no matching federation policy" }, "ERR_EXCHANGE_INVALID_GRANT", false, "invalid_grant"],
    [401, { error: "invalid_client", error_description: "unknown client" }, "ERR_EXCHANGE_INVALID_CLIENT", false, "invalid_client"],
    [400, { error: "invalid_scope" }, "ERR_EXCHANGE_REJECTED", false, "invalid_scope"],
    [404, { error_code: "ENDPOINT_NOT_FOUND", message: "no such route" }, "ERR_EXCHANGE_REJECTED", false, "ENDPOINT_NOT_FOUND"],
    [429, { error_code: "REQUEST_LIMIT_EXCEEDED", message: "slow down" }, "ERR_EXCHANGE_UNAVAILABLE", true, "REQUEST_LIMIT_EXCEEDED"],
    [503, { error: "temporarily_unavailable" }, "ERR_EXCHANGE_UNAVAILABLE", true, "temporarily_unavailable"],
  ])("maps %i %o to %s", async (status, body, code, retryable, upstream) => {
    const { exchange } = exchangeWith(() => json(status, body));
    const err = await exchange(target, { jwt: "j.w.t" }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code, retryable, upstreamCode: upstream, step: "exchange", throttled: status === 429 });
    expect((err as { hint?: string }).hint).toBeTruthy();
  });

  it("honours Retry-After on 429, within a bound", async () => {
    const { exchange } = exchangeWith(() => json(429, {}, { "retry-after": "7" }));
    await expect(exchange(target, { jwt: "j.w.t" })).rejects.toMatchObject({ retryAfterMs: 7000 });
    const { exchange: hostile } = exchangeWith(() => json(429, {}, { "retry-after": "999999" }));
    await expect(hostile(target, { jwt: "j.w.t" })).rejects.toMatchObject({ retryAfterMs: 60_000 });
  });

  it("honours Retry-After given as an HTTP date (RFC 9110 §10.2.3), counted from the answer", async () => {
    const at = (ms: number) => new Date(T0 + ms).toUTCString();
    const { exchange } = exchangeWith(() => json(429, {}, { "retry-after": at(7_000) }));
    await expect(exchange(target, { jwt: "j.w.t" })).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE", retryAfterMs: 7_000 });
    const { exchange: overlong } = exchangeWith(() => json(503, { error: "temporarily_unavailable" }, { "retry-after": at(86_400_000) }));
    await expect(overlong(target, { jwt: "j.w.t" })).rejects.toMatchObject({ retryAfterMs: 60_000 });
    // A date already past, or no date at all, asks for no wait: the backoff alone applies.
    for (const value of [at(-5_000), "Wed, 31 Foo 2026 99:99:99 GMT", "soon"]) {
      const { exchange: odd } = exchangeWith(() => json(429, {}, { "retry-after": value }));
      const err = (await odd(target, { jwt: "j.w.t" }).catch((e: unknown) => e)) as { retryAfterMs?: number; code: string };
      expect(err.code).toBe("ERR_EXCHANGE_UNAVAILABLE");
      expect(err.retryAfterMs).toBeUndefined();
    }
  });

  it.each([
    ["HTML", () => new Response("<html><body>502 Bad Gateway</body></html>", { status: 200, headers: { "content-type": "text/html" } })],
    ["truncated JSON", () => new Response('{"access_token": "abc", "expires_in"', { status: 200 })],
    ["no access_token", () => json(200, { token_type: "Bearer", expires_in: 3600 })],
    ["negative expires_in", () => json(200, { access_token: "a", expires_in: -5 })],
    ["zero expires_in", () => json(200, { access_token: "a", expires_in: 0 })],
    ["absent expires_in", () => json(200, { access_token: "a" })],
    ["string expires_in", () => json(200, { access_token: "a", expires_in: "soon" })],
    ["token with a newline", () => json(200, { access_token: "a\nb", expires_in: 60 })],
    ["oversized body", () => new Response("x".repeat(MAX_BODY_BYTES + 1), { status: 200 })],
  ])("refuses a 200 with %s as an invalid response", async (_what, answer) => {
    const { exchange } = exchangeWith(answer);
    await expect(exchange(target, { jwt: "j.w.t" })).rejects.toMatchObject({ code: "ERR_EXCHANGE_INVALID_RESPONSE", step: "exchange", retryable: true });
  });

  it("does not believe an absurd lifetime", async () => {
    const { exchange } = exchangeWith(() => json(200, { access_token: "a", expires_in: 1e300 }));
    expect((await exchange(target, { jwt: "j.w.t" })).expiresAt).toBe(T0 + MAX_LIFETIME_SECONDS * 1000);
  });

  it("times out a slow endpoint", async () => {
    const exchange = createExchange({
      fetch: (_u, init) => new Promise((_, reject) => init.signal?.addEventListener("abort", () => reject(init.signal?.reason))),
      now: () => T0,
      log: silentLogger,
      timeoutMs: 30,
    });
    await expect(exchange(target, { jwt: "j.w.t" })).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE", upstreamCode: "timeout", retryable: true });
  });

  it("reports a refused connection as transient", async () => {
    const exchange = createExchange({
      fetch: async () => {
        throw Object.assign(new TypeError("fetch failed"), { cause: { code: "ECONNREFUSED" } });
      },
      now: () => T0,
      log: silentLogger,
    });
    await expect(exchange(target, { jwt: "j.w.t" })).rejects.toMatchObject({ code: "ERR_EXCHANGE_UNAVAILABLE", upstreamCode: "ECONNREFUSED", retryable: true });
  });

  it("never puts the JWT into an error", async () => {
    const jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcm4ifQ.sig";
    const { exchange } = exchangeWith(() => json(400, { error: "invalid_grant", error_description: `bad token ${jwt}` }));
    const err = (await exchange(target, { jwt }).catch((e: unknown) => e)) as Error;
    expect(err.message).toContain("bad token");
    const { createLogger } = await import("../src/log.js");
    const lines: string[] = [];
    createLogger({ level: "debug", write: (l) => lines.push(l) }).error("x", { error: err });
    expect(lines.join("")).not.toContain(jwt);
  });
});

describe("upstream text quoted in errors (issue 12)", () => {
  const huge = "x".repeat(30_000); // twice this stays under the exchange's 64 KiB body limit
  const target: Target = { name: "default", host: "https://dbc-1.cloud.databricks.com", isAccounts: false, accountId: undefined, clientId: "sp", scope: "all-apis", tokenEndpoint: "https://dbc-1.cloud.databricks.com/oidc/v1/token" };
  it("the exchange's error_description and error code are cut to a few hundred characters", async () => {
    const exchange = createExchange({
      fetch: async () => new Response(JSON.stringify({ error: `invalid_request${huge}`, error_description: `bad${huge}` }), { status: 400, headers: { "content-type": "application/json" } }),
      now: () => 0,
      log: silentLogger,
    });
    const err = (await exchange(target, { jwt: "j.w.t" }).catch((e: unknown) => e)) as { message: string; upstreamCode: string; summary(): string };
    expect(err.message.length).toBeLessThan(600);
    expect(err.message).toMatch(/answered 400: badx+…$/);
    expect(err.upstreamCode.length).toBeLessThanOrEqual(MAX_QUOTED_CODE_CHARS + 1);
    expect(err.summary().length).toBeLessThan(1_500);
  });

  it("an upstream code named like an Object property gets the generic hint, not Object's", async () => {
    for (const code of ["constructor", "toString", "__proto__"]) {
      const exchange = createExchange({ fetch: async () => new Response(JSON.stringify({ error: code }), { status: 400 }), now: () => 0, log: silentLogger });
      const err = (await exchange(target, { jwt: "j.w.t" }).catch((e: unknown) => e)) as { hint: unknown; code: string };
      expect(err).toMatchObject({ code: "ERR_EXCHANGE_REJECTED", hint: "check the target's host, account ID, client ID and scope" });
    }
  });

  it("STS's error message and code are cut the same way", () => {
    const e = classifyStsError(Object.assign(new Error(`Denied${huge}`), { name: `Odd${huge}`, $metadata: { httpStatusCode: 400 } }));
    expect(e.message.length).toBeLessThan(600);
    expect(e.upstreamCode!.length).toBeLessThanOrEqual(MAX_QUOTED_CODE_CHARS + 1);
  });
});
