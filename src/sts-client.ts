/**
 * The STS port's adapter (`GetWebIdentityToken`, see sts.ts): the one module that imports the
 * AWS SDK's STS client. The extension loads it at the first JWT (extension/main.ts); the CLI
 * builds it directly.
 */
import { pipeline, Readable, Transform } from "node:stream";
import { GetWebIdentityTokenCommand, STSClient } from "@aws-sdk/client-sts";
import { BrokerError } from "./errors.js";
import type { GetWebIdentityToken } from "./sts.js";
import { classifyStsError } from "./sts-errors.js";

/**
 * How long one STS call may take before it counts as a transient failure. STS answers in
 * tens of milliseconds; 5 s leaves room for a cold TLS handshake and a slow region.
 */
export const STS_TIMEOUT_MS = 5_000;
/** Connection set-up budget inside the timeout above. */
const STS_CONNECT_TIMEOUT_MS = 2_000;

/**
 * An STS answer is a couple of KiB. Past this it is no STS answer (a proxy, a wrong
 * AWS_ENDPOINT_URL_STS), and the SDK would read it whole and parse it, stalling every token
 * request in the meantime; the SDK itself sets no limit.
 */
export const MAX_STS_BODY_BYTES = 64 * 1024;

/**
 * The STS client's settings: regional endpoint (GetWebIdentityToken has no global one;
 * `AWS_ENDPOINT_URL_STS` still overrides it), and one attempt per call because the token
 * cache owns retries and their backoff — two retry loops would multiply upstream calls.
 */
export function stsClientConfig(region: string) {
  // Without throwOnRequestTimeout the SDK's handler only logs a warning when requestTimeout
  // passes and keeps waiting: an STS that never answers would hold the one refresh per
  // target forever, and the token would expire behind it.
  return { region, maxAttempts: 1, requestHandler: { connectionTimeout: STS_CONNECT_TIMEOUT_MS, requestTimeout: STS_TIMEOUT_MS, throwOnRequestTimeout: true } };
}

/** The shape of an SDK deserialize-step handler, as far as this module uses it. */
type Handler = (args: object) => Promise<{ response: unknown }>;

const tooLarge = (status: number | undefined) =>
  Object.assign(new Error(`STS answered a body over ${MAX_STS_BODY_BYTES} bytes`), { name: "ResponseTooLarge", $metadata: { httpStatusCode: status } });

/** Cuts the answer's body at the limit; innermost in the deserialize step, it runs before the SDK reads the body. */
const limitBody = (next: Handler): Handler => async (args) => {
  const out = await next(args);
  const res = out.response as { statusCode?: number; headers?: Record<string, string | undefined>; body?: unknown };
  const body = res.body;
  if (!(body instanceof Readable)) return out;
  if (Number(res.headers?.["content-length"]) > MAX_STS_BODY_BYTES) {
    body.destroy();
    throw tooLarge(res.statusCode);
  }
  let seen = 0;
  const limited = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      done(seen > MAX_STS_BODY_BYTES ? tooLarge(res.statusCode) : null, chunk);
    },
  });
  // pipeline() destroys the socket's stream too when the limit cuts it short.
  pipeline(body, limited, () => {});
  res.body = limited;
  return out;
};

/** An STS client with the broker's settings (`stsClientConfig`) for `region`. */
export function createStsClient(region: string): STSClient {
  const client = new STSClient(stsClientConfig(region));
  client.middlewareStack.add(limitBody as never, { step: "deserialize", priority: "low", name: "brokerStsBodyLimit" });
  return client;
}

/** What a call that outlived its timeout says: a transient STS fault, retried with backoff. */
function stsTimeout(timeoutMs: number, cause: unknown): BrokerError {
  return new BrokerError("ERR_STS_UNAVAILABLE", `STS did not answer within ${timeoutMs} ms`, {
    step: "sts",
    retryable: true,
    upstreamCode: "timeout",
    hint: "a network or STS fault; the broker retries with backoff. In a VPC, the function needs a route to the regional STS endpoint (NAT gateway or an STS interface endpoint)",
    cause,
  });
}

/** Rejects once `signal` aborts: the SDK stops watching its signal when the headers arrive. */
function whenAborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    else signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

/**
 * The STS port over `client`: one call, its failure classified, its answer checked. The call
 * as a whole, body included, ends after `timeoutMs`: the SDK's own requestTimeout stops at the
 * headers, and an answer stalled after them would hold the target's refresh for good.
 */
export function webIdentityTokenPort(client: Pick<STSClient, "send">, { timeoutMs = STS_TIMEOUT_MS }: { timeoutMs?: number } = {}): GetWebIdentityToken {
  return async ({ audience, signingAlgorithm, durationSeconds }, signal) => {
    const command = new GetWebIdentityTokenCommand({ Audience: [audience], SigningAlgorithm: signingAlgorithm, DurationSeconds: durationSeconds });
    const timeout = AbortSignal.timeout(timeoutMs);
    const abortSignal = signal ? AbortSignal.any([signal, timeout]) : timeout;
    const answer = await Promise.race([client.send(command, { abortSignal }), whenAborted(abortSignal)]).catch((err: unknown) => {
      throw timeout.aborted ? stsTimeout(timeoutMs, err) : classifyStsError(err);
    });
    const jwt = answer.WebIdentityToken;
    const expiresAt = answer.Expiration?.getTime();
    if (typeof jwt !== "string" || jwt.split(".").length !== 3 || expiresAt === undefined || !Number.isFinite(expiresAt)) {
      throw new BrokerError("ERR_STS_INVALID_RESPONSE", "STS answered without a WebIdentityToken and Expiration", {
        step: "sts",
        retryable: true,
        hint: "an STS or proxy fault; check AWS_ENDPOINT_URL_STS if it is set",
      });
    }
    return { jwt, expiresAt };
  };
}

/** The extension's STS port: a client with the broker's settings for `region`. */
export function createStsPort(region: string): GetWebIdentityToken {
  return webIdentityTokenPort(createStsClient(region));
}
