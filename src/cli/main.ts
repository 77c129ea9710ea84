/**
 * The `databricks-token-broker` command: parses the arguments, runs `setup` or `doctor`,
 * writes text or JSON, and answers the exit status. Everything it touches comes in as an
 * argument; only `extension/cli.ts` touches `process`.
 */
import type { FetchLike } from "../exchange.js";
import { parseCliArgs, USAGE, UsageError } from "./args.js";
import { type AwsClients, resolveRegion } from "./aws.js";
import { renderDoctor, runDoctor } from "./doctor.js";
import { renderSetup, runSetup } from "./setup.js";

export interface CliDeps {
  /**
   * The process's environment. The CLI sets the AWS SDK's documented
   * AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED in it, unless set, before any client is built.
   */
  env: NodeJS.ProcessEnv;
  out: (text: string) => void;
  err: (text: string) => void;
  /** AWS clients for a region; the CLI's own calls go nowhere else. */
  clients: (region: string) => AwsClients;
  fetch: FetchLike;
  now?: () => number;
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;
/** The AWS SDK reads it from the environment when it builds a client. */
const SDK_NODE_NOTICE_SWITCH = "AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED";
/** IAM is global: in the commercial partition every region reaches the same endpoint. */
const SETUP_DEFAULT_REGION = "us-east-1";

/** Runs one command line; resolves with the exit status. */
export async function runCli(argv: readonly string[], deps: CliDeps): Promise<number> {
  // On Node.js 20 the SDK prints a multi-line notice to stderr at the first client, on every
  // run; the switch the SDK documents for it (aws-sdk-js-v3 issue 7983) keeps the output to the report.
  deps.env[SDK_NODE_NOTICE_SWITCH] ??= "true";
  try {
    const args = parseCliArgs(argv);
    if (args.command === "help") {
      deps.out(USAGE);
      return EXIT_OK;
    }
    if (args.command === "setup") {
      // The region the AWS CLI would use (the profile's too), for the partition; IAM itself is global.
      const region = args.region ?? (await resolveRegion(deps.env))?.region ?? SETUP_DEFAULT_REGION;
      const report = await runSetup(args.setup, { clients: deps.clients(region), env: deps.env });
      deps.out(args.json ? `${JSON.stringify(report, null, 2)}\n` : renderSetup(report));
      return report.ok ? EXIT_OK : EXIT_FAILED;
    }
    const report = await runDoctor({ ...args.doctor, region: args.region }, { env: deps.env, clients: deps.clients, fetch: deps.fetch, ...(deps.now ? { now: deps.now } : {}) });
    deps.out(args.json ? `${JSON.stringify(report, null, 2)}\n` : renderDoctor(report));
    return report.ok ? EXIT_OK : EXIT_FAILED;
  } catch (err) {
    if (err instanceof UsageError) {
      deps.err(`databricks-token-broker: ${err.message}\n\n${USAGE}`);
      return EXIT_USAGE;
    }
    throw err;
  }
}
