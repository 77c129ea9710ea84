/**
 * The load generator, run as its own process so that it never shares an event loop with the
 * server under test. Reads one JSON job from argv, runs autocannon, prints one JSON result.
 */
import autocannon from "autocannon";

export interface LoadJob {
  url: string;
  headers: Record<string, string>;
  connections: number;
  durationSeconds: number;
}

export interface LoadResult {
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  requests: number;
  non2xx: number;
  errors: number;
  timeouts: number;
}

const job = JSON.parse(process.argv[2] ?? "{}") as LoadJob;
// autocannon's own histogram keeps whole milliseconds, and a loopback answer takes well under
// one, so percentiles come from its per-response timings (fractional ms) instead.
let latencies = new Float64Array(1 << 20);
let count = 0;
const result = await new Promise<autocannon.Result>((resolve, reject) => {
  const instance = autocannon(
    { url: job.url, headers: job.headers, connections: job.connections, duration: job.durationSeconds, pipelining: 1 },
    (err: unknown, r: autocannon.Result) => (err ? reject(err) : resolve(r)),
  );
  // The event carries (client, status, bytes, ms) whatever the typings say: the time is last.
  (instance as unknown as NodeJS.EventEmitter).on("response", (...a: unknown[]) => {
    if (count === latencies.length) {
      const grown = new Float64Array(latencies.length * 2);
      grown.set(latencies);
      latencies = grown;
    }
    latencies[count++] = a[a.length - 1] as number;
  });
});
const sorted = latencies.subarray(0, count).sort();
const pct = (p: number) => sorted[Math.min(count - 1, Math.floor((p / 100) * count))] ?? Number.NaN;
const out: LoadResult = {
  requestsPerSecond: result.requests.average,
  p50Ms: pct(50),
  p99Ms: pct(99),
  meanMs: sorted.reduce((a, b) => a + b, 0) / count,
  requests: result.requests.total,
  non2xx: result.non2xx,
  errors: result.errors,
  timeouts: result.timeouts,
};
process.stdout.write(`${JSON.stringify(out)}\n`);
