/**
 * The token exchange's HTTP client: one request on node:http or node:https, answered in the
 * shape of `fetch`'s Response as far as the exchange reads it (`HttpPost`). Not `fetch`: its
 * undici, WebAssembly parser and web streams load on the first call, which costs the cold start
 * more CPU and memory than any other part of the extension (bench section 7, by part), while
 * node:https is loaded anyway, by the AWS SDK's STS client.
 */
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { HttpAnswer, HttpPost } from "./exchange.js";

function answerOf(res: IncomingMessage): HttpAnswer {
  const status = res.statusCode ?? 0;
  return {
    status,
    ok: status >= 200 && status < 300,
    statusText: res.statusMessage ?? "",
    headers: {
      get: (name) => {
        const v = res.headers[name.toLowerCase()];
        return v === undefined ? null : Array.isArray(v) ? v.join(", ") : v;
      },
    },
    body: res,
  };
}

/**
 * POSTs (or sends `init.method`) to an http: or https: URL and resolves once the answer's
 * headers are in; its body is the response stream. Redirects are never followed: a 3xx is an
 * answer like any other. Network faults reject with Node.js's error (its `code`, ECONNREFUSED
 * say); `init.signal` aborts the request, at any point, with an AbortError.
 */
export const httpPost: HttpPost = (input, init) =>
  new Promise((resolve, reject) => {
    const url = new URL(input);
    const send = url.protocol === "https:" ? httpsRequest : url.protocol === "http:" ? httpRequest : undefined;
    if (!send) {
      reject(new TypeError(`unsupported URL scheme ${url.protocol}`));
      return;
    }
    const req = send(url, { method: init.method, headers: { ...init.headers, "content-length": String(Buffer.byteLength(init.body)) }, signal: init.signal }, (res) => resolve(answerOf(res)));
    req.on("error", reject);
    req.end(init.body);
  });
