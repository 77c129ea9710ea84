/**
 * The real STS client, apart from the STS source (`sts.ts`) so that the extension's bundle can
 * load the AWS SDK only when the first JWT is asked for. The CLI builds it directly.
 */
import { subscribe, unsubscribe } from "node:diagnostics_channel";
import type { ClientRequest } from "node:http";
import { pipeline, Readable, Transform } from "node:stream";
import { STSClient } from "@aws-sdk/client-sts";
import { type StsHooks, stsClientConfig } from "./sts.js";

// The command comes from here too, so the first call loads the SDK with one import (sts.ts).
export { GetWebIdentityTokenCommand } from "@aws-sdk/client-sts";

/**
 * An STS answer is a couple of KiB. Past this it is no STS answer (a proxy, a wrong
 * AWS_ENDPOINT_URL_STS), and the SDK would read it whole and parse it, stalling every token
 * request in the meantime; the SDK itself sets no limit.
 */
export const MAX_STS_BODY_BYTES = 64 * 1024;

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

/**
 * Node.js publishes every node:http client request here as it starts (node:diagnostics_channel,
 * "HTTP" built-in channels). Where a Node.js line does not, nothing is published, `onSent` is
 * not called, and only the head start of `onSent`'s work is lost.
 */
const REQUEST_START = "http.client.request.start";

/** The parts of the SDK's request that name it on the wire. */
interface WireRequest {
  method?: string;
  hostname?: string;
  path?: string;
  headers?: Record<string, string | undefined>;
}

/** True when `req`, a node:http request starting now, is the one the SDK sends for `wanted`. */
export function isSdkRequest(req: ClientRequest, wanted: WireRequest | undefined): boolean {
  if (!wanted || req.method !== wanted.method || req.host !== wanted.hostname || !req.path.startsWith(wanted.path ?? "/")) return false;
  // The Host header carries the port: another server on the same host is not STS.
  const host = wanted.headers?.host;
  return host === undefined || req.getHeader("host") === host;
}

/**
 * Calls `onSent` once this call's request is written to the socket (its ClientRequest's
 * `finish`): the SDK's work for it is done and only the network is left. The SDK does not
 * hand out its ClientRequest, so it is picked from Node.js's diagnostics channel by method,
 * host and path while the call runs; were none to match, `onSent` is simply not called.
 */
const announceSent =
  (onSent: () => void) =>
  (next: Handler): Handler =>
  (args) => {
    const wanted = (args as { request?: WireRequest }).request;
    const onStart = (message: unknown) => {
      const req = (message as { request?: ClientRequest }).request;
      if (!req || !isSdkRequest(req, wanted)) return;
      unsubscribe(REQUEST_START, onStart);
      req.once("finish", onSent);
    };
    const stop = () => unsubscribe(REQUEST_START, onStart);
    subscribe(REQUEST_START, onStart);
    let out: ReturnType<Handler>;
    try {
      out = next(args);
    } catch (err) {
      stop();
      throw err;
    }
    out.then(stop, stop);
    return out;
  };

/** An STS client with the broker's settings (`stsClientConfig`) for `region`. */
export function createStsClient(region: string, hooks: StsHooks = {}): STSClient {
  const client = new STSClient(stsClientConfig(region));
  client.middlewareStack.add(limitBody as never, { step: "deserialize", priority: "low", name: "brokerStsBodyLimit" });
  if (hooks.onSent) client.middlewareStack.add(announceSent(hooks.onSent) as never, { step: "deserialize", priority: "low", name: "brokerStsSent" });
  return client;
}
