/**
 * CloudWatch metrics (SPEC §8) as embedded-metric-format records: JSON lines on stdout that
 * CloudWatch Logs turns into metrics, with no agent and no API call. A record per target per
 * refresh, and one per INVOKE for the tokens served meanwhile; never one per request.
 */
import { redact } from "./log.js";
import type { RefreshOutcome } from "./token-cache.js";

/**
 * The one dimension set of every metric. The failure's step and code are plain members, not
 * dimensions: each dimension value would be a metric of its own, billed as one.
 */
export const DIMENSIONS = ["FunctionName", "Target"] as const;

/** CloudWatch units (EMF specification, MetricDefinition `Unit`). */
type Unit = "Count" | "Milliseconds";

export const METRICS = Object.freeze({
  RefreshSuccess: "Count",
  RefreshFailure: "Count",
  RefreshLatency: "Milliseconds",
  TokensServed: "Count",
} satisfies Record<string, Unit>);
export type MetricName = keyof typeof METRICS;

/** One EMF document: the `_aws` metadata, the dimension values, the metric values and any properties. */
export interface EmfRecord {
  readonly _aws: {
    readonly Timestamp: number;
    readonly CloudWatchMetrics: readonly {
      readonly Namespace: string;
      readonly Dimensions: readonly (readonly string[])[];
      readonly Metrics: readonly { readonly Name: MetricName; readonly Unit: Unit }[];
    }[];
  };
  readonly FunctionName: string;
  readonly Target: string;
  readonly [member: string]: unknown;
}

/** What every record of this process shares. */
export interface RecordScope {
  readonly namespace: string;
  readonly functionName: string;
}

/** An EMF record of `values` for `target` at `at` (Unix ms), with `properties` beside them. */
export function emfRecord(
  scope: RecordScope,
  target: string,
  at: number,
  values: Partial<Record<MetricName, number>>,
  properties: Readonly<Record<string, string>> = {},
): EmfRecord {
  const names = Object.keys(values) as MetricName[];
  return {
    _aws: {
      Timestamp: at,
      CloudWatchMetrics: [{ Namespace: scope.namespace, Dimensions: [[...DIMENSIONS]], Metrics: names.map((Name) => ({ Name, Unit: METRICS[Name] })) }],
    },
    // Properties first: a metric or dimension member of the same name must win.
    ...properties,
    FunctionName: scope.functionName,
    Target: target,
    ...values,
  };
}

/** The record of one refresh: its outcome and latency, the tokens served since the last record, and a failure's step and codes. */
export function refreshRecord(scope: RecordScope, o: RefreshOutcome, served: number): EmfRecord {
  const values = { RefreshSuccess: o.ok ? 1 : 0, RefreshFailure: o.ok ? 0 : 1, RefreshLatency: o.ms, TokensServed: served };
  if (o.ok) return emfRecord(scope, o.target, o.at, values);
  const { step, code, upstreamCode } = o.error;
  // An upstream code is the upstream's text: redacted as a log line's fields are.
  return emfRecord(scope, o.target, o.at, values, { step, code, ...(upstreamCode === undefined ? {} : { upstreamCode: redact(upstreamCode) }) });
}

export interface MetricsOptions extends RecordScope {
  readonly targets: Iterable<string>;
  /** Takes one line, newline included: the log's own writer, past its level filter. */
  readonly write: (line: string) => void;
  readonly now?: () => number;
}

export interface Metrics {
  /** Counts a token served: an increment, the only work metrics add to a request. */
  readonly served: (target: string) => void;
  /** The token cache's `onRefresh`: one record per refresh. */
  readonly onRefresh: (outcome: RefreshOutcome) => void;
  /**
   * At an INVOKE: a record of the tokens served for each target that served some since its last
   * record and had no refresh since the last flush. At SHUTDOWN (`last`), for every target that
   * served some: nothing is held back for a record that will not come.
   */
  readonly flush: (options?: { readonly last?: boolean }) => void;
}

interface TargetCounts {
  served: number;
  /** A refresh record went out since the last flush. */
  refreshed: boolean;
}

/** The metrics of one broker process; records go to `write` as JSON lines. */
export function createMetrics({ namespace, functionName, targets, write, now = Date.now }: MetricsOptions): Metrics {
  const scope: RecordScope = { namespace, functionName };
  const counts = new Map<string, TargetCounts>();
  for (const name of targets) counts.set(name, { served: 0, refreshed: false });
  const emit = (record: EmfRecord) => write(`${JSON.stringify(record)}\n`);
  return {
    served: (target) => {
      const c = counts.get(target);
      if (c) c.served += 1;
    },
    onRefresh: (o) => {
      const c = counts.get(o.target);
      emit(refreshRecord(scope, o, c?.served ?? 0));
      if (c) {
        c.served = 0;
        c.refreshed = true;
      }
    },
    flush: ({ last = false } = {}) => {
      for (const [target, c] of counts) {
        if (c.served > 0 && (last || !c.refreshed)) {
          emit(emfRecord(scope, target, now(), { TokensServed: c.served }));
          c.served = 0;
        }
        c.refreshed = false;
      }
    },
  };
}
