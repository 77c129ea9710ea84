/**
 * Composes the pipeline of SPEC §3 from its parts: STS JWT → Databricks exchange → cache.
 * Every side effect comes in through `BrokerDeps`, so tests drive time and faults.
 */
import type { Config, Target } from "./config.js";
import { explainExchangeFailure } from "./diagnosis.js";
import { isBrokerError } from "./errors.js";
import { createExchange, type HttpPost } from "./exchange.js";
import type { Logger } from "./log.js";
import { createStsSource, type GetWebIdentityToken } from "./sts.js";
import { TokenCache, type TokenCacheOptions, type TokenSource } from "./token-cache.js";

/** Errors of a kept-alive connection the peer closed while this process was frozen. */
const STALE_SOCKET_CODES = new Set(["ECONNRESET", "EPIPE", "UND_ERR_SOCKET"]);

/** True when `err`, or a cause of it, says the connection was reset or closed under us. */
export function isStaleConnection(err: unknown): boolean {
  for (let e = err, depth = 0; e && typeof e === "object" && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (typeof code === "string" && STALE_SOCKET_CODES.has(code)) return true;
    if (typeof message === "string" && /socket hang up|other side closed/i.test(message)) return true;
  }
  return false;
}

/**
 * Runs `step` again at once, a single time, when it failed on a stale kept-alive connection:
 * after a freeze, the upstream has usually closed the idle socket and the first request on
 * it fails though nothing is wrong. Any other failure goes to the cache's backoff, as does a
 * stale failure `also` turns down.
 */
async function retryStaleOnce<T>(step: () => Promise<T>, also: (err: unknown) => boolean = () => true): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if (!isStaleConnection(err) || !also(err)) throw err;
    return step();
  }
}

/** The pipeline's side effects; the clock, jitter, sleep and outcome callback go on to the cache as given. */
export interface PipelineDeps extends Pick<TokenCacheOptions, "now" | "random" | "sleep" | "onRefresh"> {
  /** The STS port (sts.ts). */
  getWebIdentityToken: GetWebIdentityToken;
  fetch: HttpPost;
  log: Logger;
  /** Called as each exchange starts, STS having answered: from then on the refresh waits on the network. */
  onExchangeStart?: () => void;
}

/** Builds the token cache for `config`, with a fresh STS JWT for every exchange. */
export function createTokenCache(config: Config, deps: PipelineDeps): TokenCache {
  const now = deps.now ?? Date.now;
  const getJwt = createStsSource({
    getWebIdentityToken: deps.getWebIdentityToken,
    audience: config.audience,
    signingAlgorithm: config.signingAlgorithm,
    durationSeconds: config.stsDurationSeconds,
    log: deps.log,
    now,
  });
  const exchange = createExchange({ fetch: deps.fetch, now, log: deps.log });
  // A JWT is never sent twice, not even by the retry after a stale connection: an answer cut
  // after Databricks did the exchange makes a resend a replay, refused as invalid_grant.
  const exchangeFreshJwt = async (target: Target, signal?: AbortSignal) => {
    const subject = await retryStaleOnce(() => getJwt(signal));
    const token = exchange(target, subject, signal).catch((err: unknown) => {
      // The JWT's claims turn "no policy matched" into the policy values to set.
      throw explainExchangeFailure(err, subject.jwt, target);
    });
    deps.onExchangeStart?.();
    return token;
  };
  // STS's own stale retry is inside; this one is for the exchange's, so STS is not retried twice over.
  const source: TokenSource = (target: Target, signal?: AbortSignal) =>
    retryStaleOnce(() => exchangeFreshJwt(target, signal), (err) => isBrokerError(err) && err.step === "exchange");
  return new TokenCache({
    targets: config.targets,
    source,
    refreshAheadSeconds: config.refreshAheadSeconds,
    minTtlSeconds: config.minTtlSeconds,
    now,
    random: deps.random,
    sleep: deps.sleep,
    onRefresh: deps.onRefresh,
  });
}
