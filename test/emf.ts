/**
 * The CloudWatch embedded metric format, as its specification states it ("Specification:
 * Embedded metric format", CloudWatch User Guide): a JSON Schema of the document's structure,
 * and the rules a schema cannot state, that every dimension and metric a directive names is a
 * member of the root with a value of the right type. Shared by the unit and end-to-end tests.
 */
import Ajv from "ajv";

/** CloudWatch's metric units (MetricDatum `Unit`), which a MetricDefinition's `Unit` should be one of. */
const UNITS = [
  "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
  "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count",
  "Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second",
  "Bits/Second", "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
];

/** A name the specification limits to 1–255 characters (namespace, dimension and metric names). */
const NAME = { type: "string", minLength: 1, maxLength: 255 } as const;

/**
 * The document structure. Objects the specification defines take no other members ("Unless
 * otherwise noted, objects defined by this specification MUST NOT contain any additional
 * members"); the root may hold any.
 */
export const EMF_SCHEMA = {
  type: "object",
  required: ["_aws"],
  properties: {
    _aws: {
      type: "object",
      required: ["Timestamp", "CloudWatchMetrics"],
      additionalProperties: false,
      properties: {
        // Milliseconds after the Unix epoch.
        Timestamp: { type: "integer", minimum: 0 },
        CloudWatchMetrics: {
          type: "array",
          minItems: 1,
          items: {
            type: "object",
            title: "MetricDirective",
            required: ["Namespace", "Dimensions", "Metrics"],
            additionalProperties: false,
            properties: {
              Namespace: NAME,
              Dimensions: {
                type: "array",
                minItems: 1,
                // A DimensionSet: at most 30 dimension keys, possibly none.
                items: { type: "array", maxItems: 30, uniqueItems: true, items: NAME },
              },
              Metrics: {
                type: "array",
                minItems: 1,
                maxItems: 100,
                items: {
                  type: "object",
                  title: "MetricDefinition",
                  required: ["Name"],
                  additionalProperties: false,
                  properties: { Name: NAME, Unit: { enum: UNITS }, StorageResolution: { enum: [1, 60] } },
                },
              },
            },
          },
        },
      },
    },
  },
} as const;

interface Directive {
  Dimensions: string[][];
  Metrics: { Name: string }[];
}

/** Where the target members break the specification's rules; empty when they keep them. */
function targetProblems(doc: Record<string, unknown>): string[] {
  const problems: string[] = [];
  const directives = (doc._aws as { CloudWatchMetrics: Directive[] }).CloudWatchMetrics;
  for (const d of directives) {
    // A dimension target must be a string; dimension values are 1–1024 characters (CloudWatch Dimension).
    for (const key of d.Dimensions.flat()) {
      const v = doc[key];
      if (typeof v !== "string" || v.trim() === "" || v.length > 1024) problems.push(`dimension ${key} is ${JSON.stringify(v)}, not a dimension value`);
    }
    // A metric target must be a number, or an array of at most 100 numbers.
    for (const { Name } of d.Metrics) {
      const v = doc[Name];
      const ok = typeof v === "number" ? Number.isFinite(v) : Array.isArray(v) && v.length <= 100 && v.every((n) => typeof n === "number");
      if (!ok) problems.push(`metric ${Name} is ${JSON.stringify(v)}, not a number`);
    }
  }
  return problems;
}

// A CommonJS default export: NodeNext sees the module object, the runtime the class.
type Validate = ((d: unknown) => boolean) & { errors?: { instancePath: string; message?: string }[] | null };
const AjvClass = ((Ajv as unknown as { default?: unknown }).default ?? Ajv) as new (o: object) => { compile(s: object): Validate };
const validateStructure = new AjvClass({ allErrors: true, strict: true }).compile(EMF_SCHEMA);

/** Everything in `doc` (a parsed log line) that is not a valid EMF document; empty when it is one. */
export function emfProblems(doc: unknown): string[] {
  if (!validateStructure(doc)) return (validateStructure.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? ""}`);
  return targetProblems(doc as Record<string, unknown>);
}

/** True for a line that is meant as an EMF document (it has `_aws`), valid or not. */
export const isEmf = (doc: Record<string, unknown>): boolean => "_aws" in doc;
