/**
 * The listener answers on loopback only (SPEC §5). Shown from the kernel's own table of the
 * extension process's listening sockets (/proc/net/tcp, /proc/net/tcp6, matched to the process
 * through the socket inodes in /proc/<pid>/fd): every address bound is a loopback address,
 * none is a wildcard, and none is an address of this machine's other interfaces — so no packet
 * sent to any of those can reach it. No traffic is ever sent anywhere but loopback.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { networkInterfaces } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ask, logLines } from "./harness.js";
import { open } from "./raw-http.js";
import { type Stack, startStack } from "./stack.js";

interface Listening {
  address: string;
  port: number;
  family: 4 | 6;
  inode: string;
}

/** Kernel hex (little-endian per 32-bit word) to a textual address. */
function decodeAddress(hex: string, family: 4 | 6): string {
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = words.flatMap((w) => (w.match(/../g) ?? []).reverse().map((b) => Number.parseInt(b, 16)));
  if (family === 4) return bytes.join(".");
  const groups = Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16));
  // ::ffff:a.b.c.d, as the kernel shows IPv4 on a dual-stack socket.
  if (groups.slice(0, 5).every((g) => g === "0") && groups[5] === "ffff") return `::ffff:${bytes.slice(12).join(".")}`;
  return groups.join(":").replace(/(^|:)0(:0)+(:|$)/, "::");
}

/** Every socket in LISTEN state (0A) in /proc/net/tcp{,6}. */
function listeningSockets(): Listening[] {
  const out: Listening[] = [];
  for (const [file, family] of [["/proc/net/tcp", 4], ["/proc/net/tcp6", 6]] as const) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue; // no IPv6 in this kernel
    }
    for (const line of text.trim().split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      const [addr, port] = f[1]!.split(":");
      if (f[3] !== "0A") continue;
      out.push({ address: decodeAddress(addr!, family), port: Number.parseInt(port!, 16), family, inode: f[9]! });
    }
  }
  return out;
}

/** Socket inodes the process holds open. */
function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // closed between the listing and the read
    }
  }
  return inodes;
}

const isLoopback = (a: string) => /^127\./.test(a) || a === "::1" || /^::ffff:127\./.test(a);

let s: Stack;
beforeAll(async () => {
  s = await startStack();
  const init = await s.lambda.init;
  if (!init.ok) throw new Error(`init ${init.status}: ${JSON.stringify(init)}`);
});
afterAll(async () => {
  await s?.close();
});

describe("reading the kernel's socket table", () => {
  it("decodes the addresses as /proc/net/tcp{,6} spell them, wildcards included", () => {
    expect(decodeAddress("0100007F", 4)).toBe("127.0.0.1");
    expect(decodeAddress("00000000", 4)).toBe("0.0.0.0");
    expect(decodeAddress("0200000A", 4)).toBe("10.0.0.2");
    expect(decodeAddress("00000000000000000000000001000000", 6)).toBe("::1");
    expect(decodeAddress("00000000000000000000000000000000", 6)).toBe("::");
    expect(decodeAddress("0000000000000000FFFF00000100007F", 6)).toBe("::ffff:127.0.0.1");
    expect(decodeAddress("000080FE00000000FF00FC00010000FE", 6)).toBe("fe80::fc:ff:fe00:1");
    expect(isLoopback("0.0.0.0") || isLoopback("::") || isLoopback("10.0.0.2")).toBe(false);
  });
});

describe("the listener", () => {
  it("is bound to loopback addresses only, as the kernel reports the extension's own sockets", () => {
    const pid = s.lambda.pid!;
    const mine = socketInodes(pid);
    const listening = listeningSockets().filter((l) => mine.has(l.inode));
    // The extension listens on its port, and on nothing else.
    expect(listening.length).toBeGreaterThan(0);
    expect(new Set(listening.map((l) => l.port))).toEqual(new Set([s.port]));
    expect(listening.map((l) => l.address).filter((a) => !isLoopback(a))).toEqual([]);
    expect(listening.map((l) => l.address)).toContain("127.0.0.1");
    // No wildcard: a socket on 0.0.0.0 or :: would take packets for every address of the machine.
    expect(listening.map((l) => l.address).filter((a) => a === "0.0.0.0" || a === "::")).toEqual([]);

    // The machine's other addresses, none of which any bound address is.
    const others = Object.values(networkInterfaces())
      .flat()
      .filter((i) => i !== undefined && !i.internal)
      .map((i) => i!.address.replace(/%.*$/, ""));
    for (const l of listening) expect(others).not.toContain(l.address);

    // The process said the same when it started listening.
    const said = logLines(s).find((l) => l.msg === "listening");
    expect(said?.addresses).toEqual(expect.arrayContaining([`127.0.0.1:${s.port}`]));
    for (const a of said?.addresses as string[]) expect(a).toMatch(/^(127\.\d+\.\d+\.\d+|\[::1\]):\d+$/);
  });

  it("answers on ::1 as well where the host has IPv6 loopback, on the same port", async (ctx) => {
    const probe = net.createServer();
    const hasV6 = await new Promise<boolean>((resolve) => {
      probe.once("error", () => resolve(false));
      probe.listen(0, "::1", () => probe.close(() => resolve(true)));
    });
    if (!hasV6) ctx.skip();
    const said = logLines(s).find((l) => l.msg === "listening");
    expect(said?.addresses).toEqual([`127.0.0.1:${s.port}`, `[::1]:${s.port}`]);
    // Asked inside an invoke, as the function would: between invokes the environment is frozen.
    const overIpv6 = () =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        http
          .get({ host: "::1", port: s.port, path: "/health" }, (r) => {
            let body = "";
            r.on("data", (c: Buffer) => (body += c));
            r.on("end", () => resolve({ status: r.statusCode ?? 0, body }));
          })
          .on("error", reject);
      });
    const { result: res } = await s.lambda.invoke(overIpv6);
    expect(res!.status).toBe(200);
    expect(JSON.parse(res!.body)).toBeTypeOf("object");
  });

  it("answers on 127.0.0.1", async () => {
    await s.lambda.invoke(async () => {
      expect((await ask(s, "health")).status).toBe(200);
      const sock = await open(s.port);
      expect(sock.remoteAddress).toBe("127.0.0.1");
      expect(sock.localAddress).toMatch(/^127\./);
      sock.destroy();
    });
  });
});
