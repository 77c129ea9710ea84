/**
 * The real STS client, apart from the STS source (`sts.ts`) so that the extension's bundle can
 * load the AWS SDK only when the first JWT is asked for. The CLI builds it directly.
 */
import { pipeline, Readable, Transform } from "node:stream";
import { STSClient } from "@aws-sdk/client-sts";
import { stsClientConfig } from "./sts.js";

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

/** An STS client with the broker's settings (`stsClientConfig`) for `region`. */
export function createStsClient(region: string): STSClient {
  const client = new STSClient(stsClientConfig(region));
  client.middlewareStack.add(limitBody as never, { step: "deserialize", priority: "low", name: "brokerStsBodyLimit" });
  return client;
}
