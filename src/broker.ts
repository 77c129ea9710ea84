/**
 * Composes the pipeline of SPEC §3 from its parts: STS JWT → Databricks exchange → cache.
 * Every side effect comes in through `BrokerDeps`, so tests drive time and faults.
 */
import type { Config, Target } from "./config.js";
import { createExchange, type FetchLike } from "./exchange.js";
import type { Logger } from "./log.js";
import { createStsSource, type StsLike } from "./sts.js";
import { TokenCache, type TokenSource } from "./token-cache.js";

export interface BrokerDeps {
  sts: StsLike;
  fetch: FetchLike;
  log: Logger;
  now?: () => number;
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

/** Builds the token cache for `config`, with a fresh STS JWT for every exchange. */
export function createBroker(config: Config, deps: BrokerDeps): TokenCache {
  const now = deps.now ?? Date.now;
  const getJwt = createStsSource({
    client: deps.sts,
    audience: config.audience,
    signingAlgorithm: config.signingAlgorithm,
    durationSeconds: config.stsDurationSeconds,
    log: deps.log,
  });
  const exchange = createExchange({ fetch: deps.fetch, now, log: deps.log });
  // A JWT is never reused across exchanges: token endpoints may treat its `jti` as single-use.
  const source: TokenSource = async (target: Target, signal?: AbortSignal) => exchange(target, (await getJwt(signal)).jwt, signal);
  return new TokenCache({
    targets: config.targets,
    source,
    refreshAheadSeconds: config.refreshAheadSeconds,
    minTtlSeconds: config.minTtlSeconds,
    log: deps.log,
    now,
    ...(deps.random ? { random: deps.random } : {}),
    ...(deps.sleep ? { sleep: deps.sleep } : {}),
  });
}
