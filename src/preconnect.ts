/**
 * Opening the connection to each token endpoint while STS signs the first JWT. At a cold
 * start the exchange otherwise pays, after the JWT is back, for fetch's own loading (Node.js
 * loads its HTTP client at the first fetch) and for the connection set-up (DNS, TCP and TLS to
 * the workspace). Both can happen while the process only waits on STS; the exchange then
 * finds a warm client and a kept-alive connection to the same origin.
 *
 * The request is the one the Databricks SDKs send before an OAuth flow: a GET of the OIDC
 * discovery document, public and unauthenticated. Nothing is sent with it that identifies the
 * function, and its answer is read (so the connection can be reused) and dropped.
 */
import type { Target } from "./config.js";
import { type FetchLike, readLimited } from "./exchange.js";
import type { Logger } from "./log.js";

/** A warm-up that takes longer than this has missed its moment; the exchange connects on its own. */
const PRECONNECT_TIMEOUT_MS = 5_000;
/** A discovery document is about a kilobyte; an answer past this is dropped with its connection. */
const MAX_DRAINED_BYTES = 64 * 1024;
/** Databricks' discovery path, relative to the issuer that `/v1/token` ends (workspace or account). */
const DISCOVERY = "/.well-known/oauth-authorization-server";

/**
 * The discovery document beside a token endpoint: `…/oidc/v1/token` gives
 * `…/oidc/.well-known/oauth-authorization-server`, for workspaces and accounts alike; any
 * other endpoint gets its origin's workspace-style document, as only the origin matters here.
 */
export function discoveryUrlOf(tokenEndpoint: string): string {
  const url = new URL(tokenEndpoint);
  url.search = "";
  url.hash = "";
  url.pathname = url.pathname.endsWith("/v1/token") ? `${url.pathname.slice(0, -"/v1/token".length)}${DISCOVERY}` : `/oidc${DISCOVERY}`;
  return url.href;
}

/** One warm-up request per distinct origin: two targets on one workspace share a connection. */
export function preconnectUrls(targets: Iterable<Target>): string[] {
  const byOrigin = new Map<string, string>();
  for (const t of targets) {
    const origin = new URL(t.tokenEndpoint).origin;
    if (!byOrigin.has(origin)) byOrigin.set(origin, discoveryUrlOf(t.tokenEndpoint));
  }
  return [...byOrigin.values()];
}

/**
 * Sends the warm-up requests and reads their answers; never rejects, as nothing depends on
 * them: a failure costs the exchange only the connection set-up it would have paid anyway.
 */
export async function preconnect(fetch: FetchLike, urls: readonly string[], log: Logger): Promise<void> {
  await Promise.all(
    urls.map(async (url) => {
      try {
        // A redirect (a proxy's login page, say) is not followed: only this origin's connection is wanted.
        const res = await fetch(url, { method: "GET", headers: { accept: "application/json" }, redirect: "manual", signal: AbortSignal.timeout(PRECONNECT_TIMEOUT_MS) });
        // Read to its end, the body hands the connection back to the pool; a large one is cancelled.
        await readLimited(res, MAX_DRAINED_BYTES);
        log.debug("connection to the token endpoint opened", { url, status: res.status });
      } catch (err) {
        log.debug("could not open the connection to the token endpoint ahead of the exchange", { url, error: err });
      }
    }),
  );
}
