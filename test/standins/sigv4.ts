// AWS Signature Version 4 as an AWS service checks it, for the STS and IAM stand-ins: the
// canonical request, the string to sign and the HMAC chain, recomputed with the secret key the
// stand-in knows for the request's access key, then compared with the signature sent; the
// credential scope (date, region, service), the request time against the server's clock, and
// the session token. Written with node:crypto alone, from the SigV4 documentation
// ("Create a signed AWS API request", "Elements of an AWS API request signature"). The real
// clients are the proof: @aws-sdk/client-sts, @aws-sdk/client-iam and boto3 all pass it
// (test/sigv4.test.ts), and a request that any of them would not send fails it.
import { createHash, createHmac, timingSafeEqual } from "node:crypto";

/** A key pair an AWS account knows, with the session token of a temporary one. */
export interface AwsCredential {
  accessKeyId: string;
  secretAccessKey: string;
  /** Set for temporary credentials (ASIA…): every request must carry it as X-Amz-Security-Token. */
  sessionToken?: string;
}

/** What the service needs to judge a request. */
export interface SigV4Policy {
  /** The signing name (`sts`, `iam`). */
  service: string;
  /** The region the endpoint serves; undefined accepts any (see iam.ts for why). */
  region?: string;
  credentials: readonly AwsCredential[];
  /** Server clock, Unix ms. */
  now: number;
}

/** The request as it came off the wire. */
export interface SignedRequest {
  method: string;
  /** Path and query as sent (`req.url`). */
  url: string;
  /** `req.rawHeaders`: names as sent, every occurrence. */
  rawHeaders: readonly string[];
  body: string;
}

/** An AWS error answer: status, code, message. */
export interface SigV4Failure {
  status: number;
  code: string;
  message: string;
}

export type SigV4Result =
  | { ok: true; credential: AwsCredential; region: string; service: string }
  | { ok: false; failure: SigV4Failure; accessKeyId?: string; region?: string; service?: string };

/** AWS refuses a request whose time is more than 15 minutes off its own clock (SigV4 documentation). */
export const MAX_SKEW_MS = 15 * 60 * 1000;

const ALGORITHM = "AWS4-HMAC-SHA256";
const AUTH = /^AWS4-HMAC-SHA256 (.*)$/s;
const AMZ_DATE = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/;

const sha256 = (data: string | Buffer) => createHash("sha256").update(data).digest("hex");
const hmac = (key: string | Buffer, data: string) => createHmac("sha256", key).update(data, "utf8").digest();

/** RFC 3986 percent-encoding as SigV4 wants it: everything but unreserved characters, upper-case hex. */
export function uriEncode(s: string, keepSlash = false): string {
  let out = "";
  for (const byte of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-._~]/.test(c) || (keepSlash && c === "/")) out += c;
    else out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** Percent-decodes leniently: a `%` not followed by two hex digits stays as it is. */
function decode(s: string): string {
  return s.replace(/(%[0-9A-Fa-f]{2})+/g, (m) => {
    try {
      return decodeURIComponent(m);
    } catch {
      return m;
    }
  });
}

/**
 * The canonical URI of a non-S3 service: the path normalised (`.` and `..` segments resolved)
 * and each segment encoded once more, as sent (the clients encode it twice; S3 is the exception).
 */
function canonicalUri(path: string): string {
  const out: string[] = [];
  for (const seg of path.split("/")) {
    if (seg === "." || (seg === "" && out.length > 0)) continue;
    if (seg === "..") out.pop();
    else out.push(seg);
  }
  const joined = `/${out.filter((s) => s !== "").map((s) => uriEncode(s)).join("/")}`;
  return path.endsWith("/") && joined !== "/" ? `${joined}/` : joined;
}

/** Query parameters decoded, re-encoded, sorted by name then value; `X-Amz-Signature` left out. */
function canonicalQuery(query: string): string {
  if (query === "") return "";
  const pairs = query
    .split("&")
    .filter((p) => p !== "")
    .map((p) => {
      const i = p.indexOf("=");
      const [k, v] = i < 0 ? [p, ""] : [p.slice(0, i), p.slice(i + 1)];
      return [uriEncode(decode(k)), uriEncode(decode(v))] as const;
    })
    .filter(([k]) => k !== "X-Amz-Signature");
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join("&");
}

/** Every value of each header, by lower-case name, in the order sent. */
function headerValues(rawHeaders: readonly string[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    out.set(name, [...(out.get(name) ?? []), rawHeaders[i + 1]!]);
  }
  return out;
}

/** The canonical request of the SigV4 documentation, for the headers named in `signedHeaders`. */
export function canonicalRequest(req: SignedRequest, signedHeaders: readonly string[]): string {
  const q = req.url.indexOf("?");
  const path = q < 0 ? req.url : req.url.slice(0, q);
  const query = q < 0 ? "" : req.url.slice(q + 1);
  const values = headerValues(req.rawHeaders);
  // Values trimmed, inner runs of spaces made one, repeated headers joined with commas.
  const headers = signedHeaders.map((h) => `${h}:${(values.get(h) ?? []).map((v) => v.trim().replace(/\s+/g, " ")).join(",")}\n`).join("");
  // Services other than S3 hash the body they received; X-Amz-Content-Sha256, which the JS SDK
  // also sends (and signs), is then only one more signed header.
  return [req.method, canonicalUri(path), canonicalQuery(query), headers, signedHeaders.join(";"), sha256(req.body)].join("\n");
}

/** The signature of `stringToSign` with the key derived from `secret` for this scope. */
export function signature(secret: string, scope: { date: string; region: string; service: string }, stringToSign: string): string {
  const kDate = hmac(`AWS4${secret}`, scope.date);
  const kRegion = hmac(kDate, scope.region);
  const kService = hmac(kRegion, scope.service);
  const kSigning = hmac(kService, "aws4_request");
  return createHmac("sha256", kSigning).update(stringToSign, "utf8").digest("hex");
}

/** `YYYYMMDDTHHMMSSZ` for a Unix ms time. */
export const amzDate = (ms: number) => new Date(ms).toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");

function parseAmzDate(s: string): number | undefined {
  const m = AMZ_DATE.exec(s);
  if (!m) return undefined;
  const t = Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
  return Number.isNaN(t) ? undefined : t;
}

const fail = (status: number, code: string, message: string): { ok: false; failure: SigV4Failure } => ({ ok: false, failure: { status, code, message } });

/** `Credential=…, SignedHeaders=…, Signature=…` in any order, as AWS parses them. */
function authorizationFields(value: string): Record<string, string> | undefined {
  const m = AUTH.exec(value);
  if (!m) return undefined;
  const fields: Record<string, string> = {};
  for (const part of m[1]!.split(",")) {
    const i = part.indexOf("=");
    if (i > 0) fields[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return fields;
}

/**
 * Judges a request signed in its Authorization header, as an AWS query-protocol service does.
 * The order of the checks is AWS's where its answers show it (a malformed header before any
 * key lookup; "Signature expired" for a stale request whatever its signature); where they do
 * not, it is a guess and the codes are what AWS answers for each fault on its own.
 */
export function verifySigV4(req: SignedRequest, policy: SigV4Policy): SigV4Result {
  const headers = headerValues(req.rawHeaders);
  const authorization = headers.get("authorization")?.[0];
  const q = req.url.indexOf("?");
  const query = new URLSearchParams(q < 0 ? "" : req.url.slice(q + 1));
  if (authorization === undefined) {
    // Presigned (query-string) requests are a form AWS accepts, but neither SDK sends one for
    // these calls; the stand-ins refuse it rather than half-check it.
    if (query.has("X-Amz-Signature")) return fail(400, "InvalidRequest", "The stand-in accepts SigV4 in the Authorization header only (query-string signing is not imitated)");
    return fail(403, "MissingAuthenticationToken", "Request is missing Authentication Token");
  }
  const fields = authorizationFields(authorization);
  if (!fields || !fields.Credential || !fields.SignedHeaders || !fields.Signature) {
    return fail(400, "IncompleteSignature", `Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters. Authorization=${authorization.split(" ")[0] ?? ""}`);
  }
  const scope = fields.Credential.split("/");
  if (scope.length !== 5 || scope[4] !== "aws4_request") {
    return fail(400, "IncompleteSignature", `Credential should have exactly 5 slash-separated components: ${fields.Credential}`);
  }
  const [accessKeyId, date, region, service] = scope as [string, string, string, string];
  const where = { accessKeyId, region, service };
  const refuse = (status: number, code: string, message: string) => ({ ...fail(status, code, message), ...where });

  const amz = headers.get("x-amz-date")?.[0];
  const httpDate = headers.get("date")?.[0];
  if (amz === undefined && httpDate === undefined) {
    return refuse(400, "IncompleteSignature", "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.");
  }
  const requestTime = amz !== undefined ? parseAmzDate(amz) : Date.parse(httpDate!);
  // The string to sign carries the time as sent in X-Amz-Date, or the Date header's time in that form.
  const timestamp = amz ?? (requestTime !== undefined && Number.isFinite(requestTime) ? amzDate(requestTime) : "");
  if (requestTime === undefined || !Number.isFinite(requestTime)) {
    return refuse(403, "IncompleteSignature", `Date must be in ISO-8601 'basic format'. Got '${amz ?? httpDate}'. See http://en.wikipedia.org/wiki/ISO_8601`);
  }
  if (timestamp.slice(0, 8) !== date) {
    return refuse(403, "SignatureDoesNotMatch", `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${date}' != '${timestamp.slice(0, 8)}', from '${timestamp}'.`);
  }
  if (service !== policy.service) return refuse(403, "SignatureDoesNotMatch", `Credential should be scoped to correct service: '${policy.service}'. `);
  if (policy.region !== undefined && region !== policy.region) return refuse(403, "SignatureDoesNotMatch", "Credential should be scoped to a valid region. ");

  const signed = fields.SignedHeaders.split(";");
  // Host binds the signature to the endpoint; every SDK signs it. (AWS's wording; the code is a guess.)
  if (!signed.includes("host")) return refuse(403, "SignatureDoesNotMatch", "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.");

  const credential = policy.credentials.find((c) => c.accessKeyId === accessKeyId);
  if (!credential) return refuse(403, "InvalidClientTokenId", "The security token included in the request is invalid.");
  const sessionToken = headers.get("x-amz-security-token")?.[0];
  // A temporary key is only good with its own session token, and a long-term key with none.
  if (sessionToken !== credential.sessionToken) return refuse(403, "InvalidClientTokenId", "The security token included in the request is invalid.");

  const skew = requestTime - policy.now;
  if (skew < -MAX_SKEW_MS) {
    return refuse(403, "SignatureDoesNotMatch", `Signature expired: ${timestamp} is now earlier than ${amzDate(policy.now - MAX_SKEW_MS)} (${amzDate(policy.now)} - 15 min.)`);
  }
  if (skew > MAX_SKEW_MS) {
    return refuse(403, "SignatureDoesNotMatch", `Signature not yet current: ${timestamp} is still later than ${amzDate(policy.now + MAX_SKEW_MS)} (${amzDate(policy.now)} + 15 min.)`);
  }

  const stringToSign = [ALGORITHM, timestamp, `${date}/${region}/${service}/aws4_request`, sha256(canonicalRequest(req, signed))].join("\n");
  const expected = Buffer.from(signature(credential.secretAccessKey, { date, region, service }, stringToSign), "hex");
  const given = Buffer.from(/^[0-9a-f]{64}$/.test(fields.Signature) ? fields.Signature : "", "hex");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return refuse(
      403,
      "SignatureDoesNotMatch",
      "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
    );
  }
  return { ok: true, credential, region, service };
}
