/**
 * The function's environment is the extension's environment (issue 12, items 3, 4, 10, 11):
 * Node.js variables meant for the function must not weaken the extension, and URL variables
 * must not send the signed STS request in clear text nor echo a password. Each runs the built
 * layer under the Lambda emulator; the stack's leak scan runs on every one.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer, type Server as TlsServer } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stackPerTest } from "./harness.js";
import { logs, ROOT, SESSION_TOKEN, type Stack } from "./stack.js";

const stack = stackPerTest();
const P = "DATABRICKS_TOKEN_BROKER_";

/** The variables of the extension's process as it was started (the launcher `exec`s Node.js). */
function startEnvironment(s: Stack): Map<string, string> {
  const raw = readFileSync(`/proc/${s.lambda.pid!}/environ`, "utf8");
  return new Map(raw.split("\0").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
}

const tokenStatus = async (s: Stack) => (await s.lambda.invoke(async () => (await s.token()).status)).result;

describe("NODE_DEBUG on the function (item 3)", () => {
  it("NODE_DEBUG and NODE_DEBUG_NATIVE do not reach the extension: no debug output, no session token on stderr", async () => {
    const s = await stack({ env: { NODE_DEBUG: "http,https,net,tls,fetch,undici", NODE_DEBUG_NATIVE: "INSPECTOR_SERVER,PLATFORM_VERBOSE" } });
    expect(await s.lambda.init).toMatchObject({ ok: true });
    expect(await tokenStatus(s)).toBe(200);
    expect(s.sts.calls.filter((c) => c.ok)).toHaveLength(1);
    expect(await s.leaks()).toEqual([]);
    expect(s.lambda.stderr.join("\n")).not.toContain(SESSION_TOKEN);
    // Node.js's debug lines look like "HTTP 1234: ..." / "NET 1234: ...".
    expect(s.lambda.stderr.filter((l) => /^[A-Z]+ \d+: /.test(l))).toEqual([]);
    // NODE_DEBUG_NATIVE prints nothing on this path to test by; the process must not have it.
    const env = startEnvironment(s);
    expect(env.has("NODE_DEBUG")).toBe(false);
    expect(env.has("NODE_DEBUG_NATIVE")).toBe(false);
  });
});

/** A CA and a certificate for 127.0.0.1 it signed, made with openssl for this run. */
interface Pki {
  dir: string;
  caPath: string;
  key: string;
  cert: string;
}

function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), "broker-tls-"));
  const at = (f: string) => join(dir, f);
  const openssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=broker test CA", "-keyout", at("ca.key"), "-out", at("ca.pem"));
  openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", at("leaf.key"), "-out", at("leaf.csr"));
  writeFileSync(at("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  openssl("x509", "-req", "-in", at("leaf.csr"), "-CA", at("ca.pem"), "-CAkey", at("ca.key"), "-CAcreateserial", "-days", "1", "-extfile", at("leaf.ext"), "-out", at("leaf.pem"));
  return { dir, caPath: at("ca.pem"), key: readFileSync(at("leaf.key"), "utf8"), cert: readFileSync(at("leaf.pem"), "utf8") };
}

/**
 * TLS in front of a plain-http stand-in, with a certificate no default trust store knows. It
 * listens before the stack starts (the extension's variables name its URL); `upstream` is
 * set once the stand-in is up. `forwarded` counts connections that sent anything past the
 * handshake: a client that verifies the certificate hangs up before its request.
 */
interface TlsFront {
  readonly url: string;
  upstream: number;
  readonly forwarded: number;
  close(): Promise<void>;
}

async function tlsFront(pki: Pki): Promise<TlsFront> {
  let forwarded = 0;
  let upstream = 0;
  const server: TlsServer = createTlsServer({ key: pki.key, cert: pki.cert }, (socket) => {
    socket.on("error", () => {});
    socket.once("data", (first: Buffer) => {
      forwarded += 1;
      const up = connect(upstream, "127.0.0.1");
      up.on("error", () => socket.destroy());
      up.write(first);
      socket.pipe(up).pipe(socket);
    });
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    set upstream(port: number) {
      upstream = port;
    },
    get upstream() {
      return upstream;
    },
    get forwarded() {
      return forwarded;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
      }),
  };
}

describe("NODE_TLS_REJECT_UNAUTHORIZED=0 on the function (item 4)", () => {
  let pki: Pki;
  let bareDir: string;
  /** An image that starts the bundle itself, without the layer's launcher and its unsets. */
  let bare: string;
  const fronts: TlsFront[] = [];
  beforeAll(() => {
    pki = makePki();
    bareDir = mkdtempSync(join(tmpdir(), "broker-bare-"));
    mkdirSync(join(bareDir, "extensions"));
    bare = join(bareDir, "extensions", "databricks-token-broker");
    writeFileSync(bare, `#!/bin/sh\nexec "${process.execPath}" "${join(ROOT, "dist", "layer", "databricks-token-broker", "index.cjs")}"\n`);
    chmodSync(bare, 0o755);
  });
  afterAll(async () => {
    await Promise.all(fronts.map((f) => f.close()));
    rmSync(pki.dir, { recursive: true, force: true });
    rmSync(bareDir, { recursive: true, force: true });
  });

  /** A stack whose token endpoint and STS the extension reaches over TLS, through the fronts. */
  async function tlsStack(env: Record<string, string>, command?: string) {
    const db = await tlsFront(pki);
    const sts = await tlsFront(pki);
    fronts.push(db, sts);
    const s = await stack({
      ...(command ? { command } : {}),
      env: { [`${P}TOKEN_ENDPOINT`]: `${db.url}/oidc/v1/token`, AWS_ENDPOINT_URL_STS: sts.url, [`${P}WAIT_SECONDS`]: "1", ...env },
      before: (standIns) => {
        db.upstream = Number(new URL(standIns.db.url).port);
        sts.upstream = Number(new URL(standIns.sts.url).port);
      },
    });
    return { s, db, sts };
  }

  /** The broker refused both TLS peers: no token, and neither stand-in saw a request. */
  async function expectRefused({ s, db, sts }: Awaited<ReturnType<typeof tlsStack>>) {
    expect(await s.lambda.init).toMatchObject({ ok: true });
    expect(await tokenStatus(s)).toBe(503);
    expect(s.sts.calls).toHaveLength(0);
    expect(s.db.exchanges).toHaveLength(0);
    expect(db.forwarded + sts.forwarded).toBe(0);
    // Node.js warns once it makes a TLS connection with verification off.
    expect([...s.lambda.stdout, ...s.lambda.stderr].filter((l) => /insecure by disabling certificate verification/.test(l))).toEqual([]);
  }

  it("through the layer's launcher: the extension never sees it, and refuses an unknown certificate", async () => {
    const t = await tlsStack({ NODE_TLS_REJECT_UNAUTHORIZED: "0" });
    expect(await t.s.lambda.init).toMatchObject({ ok: true });
    expect(startEnvironment(t.s).has("NODE_TLS_REJECT_UNAUTHORIZED")).toBe(false);
    await expectRefused(t);
  });

  it("started without the launcher (a custom image): the extension still refuses an unknown certificate", async () => {
    const t = await tlsStack({ NODE_TLS_REJECT_UNAUTHORIZED: "0", HOME: "/tmp" }, bare);
    await expectRefused(t);
    // Said once, with the way to trust a private CA.
    expect(logs(t.s.lambda).filter((l) => /NODE_TLS_REJECT_UNAUTHORIZED/.test(String(l.msg)))).toEqual([
      expect.objectContaining({ level: "warn", msg: expect.stringContaining("NODE_EXTRA_CA_CERTS") }),
    ]);
  });

  it("NODE_EXTRA_CA_CERTS still applies: a private CA's certificate is trusted, for STS and the exchange", async () => {
    const t = await tlsStack({ NODE_TLS_REJECT_UNAUTHORIZED: "0", NODE_EXTRA_CA_CERTS: pki.caPath });
    expect(await t.s.lambda.init).toMatchObject({ ok: true });
    expect(await tokenStatus(t.s)).toBe(200);
    expect(t.s.sts.calls.filter((c) => c.ok)).toHaveLength(1);
    expect(t.s.db.exchanges.filter((e) => e.ok)).toHaveLength(1);
    expect(t.db.forwarded).toBeGreaterThan(0);
    expect(t.sts.forwarded).toBeGreaterThan(0);
  });
});

describe("URL variables (items 10 and 11)", () => {
  it("AWS_ENDPOINT_URL_STS in plain http off loopback fails the init, naming the variable, before any STS call", async () => {
    const s = await stack({ env: { AWS_ENDPOINT_URL_STS: "http://sts.example.com" } });
    expect(await s.lambda.init).toMatchObject({ ok: false, status: "failed" });
    const message = (s.lambda.initErrors[0]?.body as { errorMessage: string }).errorMessage;
    expect(message).toMatch(/AWS_ENDPOINT_URL_STS: must use https/);
    expect(s.sts.calls).toHaveLength(0);
  });

  it("DATABRICKS_HOST with a user name and password fails the init, and the password is in no log line or report", async () => {
    const password = "Tr0ub4dor-and-3-more";
    const s = await stack({ env: { DATABRICKS_HOST: `https://admin:${password}@dbc-1.cloud.databricks.com` } });
    s.secrets.add(password);
    expect(await s.lambda.init).toMatchObject({ ok: false, status: "failed" });
    const message = (s.lambda.initErrors[0]?.body as { errorMessage: string }).errorMessage;
    expect(message).toMatch(/DATABRICKS_HOST: must not carry a user name or password/);
    await s.lambda.exited;
    expect(await s.leaks()).toEqual([]);
  });
});
