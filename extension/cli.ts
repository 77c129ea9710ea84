/**
 * Entry point of the `databricks-token-broker` command (`setup`, `doctor`): the only CLI
 * module that touches `process`. Built to dist/layer/databricks-token-broker/cli.mjs, apart
 * from the extension's bundle, so the extension never loads the IAM client.
 */
import { redact } from "../src/log.js";
import { type AwsClients, createIamClient } from "../src/cli/aws.js";
import { runCli } from "../src/cli/main.js";
import { createStsClient, webIdentityTokenPort } from "../src/sts-client.js";

const clients = new Map<string, AwsClients & { iam: ReturnType<typeof createIamClient>; sts: ReturnType<typeof createStsClient> }>();

/** Exits once stdout has drained, so output piped to another program is never cut short. */
function exit(code: number): void {
  for (const c of clients.values()) {
    c.iam.destroy();
    c.sts.destroy();
  }
  process.stdout.write("", () => process.exit(code));
}

runCli(process.argv.slice(2), {
  env: process.env,
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  clients: (region) => {
    let c = clients.get(region);
    if (!c) {
      const sts = createStsClient(region);
      c = { iam: createIamClient(region), sts, getWebIdentityToken: webIdentityTokenPort(sts) };
      clients.set(region, c);
    }
    return c;
  },
  fetch: (input, init) => fetch(input, init),
}).then(exit, (err: unknown) => {
  // Every expected failure is a check in the report; this is a bug, shown without letting an upstream message leak a JWT.
  process.stderr.write(`databricks-token-broker: unexpected failure: ${redact(String((err as Error)?.stack ?? err))}\n`);
  exit(1);
});
