/**
 * The extension's big parts one at a time, for section 7's table of what each costs (issue 13).
 * Run as `node parts.mjs <layer dir> <part>[,<part>…]` with the stand-ins' settings in its
 * environment; it takes each part as the extension does, from the built layer, and after each
 * prints one JSON line, `{ "stage": … }`, then waits for a line on stdin: the bench reads the
 * process's memory and CPU from /proc meanwhile (and, after `app`, asks it for tokens). Parts:
 *  - `sts`: loads lazy/sts-client.mjs (the AWS SDK's STS client) and asks the STS stand-in once;
 *  - `post`: one token-exchange POST to the Databricks stand-in, as the extension sends it
 *    (src/http-post.ts, node:http);
 *  - `fetch`: the same POST with Node.js's `fetch` (undici), which the extension used to send;
 *  - `app`: loads lazy/app.mjs (fastify and the routes), builds the app around a token cache
 *    holding one token and serves it on node:http, on DATABRICKS_TOKEN_BROKER_PORT.
 * The bench compares each part alone with this program doing nothing, and all in the
 * extension's order with the extension itself.
 */
import { createServer } from "node:http";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import type * as App from "../src/app.js";
import { parseConfig } from "../src/config.js";
import type { HttpPost } from "../src/exchange.js";
import { httpPost } from "../src/http-post.js";
import { createLogger } from "../src/log.js";
import type * as StsClient from "../src/sts-client.js";
import { TokenCache } from "../src/token-cache.js";

const [layerDir = "", list = ""] = process.argv.slice(2);
const lazy = (name: string) => pathToFileURL(join(layerDir, "databricks-token-broker", "lazy", `${name}.mjs`)).href;
const env = process.env;

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Tells the bench a stage is done and waits until it has taken its figures. */
async function stage(name: string): Promise<void> {
  console.log(JSON.stringify({ stage: name }));
  await lines.next();
}

async function sts(): Promise<void> {
  const { createStsPort } = (await import(lazy("sts-client"))) as typeof StsClient;
  await createStsPort(env.AWS_REGION ?? "us-east-1")({ audience: "databricks", signingAlgorithm: "RS256", durationSeconds: 300 }, AbortSignal.timeout(10_000));
}

const EXCHANGE_FORM = new URLSearchParams({ grant_type: "urn:ietf:params:oauth:grant-type:token-exchange", subject_token: "x", subject_token_type: "urn:ietf:params:oauth:token-type:jwt", scope: "all-apis" }).toString();

async function exchange(client: HttpPost): Promise<void> {
  const res = await client(`${env.DATABRICKS_HOST}/oidc/v1/token`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: EXCHANGE_FORM,
    redirect: "error",
    signal: AbortSignal.timeout(10_000),
  });
  for await (const _ of res.body ?? []);
}

async function app(): Promise<void> {
  const parsed = parseConfig(env);
  if (!parsed.enabled) throw new Error("parts: the environment does not enable the broker");
  const cache = new TokenCache({
    targets: parsed.config.targets,
    refreshAheadSeconds: 600,
    minTtlSeconds: 120,
    source: async (target) => ({ accessToken: "dapi-parts", tokenType: "Bearer", scope: target.scope, issuedAt: Date.now(), expiresAt: Date.now() + 3_600_000 }),
  });
  for (const name of parsed.config.targets.keys()) await cache.get(name, { waitMs: 10_000 });
  const { buildApp } = (await import(lazy("app"))) as typeof App;
  const built = buildApp({ config: parsed.config, cache, sessionToken: env.AWS_SESSION_TOKEN, log: createLogger({ level: "error" }) });
  await built.ready();
  const server = createServer(built.routing);
  await new Promise<void>((r) => server.listen(Number(env.DATABRICKS_TOKEN_BROKER_PORT), "127.0.0.1", r));
}

const PARTS: Record<string, () => Promise<void>> = { sts, post: () => exchange(httpPost), fetch: () => exchange(fetch), app };
await stage("start");
for (const part of list.split(",").filter(Boolean)) {
  const run = PARTS[part];
  if (!run) throw new Error(`parts: unknown part ${part}; expected ${Object.keys(PARTS).join(", ")}`);
  await run();
  await stage(part);
}
process.exit(0);
