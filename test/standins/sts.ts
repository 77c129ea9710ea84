// Loopback stand-in for AWS STS GetWebIdentityToken, spoken to by the real @aws-sdk/client-sts
// and boto3 (both use the awsQuery protocol for STS: form-encoded POST, XML answers; botocore
// 1.44.8's model says `"protocols": ["query"]`). Every request must carry a valid SigV4
// signature by a key the stand-in knows (sigv4.ts), as AWS checks it. It is also the JWT
// issuer: it publishes OIDC discovery and a JWKS at its own base URL, so a relying party can
// verify what it signs. The shared loopback/fault machinery lives here too; the Databricks
// stand-in reuses it.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { randomUUID } from "node:crypto";
import {
  SignJWT,
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  type CryptoKey,
  type JWK,
  type JWTPayload,
} from "jose";
import { KNOWN_CREDENTIALS } from "./credentials.js";
import { type AwsCredential, verifySigV4 } from "./sigv4.js";

// ---------------------------------------------------------------------------------------------
// Shared machinery

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void>;

export interface Loopback {
  readonly port: number;
  readonly url: string;
  /** Stop listening and cut open connections: new connections get ECONNREFUSED. */
  refuse(): Promise<void>;
  /** Listen again on the same port. */
  accept(): Promise<void>;
  close(): Promise<void>;
}

export async function listenLoopback(handler: Handler): Promise<Loopback> {
  const server = http.createServer((req, res) => {
    handler(req, res).catch((err: unknown) => {
      // A stand-in bug must show up in the test, not as a hung request.
      if (res.headersSent) res.destroy();
      else res.writeHead(500, { "content-type": "text/plain" }).end(`stand-in failure: ${String(err)}`);
    });
  });
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
  const stop = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      // Keep-alive sockets would otherwise keep serving a client that pooled them.
      server.closeAllConnections();
    });
  await listen(0);
  const port = (server.address() as AddressInfo).port;
  let listening = true;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    async refuse() {
      if (!listening) return;
      listening = false;
      await stop();
      // Let in-process clients see their pooled sockets close, so their next try is refused, not reset.
      await sleep(25);
    },
    async accept() {
      if (listening) return;
      await listen(port);
      listening = true;
    },
    async close() {
      if (!listening) return;
      listening = false;
      await stop();
    },
  };
}

/** A token bucket's shape: `burst` calls at once, then `perSecond` (how AWS and Databricks rate-limit API calls). */
export interface RateLimit {
  perSecond: number;
  burst: number;
}

/**
 * A token bucket per `RateLimit`, read afresh on every call so a test may change or remove it
 * at runtime; a refused call takes no token.
 */
export class TokenBucket {
  #limit: RateLimit | undefined;
  #tokens = 0;
  #at = 0;
  constructor(readonly now: () => number) {}

  /** 0 when the call may go ahead (a token taken), else the ms until the next token. */
  take(limit: RateLimit | undefined): number {
    if (!limit) return 0;
    const now = this.now();
    if (limit !== this.#limit) {
      this.#limit = limit;
      this.#tokens = limit.burst;
      this.#at = now;
    }
    this.#tokens = Math.min(limit.burst, this.#tokens + ((now - this.#at) / 1000) * limit.perSecond);
    this.#at = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.#tokens) / limit.perSecond) * 1000);
  }
}

/** Faults that do not depend on the protocol being imitated. `delayMs` delays the faulty answer. */
export type TransportFault =
  /** Answer normally, but only after `ms`. */
  | { kind: "delay"; ms: number }
  /** Send the status line, headers (with the full Content-Length) and part of the body, then cut the socket. */
  | { kind: "drop"; status?: number; afterBytes?: number; delayMs?: number }
  /** Cut the socket without answering at all. */
  | { kind: "reset"; delayMs?: number }
  /** Send the status line, headers (with the full Content-Length) and part of the body, then nothing: the socket stays open. */
  | { kind: "stall"; status?: number; afterBytes?: number; delayMs?: number }
  /** Answer exactly this (HTML error pages, truncated or oversized bodies, odd JSON, ...). */
  | {
      kind: "raw";
      status: number;
      body: string | Uint8Array;
      contentType?: string;
      headers?: Record<string, string>;
      delayMs?: number;
    };

/** Faults apply to the next requests in order; `times` defaults to "until cleared" for set(), 1 for add(). */
export class FaultPlan<F> {
  #queue: { fault: F; left: number }[] = [];
  set(fault: F, times = Number.POSITIVE_INFINITY): void {
    this.#queue = [{ fault, left: times }];
  }
  add(fault: F, times = 1): void {
    this.#queue.push({ fault, left: times });
  }
  clear(): void {
    this.#queue = [];
  }
  get pending(): number {
    return this.#queue.reduce((n, f) => n + f.left, 0);
  }
  take(): F | undefined {
    const head = this.#queue[0];
    if (!head) return undefined;
    if (--head.left <= 0) this.#queue.shift();
    return head.fault;
  }
}

export const sleep = (ms: number) =>
  new Promise<void>((resolve) => {
    // Unref'd so a long injected delay never holds the test process open.
    setTimeout(resolve, ms).unref();
  });

/**
 * Plays a drop, reset or raw fault. `sample` is what the truncated body of a drop starts with, so
 * the client sees a plausible beginning before the cut.
 */
export async function playTransportFault(
  res: http.ServerResponse,
  fault: Exclude<TransportFault, { kind: "delay" }>,
  sample: { contentType: string; body: string },
): Promise<void> {
  if (fault.delayMs) await sleep(fault.delayMs);
  if (res.destroyed) return;
  switch (fault.kind) {
    case "reset":
      res.socket?.destroy();
      return;
    case "drop":
    case "stall": {
      const body = Buffer.from(sample.body);
      const cut = Math.min(fault.afterBytes ?? Math.floor(body.length / 2), body.length - 1);
      res.writeHead(fault.status ?? 200, {
        "content-type": sample.contentType,
        "content-length": String(body.length),
      });
      // A stall leaves the socket open: only the client's own timeout can end the call.
      res.write(body.subarray(0, Math.max(cut, 0)), () => (fault.kind === "drop" ? res.socket?.destroy() : undefined));
      return;
    }
    case "raw":
      res.writeHead(fault.status, {
        "content-type": fault.contentType ?? "text/html",
        ...fault.headers,
      });
      res.end(fault.body);
      return;
  }
}

export async function readBody(req: http.IncomingMessage, limit = 1 << 20): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

export function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "application/json", ...headers }).end(JSON.stringify(body));
}

// ---------------------------------------------------------------------------------------------
// STS

export type SigningAlgorithm = "RS256" | "ES384";
export const SIGNING_ALGORITHMS: readonly SigningAlgorithm[] = ["RS256", "ES384"];
export const DEFAULT_ROLE_ARN = "arn:aws:iam::123456789012:role/broker-test";
export const STS_CLAIMS_NAMESPACE = "https://sts.amazonaws.com/";
const XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/";
const API_VERSION = "2011-06-15";

/** Read on every request, so tests may change them at runtime through `sts.settings`. */
export interface StsSettings {
  /** The caller's role; goes into `sub` and `principal_id`. */
  roleArn: string;
  accountId: string;
  /** Region the endpoint serves; SigV4 credential scopes for another region are refused, as AWS does. */
  region: string;
  /** Adds `lambda_source_function_arn`, as STS does for calls from a Lambda function. */
  lambdaFunctionArn?: string;
  /** What GetCallerIdentity answers as `Arn`; default the assumed-role session of `roleArn`. */
  callerArn?: string;
  /** Outbound identity federation enabled for the account. */
  enabled: boolean;
  /** End of the caller's session (ms); a token outliving it is a SessionDurationEscalation. */
  sessionExpiresAt?: number;
  /** Imitates the IAM policy conditions `sts:IdentityTokenAudience` and `sts:DurationSeconds`. */
  allow?: { audiences?: string[]; maxDurationSeconds?: number };
  /**
   * The account's keys: a request must be SigV4-signed with one of them (and carry its session
   * token, if it has one), else it is refused as AWS refuses it. Default: KNOWN_CREDENTIALS.
   */
  credentials: AwsCredential[];
  /**
   * GetWebIdentityToken calls beyond this token bucket are answered `Throttling` (400, "Rate
   * exceeded", no Retry-After), as STS answers a caller over its quota. Default: none.
   */
  rateLimit?: RateLimit;
}

export interface StsOptions extends Partial<StsSettings> {
  /** Wall clock in ms (default Date.now): token times, `calls[].time`, the Date header and the SigV4 time check. */
  now?: () => number;
}

/** A fault an AWS query-protocol stand-in (STS, IAM) can play: a transport fault or an AWS error answer. */
export type AwsFault =
  | TransportFault
  | { kind: "error"; code: string; status: number; message?: string; type?: "Sender" | "Receiver"; delayMs?: number };
/**
 * STS's faults: an AWS one, or "patch": sign a fresh JWT as usual, then change the answer's
 * elements (a string replaces one, `undefined` leaves it out). A fresh JWT per answer, as STS
 * gives, where a "raw" answer would hand out one JWT again and again.
 */
export type StsFault = AwsFault | { kind: "patch"; fields: { WebIdentityToken?: string | undefined; Expiration?: string | undefined }; delayMs?: number };

/**
 * Plays the next planned fault of an AWS stand-in. Returns true when the fault answered the
 * request (an error, or a transport fault given `body` as the answer it cuts short), false
 * when the request goes on (no fault, or only a delay).
 */
export async function playAwsFault(
  fault: AwsFault | undefined,
  call: { fault?: string; status: number },
  res: http.ServerResponse,
  fail: (status: number, code: string, message: string, type?: "Sender" | "Receiver") => void,
  body: string,
): Promise<boolean> {
  if (!fault) return false;
  if (fault.kind === "delay") {
    await sleep(fault.ms);
    return false;
  }
  call.fault = fault.kind;
  if (fault.kind === "error") {
    if (fault.delayMs) await sleep(fault.delayMs);
    fail(fault.status, fault.code, fault.message ?? `Injected ${fault.code}`, fault.type);
    return true;
  }
  call.status = fault.kind === "raw" ? fault.status : fault.kind === "drop" || fault.kind === "stall" ? (fault.status ?? 200) : 0;
  await playTransportFault(res, fault, { contentType: "text/xml", body });
  return true;
}

export interface StsCall {
  time: number;
  action?: string;
  audience: string[];
  signingAlgorithm?: string;
  durationSeconds?: number;
  tags: Record<string, string>;
  /** From the SigV4 credential scope. */
  accessKeyId?: string;
  status: number;
  ok: boolean;
  /** Error code answered, if any. */
  error?: string;
  /** Fault that shaped the answer, if any. */
  fault?: StsFault["kind"];
}

export interface StsJwtClaims extends JWTPayload {
  iss: string;
  sub: string;
  aud: string | string[];
  iat: number;
  exp: number;
  jti: string;
  [STS_CLAIMS_NAMESPACE]: {
    aws_account: string;
    source_region: string;
    principal_id: string;
    lambda_source_function_arn?: string;
    request_tags?: Record<string, string>;
  };
}

export interface IssuedJwt {
  token: string;
  alg: SigningAlgorithm;
  kid: string;
  claims: StsJwtClaims;
  expiration: Date;
}

export interface StsStandIn {
  /** Endpoint for `new STSClient({ endpoint })` or `AWS_ENDPOINT_URL_STS`. */
  readonly url: string;
  /** The `iss` of every token; OIDC discovery lives under it. */
  readonly issuer: string;
  readonly port: number;
  readonly settings: StsSettings;
  /** The stand-in's clock (the `now` option). */
  readonly now: () => number;
  readonly calls: StsCall[];
  readonly issued: IssuedJwt[];
  /** Every GET of the discovery document or the JWKS, to prove relying parties cache them. */
  readonly wellKnownRequests: { path: string; time: number }[];
  setFault(fault: StsFault, times?: number): void;
  addFault(fault: StsFault, times?: number): void;
  clearFault(): void;
  refuseConnections(): Promise<void>;
  acceptConnections(): Promise<void>;
  /** New signing keys; the old public keys stay published unless `keepOld` is false. */
  rotateKeys(keepOld?: boolean): Promise<void>;
  /** The published key set. */
  jwks(): { keys: JWK[] };
  /** Signs arbitrary claims with the issuer's current key, without recording a call (for crafting bad tokens). */
  mintJwt(claims: JWTPayload, alg?: SigningAlgorithm): Promise<string>;
  close(): Promise<void>;
}

interface SigningKey {
  privateKey: CryptoKey;
  kid: string;
  jwk: JWK;
}

async function makeKey(alg: SigningAlgorithm): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, alg === "RS256" ? { modulusLength: 2048 } : {});
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { privateKey, kid, jwk: { ...jwk, kid, alg, use: "sig" } };
}

const xmlEscape = (s: string) => s.replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]!);

/** `Prefix.member.N` list members in N order (awsQuery list encoding). */
function members(params: URLSearchParams, prefix: string, suffix = ""): Map<number, string> {
  const pattern = new RegExp(`^${prefix}\\.member\\.(\\d+)${suffix.replace(/\./g, "\\.")}$`);
  const out = new Map<number, string>();
  for (const [key, value] of params) {
    const m = pattern.exec(key);
    if (m) out.set(Number(m[1]), value);
  }
  return new Map([...out].sort((a, b) => a[0] - b[0]));
}

export async function startSts(options: StsOptions = {}): Promise<StsStandIn> {
  const now = options.now ?? Date.now;
  const roleArn = options.roleArn ?? DEFAULT_ROLE_ARN;
  const settings: StsSettings = {
    roleArn,
    accountId: options.accountId ?? /^arn:aws[\w-]*:iam::(\d{12}):/.exec(roleArn)?.[1] ?? "123456789012",
    region: options.region ?? "us-east-1",
    lambdaFunctionArn: options.lambdaFunctionArn,
    enabled: options.enabled ?? true,
    sessionExpiresAt: options.sessionExpiresAt,
    allow: options.allow,
    callerArn: options.callerArn,
    credentials: options.credentials ?? [...KNOWN_CREDENTIALS],
    rateLimit: options.rateLimit,
  };
  const bucket = new TokenBucket(now);
  const keys = new Map<SigningAlgorithm, SigningKey>();
  let published: JWK[] = [];
  const rotateKeys = async (keepOld = true) => {
    const fresh = await Promise.all(SIGNING_ALGORITHMS.map(makeKey));
    published = [...fresh.map((k) => k.jwk), ...(keepOld ? published : [])];
    SIGNING_ALGORITHMS.forEach((alg, i) => keys.set(alg, fresh[i]!));
  };
  await rotateKeys(false);

  const calls: StsCall[] = [];
  const issued: IssuedJwt[] = [];
  const wellKnownRequests: { path: string; time: number }[] = [];
  const faults = new FaultPlan<StsFault>();
  let base = "";

  const sign = (claims: JWTPayload, alg: SigningAlgorithm) => {
    const key = keys.get(alg)!;
    return new SignJWT(claims).setProtectedHeader({ alg, kid: key.kid, typ: "JWT" }).sign(key.privateKey);
  };

  const handler: Handler = async (req, res) => {
    const url = new URL(req.url ?? "/", base);
    const body = await readBody(req);
    const requestId = randomUUID();
    const headers = { "x-amzn-RequestId": requestId, date: new Date(now()).toUTCString() };

    if (req.method === "GET" && url.pathname === "/.well-known/openid-configuration") {
      wellKnownRequests.push({ path: url.pathname, time: now() });
      return sendJson(res, 200, {
        issuer: base,
        jwks_uri: `${base}/.well-known/jwks.json`,
        response_types_supported: ["id_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: [...SIGNING_ALGORITHMS],
        scopes_supported: ["openid"],
        claims_supported: ["aud", "exp", "iat", "iss", "jti", "sub", STS_CLAIMS_NAMESPACE],
      });
    }
    if (req.method === "GET" && url.pathname === "/.well-known/jwks.json") {
      wellKnownRequests.push({ path: url.pathname, time: now() });
      return sendJson(res, 200, { keys: published });
    }

    const xmlError = (status: number, code: string, message: string, type: "Sender" | "Receiver" = status >= 500 ? "Receiver" : "Sender") => {
      res.writeHead(status, { "content-type": "text/xml", ...headers }).end(
        `<ErrorResponse xmlns="${XMLNS}"><Error><Type>${type}</Type><Code>${xmlEscape(code)}</Code>` +
          `<Message>${xmlEscape(message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`,
      );
    };
    if (url.pathname !== "/" || (req.method !== "POST" && req.method !== "GET")) {
      return xmlError(404, "UnknownOperationException", `No operation at ${req.method} ${url.pathname}`);
    }
    if (body === undefined) return xmlError(413, "RequestEntityTooLarge", "Request body is too large");

    // awsQuery accepts parameters in the query string as well as in the form body.
    const params = new URLSearchParams(url.search);
    for (const [k, v] of new URLSearchParams(body)) params.append(k, v);
    const audience = [...members(params, "Audience").values()];
    const tagKeys = members(params, "Tags", ".Key");
    const tagValues = members(params, "Tags", ".Value");
    const durationRaw = params.get("DurationSeconds");
    const call: StsCall = {
      time: now(),
      action: params.get("Action") ?? undefined,
      audience,
      signingAlgorithm: params.get("SigningAlgorithm") ?? undefined,
      durationSeconds: durationRaw === null ? undefined : Number(durationRaw),
      tags: Object.fromEntries([...tagKeys].map(([n, k]) => [k, tagValues.get(n) ?? ""])),
      status: 0,
      ok: false,
    };
    calls.push(call);
    const fail = (status: number, code: string, message: string, type?: "Sender" | "Receiver") => {
      Object.assign(call, { status, error: code });
      xmlError(status, code, message, type);
    };

    const cutShort =
      `<GetWebIdentityTokenResponse xmlns="${XMLNS}"><GetWebIdentityTokenResult><WebIdentityToken>` +
      `eyJhbGciOiJSUzI1NiJ9.${"x".repeat(200)}</WebIdentityToken></GetWebIdentityTokenResult></GetWebIdentityTokenResponse>`;
    const fault = faults.take();
    let patch: Extract<StsFault, { kind: "patch" }> | undefined;
    if (fault?.kind === "patch") {
      patch = fault;
      call.fault = "patch";
    } else if (await playAwsFault(fault, call, res, fail, cutShort)) return;

    const signed = verifySigV4(
      { method: req.method ?? "", url: req.url ?? "/", rawHeaders: req.rawHeaders, body },
      { service: "sts", region: settings.region, credentials: settings.credentials, now: now() },
    );
    call.accessKeyId = signed.ok ? signed.credential.accessKeyId : signed.accessKeyId;
    if (!signed.ok) return fail(signed.failure.status, signed.failure.code, signed.failure.message);
    if (call.action === "GetCallerIdentity" && params.get("Version") === API_VERSION) {
      // An assumed-role ARN names the role without its path, as AWS's does.
      const arn = settings.callerArn ?? `arn:aws:sts::${settings.accountId}:assumed-role/${settings.roleArn.split("/").pop()}/session`;
      Object.assign(call, { status: 200, ok: true });
      return void res.writeHead(200, { "content-type": "text/xml", ...headers }).end(
        `<GetCallerIdentityResponse xmlns="${XMLNS}"><GetCallerIdentityResult><Arn>${xmlEscape(arn)}</Arn>` +
          `<UserId>AROAEXAMPLE:session</UserId><Account>${settings.accountId}</Account></GetCallerIdentityResult>` +
          `<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></GetCallerIdentityResponse>`,
      );
    }
    if (call.action !== "GetWebIdentityToken" || params.get("Version") !== API_VERSION) {
      return fail(400, "InvalidAction", `Could not find operation ${call.action ?? "(none)"} for version ${params.get("Version") ?? "(none)"}`);
    }
    if (bucket.take(settings.rateLimit) > 0) return fail(400, "Throttling", "Rate exceeded");

    const problems: string[] = [];
    if (audience.length === 0 && !params.has("Audience")) {
      problems.push("Value null at 'audience' failed to satisfy constraint: Member must not be null");
    } else if (audience.length < 1 || audience.length > 10) {
      problems.push(
        `Value '[${audience.join(", ")}]' at 'audience' failed to satisfy constraint: Member must have length ${audience.length < 1 ? "greater than or equal to 1" : "less than or equal to 10"}`,
      );
    }
    audience.forEach((a, i) => {
      if (a.length < 1 || a.length > 1000) {
        problems.push(`Value '${a}' at 'audience.${i + 1}.member' failed to satisfy constraint: Member must have length between 1 and 1000`);
      }
    });
    if (call.signingAlgorithm === undefined) {
      problems.push("Value null at 'signingAlgorithm' failed to satisfy constraint: Member must not be null");
    } else if (call.signingAlgorithm.length !== 5) {
      problems.push(`Value '${call.signingAlgorithm}' at 'signingAlgorithm' failed to satisfy constraint: Member must have length equal to 5`);
    }
    const duration = call.durationSeconds ?? 300;
    if (!Number.isInteger(duration)) {
      problems.push(`Value '${durationRaw}' at 'durationSeconds' failed to satisfy constraint: Member must be an integer`);
    } else if (duration < 60 || duration > 3600) {
      problems.push(
        `Value '${duration}' at 'durationSeconds' failed to satisfy constraint: Member must have value ${duration < 60 ? "greater than or equal to 60" : "less than or equal to 3600"}`,
      );
    }
    if (tagKeys.size > 50) problems.push("Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50");
    if (problems.length) {
      return fail(400, "ValidationError", `${problems.length} validation error${problems.length > 1 ? "s" : ""} detected: ${problems.join("; ")}`);
    }
    const alg = call.signingAlgorithm as SigningAlgorithm;
    if (!SIGNING_ALGORITHMS.includes(alg)) {
      return fail(400, "ValidationError", `The signing algorithm ${alg} is not supported. Supported values: ${SIGNING_ALGORITHMS.join(", ")}.`);
    }
    // No trusted identity propagation context exists here, which OriginIdentity (and so Scope) needs.
    if (params.get("SubjectMode") === "OriginIdentity" || params.has("Scope")) {
      return fail(400, "ValidationError", "The calling session has no trusted identity propagation context for SubjectMode OriginIdentity; Scope requires it.");
    }

    const caller = `arn:aws:sts::${settings.accountId}:assumed-role/${settings.roleArn.split("/").pop()}/session`;
    const denied = (why: string) =>
      fail(403, "AccessDenied", `User: ${caller} is not authorized to perform: sts:GetWebIdentityToken because ${why}`);
    const allow = settings.allow;
    if (allow?.audiences && !audience.every((a) => allow.audiences!.includes(a))) {
      return denied("no identity-based policy allows the sts:GetWebIdentityToken action for this audience");
    }
    if (allow?.maxDurationSeconds !== undefined && duration > allow.maxDurationSeconds) {
      return denied("no identity-based policy allows the sts:GetWebIdentityToken action for this duration");
    }
    if (!settings.enabled) {
      return fail(
        403,
        "OutboundWebIdentityFederationDisabledException",
        "Outbound web identity federation is not enabled for this account. Enable it with iam:EnableOutboundWebIdentityFederation.",
      );
    }
    const iat = Math.floor(now() / 1000);
    const exp = iat + duration;
    if (settings.sessionExpiresAt !== undefined && exp * 1000 > settings.sessionExpiresAt) {
      return fail(
        403,
        "SessionDurationEscalationException",
        "The requested token duration would extend the session beyond its original expiration time.",
      );
    }

    const claims: StsJwtClaims = {
      iss: base,
      sub: settings.roleArn,
      aud: audience.length === 1 ? audience[0]! : audience,
      iat,
      exp,
      jti: randomUUID(),
      [STS_CLAIMS_NAMESPACE]: {
        aws_account: settings.accountId,
        source_region: settings.region,
        principal_id: settings.roleArn,
        ...(settings.lambdaFunctionArn ? { lambda_source_function_arn: settings.lambdaFunctionArn } : {}),
        ...(tagKeys.size ? { request_tags: call.tags } : {}),
      },
    };
    const token = await sign(claims, alg);
    const expiration = new Date(exp * 1000);
    issued.push({ token, alg, kid: keys.get(alg)!.kid, claims, expiration });
    Object.assign(call, { status: 200, ok: true });
    const elements: Record<string, string | undefined> = { WebIdentityToken: token, Expiration: expiration.toISOString(), ...patch?.fields };
    if (patch?.delayMs) await sleep(patch.delayMs);
    res.writeHead(200, { "content-type": "text/xml", ...headers }).end(
      `<GetWebIdentityTokenResponse xmlns="${XMLNS}"><GetWebIdentityTokenResult>` +
        Object.entries(elements)
          .map(([k, v]) => (v === undefined ? "" : `<${k}>${xmlEscape(v)}</${k}>`))
          .join("") +
        `</GetWebIdentityTokenResult><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata>` +
        `</GetWebIdentityTokenResponse>`,
    );
  };

  const server = await listenLoopback(handler);
  base = server.url;
  return {
    url: server.url,
    issuer: server.url,
    port: server.port,
    settings,
    now,
    calls,
    issued,
    wellKnownRequests,
    setFault: (fault, times) => faults.set(fault, times),
    addFault: (fault, times) => faults.add(fault, times),
    clearFault: () => faults.clear(),
    refuseConnections: () => server.refuse(),
    acceptConnections: () => server.accept(),
    rotateKeys,
    jwks: () => ({ keys: published }),
    mintJwt: (claims, alg = "RS256") => sign(claims, alg),
    close: () => server.close(),
  };
}
