/**
 * `npm start`: the built layer's extension run exactly as Lambda runs it (under the
 * Extensions API emulator) against the STS and Databricks stand-ins, driving the Node.js
 * example handler through a short story, printed as a timeline.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { freePort, LAUNCHER, logs, ROOT, SESSION_TOKEN, startStack, type Stack } from "../test/stack.js";

const HELP = `npm start [-- options]

Builds dist/layer, starts local stand-ins for AWS STS and Databricks, runs the layer's
extension as Lambda runs it, and drives examples/node/index.mjs through a cold start,
warm invokes, a refresh ahead of expiry, a freeze longer than the token's life, and a
shutdown. Everything stays on 127.0.0.1; nothing reaches AWS or Databricks.

Options:
  --lifetime SECONDS   Databricks token lifetime in the story (default 10, at least 6)
  --port PORT          the extension's port (default: a free one)
  --logs               also print the extension's own JSON log lines
  --no-build           run the dist/layer already built
  --help               this text
`;

const FINGERPRINT = (token: string) => createHash("sha256").update(token).digest("hex").slice(0, 8);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { lifetime: { type: "string", default: "10" }, port: { type: "string" }, logs: { type: "boolean", default: false }, help: { type: "boolean", default: false } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const lifetime = Number(values.lifetime);
  if (!Number.isInteger(lifetime) || lifetime < 6 || lifetime > 120) throw new Error("--lifetime must be a whole number of seconds from 6 to 120");
  const port = values.port === undefined ? await freePort() : Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error("--port must be a port number");
  const refreshAhead = Math.floor(lifetime / 2);
  const minTtl = Math.max(1, Math.floor(lifetime / 4));

  const t0 = performance.now();
  const say = (text: string) => process.stdout.write(`${`+${((performance.now() - t0) / 1000).toFixed(2)}s`.padStart(8)}  ${text}\n`);
  const detail = (text: string) => process.stdout.write(`${" ".repeat(10)}${text}\n`);

  let stack: Stack | undefined;
  try {
    stack = await startStack({
      db: { expiresIn: lifetime },
      env: {
        DATABRICKS_TOKEN_BROKER_PORT: String(port),
        DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: String(refreshAhead),
        DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: String(minTtl),
        DATABRICKS_TOKEN_BROKER_LOG_LEVEL: "info",
      },
      lambda: values.logs ? { onLine: (_stream, line) => detail(`│ ${line}`) } : {},
    });
    const s = stack;
    const upstream = () => `STS calls ${s.sts.calls.filter((c) => c.ok).length}, exchanges ${s.db.exchanges.filter((e) => e.ok).length}`;
    say(`stand-ins up on loopback: STS ${s.sts.url}, Databricks ${s.db.url}`);
    detail(`federation policy: issuer ${s.sts.issuer}, audience databricks, subject ${s.sts.settings.roleArn}`);
    detail(`token lifetime ${lifetime} s; refresh ahead ${refreshAhead} s (half the life at most); never served under ${minTtl} s`);

    say(`cold start: Lambda starts ${LAUNCHER.replace(`${ROOT}/`, "")}`);
    const init = await s.lambda.init;
    if (!init.ok) throw new Error(`init failed: ${JSON.stringify(init)}\n${s.lambda.stdout.join("\n")}`);
    const listening = logs(s.lambda).find((l) => l.msg === "listening")?.addresses;
    const addresses = Array.isArray(listening) ? listening.join(", ") : `127.0.0.1:${port}`;
    say(`extension listening on ${addresses} and registered for ${init.registration.events.join(", ")} after ${init.spawnToRegisteredMs.toFixed(0)} ms; init done, prefetch started`);
    detail("Lambda freezes the environment between events: here until the first invoke, prefetch and all");

    // The function: the repository's Node.js example, with the environment Lambda would give it.
    Object.assign(process.env, { DATABRICKS_HOST: s.db.url, AWS_SESSION_TOKEN: SESSION_TOKEN, DATABRICKS_TOKEN_BROKER_PORT: String(port) });
    const example = (await import(pathToFileURL(join(ROOT, "examples", "node", "index.mjs")).href)) as { handler: () => Promise<{ databricksUser: string; tokenExpiresIn: number }> };
    const lastToken = () => s.db.issuedTokens.at(-1);
    // The fingerprint of the token the handler actually used, as Databricks saw it.
    const usedToken = () => s.db.apiCalls.at(-1)?.tokenHash ?? "?";
    let invokes = 0;
    const invoke = async (label: string) => {
      invokes += 1;
      const r = await s.lambda.invoke(() => example.handler());
      if (!r.result) throw new Error(`invoke ${invokes} failed`);
      say(
        `invoke ${invokes} (${label}): Databricks says hello to ${r.result.databricksUser}; token ${usedToken()} has ${r.result.tokenExpiresIn} s left; ${r.timings.durationMs.toFixed(0)} ms`,
      );
      return r;
    };

    await invoke("cold");
    detail(`the handler's request joined the prefetch: ${upstream()}`);
    for (let i = 0; i < 3; i++) await invoke("warm, from the cache");
    detail(`no upstream call for warm invokes: ${upstream()}`);

    const first = lastToken();
    if (!first) throw new Error("no token issued");
    const untilWindow = first.expiresAt - refreshAhead * 1000 - Date.now() + 500;
    say(`waiting ${(untilWindow / 1000).toFixed(1)} s until the token is inside its refresh-ahead window`);
    await sleep(Math.max(0, untilWindow));
    const refreshed = await invoke("inside the refresh window");
    const fresh = lastToken();
    detail(`the handler was served the still-valid token while INVOKE started a refresh; the extension finished it`);
    detail(`before asking for the next event (${refreshed.timings.postRuntimeMs.toFixed(0)} ms after the handler): new token ${fresh ? FINGERPRINT(fresh.token) : "?"}; ${upstream()}`);

    const frozenFor = lifetime + 1;
    // The emulator froze the environment when the invoke ended, as Lambda does; the next invoke thaws it.
    say(`no invoke for ${frozenFor} s, longer than the token's life: the environment stays frozen (SIGSTOP)`);
    await sleep(frozenFor * 1000);
    say("the next invoke thaws it (SIGCONT): the cached token expired while frozen");
    await invoke("after the thaw");
    detail(`the expired token was never served; the request waited for a fresh one: ${upstream()}`);

    const bye = await s.lambda.shutdown();
    say(`SHUTDOWN: the extension exited with code ${bye.code} after ${bye.elapsedMs.toFixed(0)} ms (deadline 2000 ms)`);
    const expiredServed = s.db.apiCalls.filter((c) => c.status !== 200).length;
    say(`done: ${invokes} invokes, ${upstream()}, Databricks API calls refused: ${expiredServed}`);
    return bye.code === 0 && expiredServed === 0 ? 0 : 1;
  } finally {
    await stack?.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`npm start failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
