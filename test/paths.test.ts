/**
 * End-to-end paths no other test reached: credentials STS refuses (the stand-in now checks
 * SigV4 as AWS does), SnapStart's session token and credentials, an HTTP app that failed to
 * build, and SHUTDOWN while a request waits on an upstream that never answers. The built
 * layer's extension under the Lambda emulator, against the stand-ins; the function asks inside
 * its invokes, as in Lambda.
 */
import { cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { stackPerTest } from "./harness.js";
import { logs, ROOT, type Stack } from "./stack.js";

const stack = stackPerTest();
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

type Json = Record<string, unknown>;
/** One request as the function makes it, inside an invoke: status and parsed body. */
async function asked(s: Stack, path: string, headers?: Record<string, string>): Promise<{ status: number; body: Json }> {
  const { result } = await s.lambda.invoke(async () => {
    const r = path.startsWith("/token") ? await s.token(path, headers) : await s.get(path, headers);
    return { status: r.status, body: (await r.json()) as Json };
  });
  return result!;
}

describe("credentials STS refuses", () => {
  it.each([
    ["a wrong secret key", "SignatureDoesNotMatch", { AWS_SECRET_ACCESS_KEY: "not-the-roles-secret" }],
    ["an access key the account does not know", "InvalidClientTokenId", { AWS_ACCESS_KEY_ID: "ASIAUNKNOWNKEY000000" }],
    ["another session's token", "InvalidClientTokenId", { AWS_SESSION_TOKEN: "IQoJb3JpZ2luX2VjEanotherSession" }],
  ])("%s: the 503 and /health name step sts and %s, with a hint", async (_what, code, env) => {
    const s = await stack({ env });
    expect(await s.lambda.init).toMatchObject({ ok: true });
    // The function shows the session token it has (the stack sends the environment's).
    const answer = await asked(s, "/token");
    expect(answer.status).toBe(503);
    expect(answer.body).toMatchObject({ error: "token_unavailable", step: "sts", upstream_code: code, hint: expect.any(String) });
    expect(answer.body).toMatchObject({ code: "ERR_STS_CREDENTIALS", hint: expect.stringMatching(/credentials/) });
    expect(String(answer.body.message)).toMatch(new RegExp(`^no valid token for target default: sts ${code}: `));
    // STS said so, and nothing reached Databricks.
    expect(s.sts.calls.map((c) => [c.status, c.error])).toContainEqual([403, code]);
    expect(s.db.exchanges).toHaveLength(0);
    const health = await asked(s, "/health");
    expect(health.body).toMatchObject({ status: "degraded", targets: { default: { state: "unavailable", last_error: { step: "sts", upstream_code: code } } } });
  });

  // SignatureDoesNotMatch and InvalidClientTokenId are the credentials' fault (or the clock's, for
  // "Signature expired"), not the audience's, algorithm's or duration's.
  it("the hint for refused credentials names the credentials, not the audience", async () => {
    const s = await stack({ env: { AWS_SECRET_ACCESS_KEY: "not-the-roles-secret" } });
    await s.lambda.init;
    const answer = await asked(s, "/token");
    expect(String(answer.body.hint)).toMatch(/credential/i);
    expect(String(answer.body.hint)).toMatch(/AWS_SECRET_ACCESS_KEY/);
    expect(String(answer.body.hint)).not.toMatch(/AUDIENCE|SIGNING_ALGORITHM/);
  });
});

describe("SnapStart", () => {
  it("no credentials in the environment: the SDK gets them from the container endpoint, and the token route takes AWS_CONTAINER_AUTHORIZATION_TOKEN", async () => {
    const s = await stack({ env: { AWS_LAMBDA_INITIALIZATION_TYPE: "snap-start" } });
    expect(await s.lambda.init).toMatchObject({ ok: true });
    const env = s.lambda.env;
    // As Lambda gives a SnapStart function: nothing to freeze into the snapshot.
    expect([env.AWS_ACCESS_KEY_ID, env.AWS_SECRET_ACCESS_KEY, env.AWS_SESSION_TOKEN]).toEqual([undefined, undefined, undefined]);
    const containerToken = env.AWS_CONTAINER_AUTHORIZATION_TOKEN!;
    expect(env.AWS_CONTAINER_CREDENTIALS_FULL_URI).toMatch(/^http:\/\/127\.0\.0\.1:\d+\//);

    const ok = await asked(s, "/token", { "x-aws-session-token": containerToken });
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ access_token: expect.any(String), token_type: "Bearer", target: "default" });
    // The extension fetched the role's credentials with the token, and signed with them.
    expect(s.lambda.credentialRequests.length).toBeGreaterThan(0);
    expect(s.lambda.credentialRequests.every((r) => r.authorized)).toBe(true);
    expect(s.sts.calls.filter((c) => c.ok).map((c) => c.accessKeyId)).toEqual([s.sts.settings.credentials[0]!.accessKeyId]);

    expect((await asked(s, "/token", { "x-aws-session-token": "" })).status).toBe(401);
    expect((await asked(s, "/token", { "x-aws-session-token": `${containerToken}x` })).status).toBe(403);
    // The README's curl sends $AWS_SESSION_TOKEN, which a SnapStart function does not have.
    expect((await asked(s, "/token", { "x-aws-session-token": "IQoJb3JpZ2luX2VjEOv//////////test-session-token" })).status).toBe(403);
  });
});

describe("an HTTP app that fails to build", () => {
  it("answers every request 500 internal, keeps fetching tokens, and exits 0 on SHUTDOWN", async () => {
    // The layer as built, but for the lazily loaded app module, which throws when imported.
    const dir = await mkdtemp(join(tmpdir(), "dtb-broken-app-"));
    dirs.push(dir);
    await cp(join(ROOT, "dist", "layer"), dir, { recursive: true });
    await writeFile(join(dir, "databricks-token-broker", "lazy", "app.mjs"), 'throw new Error("the app module is broken");\n');
    const s = await stack({ command: join(dir, "extensions", "databricks-token-broker") });
    expect(await s.lambda.init).toMatchObject({ ok: true });
    for (const path of ["/token", "/health", "/metadata", "/nowhere"]) {
      const answer = await asked(s, path);
      expect([path, answer.status, answer.body]).toEqual([path, 500, { error: "internal", message: "internal error" }]);
    }
    expect(logs(s.lambda)).toContainEqual(expect.objectContaining({ level: "error", msg: "could not build the HTTP app; answering every request 500" }));
    // The token work goes on without the app: the prefetch got one.
    expect(s.db.exchanges.filter((e) => e.ok)).toHaveLength(1);
    expect(s.lambda.alive).toBe(true);
    expect(await s.lambda.shutdown()).toMatchObject({ code: 0, killed: false });
  });
});

describe("SHUTDOWN while a request waits", () => {
  it("the function times out waiting on an STS that never answers; the reset's SHUTDOWN still ends the extension with 0 in time", async () => {
    const s = await stack({
      // STS never answers within anything here; the request may wait 10 s; the function only 2 s.
      before: ({ sts }) => sts.setFault({ kind: "delay", ms: 60_000 }),
      lambda: { functionTimeoutMs: 2_000 },
    });
    expect(await s.lambda.init).toMatchObject({ ok: true });
    let answer: { status: number } | { error: string } | undefined;
    const r = await s.lambda.invoke(async () => {
      answer = await s.token().then(
        (res) => ({ status: res.status }),
        (err: unknown) => ({ error: String(err) }),
      );
    });
    // Lambda resets an environment whose invoke timed out: SHUTDOWN with reason timeout.
    expect(r.timedOut).toBe(true);
    expect(r.shutdown).toMatchObject({ reason: "timeout", code: 0, killed: false });
    expect(s.lambda.alive).toBe(false);
    // The waiting request ended with the process (an answer or a closed connection), not later.
    await expect.poll(() => answer, { timeout: 5_000 }).toBeDefined();
    expect(logs(s.lambda)).toContainEqual(expect.objectContaining({ msg: "shutting down", reason: "timeout" }));
    expect(s.db.exchanges).toHaveLength(0);
  });
});
