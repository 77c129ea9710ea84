// A Node.js function as a user writes one (README "Use from the function", examples/node),
// bundled with esbuild as users bundle for Lambda and run by aws-lambda-ric under AWS's
// Lambda emulator. The event picks the way it asks for a token:
//   {"use": "token"}: GET /token with the session token, then the Databricks API with it;
//   {"use": "sdk"}:   @databricks/sdk-experimental's `new WorkspaceClient({})`, configured only
//                     by the environment (DATABRICKS_HOST, DATABRICKS_METADATA_SERVICE_URL, ...).
// A test hook, {"barrier": url}, first waits on a GET of that loopback URL: the test holds each
// invoke there until all have arrived, so they ask the broker at once, provably concurrent.
// It reports what happened rather than throwing, so the test reads the SDK's own error text.
import { WorkspaceClient } from "@databricks/sdk-experimental";

const BROKER = `http://localhost:${process.env.DATABRICKS_TOKEN_BROKER_PORT ?? "2775"}`;

async function viaToken() {
  const res = await fetch(`${BROKER}/token`, { headers: { "X-Aws-Session-Token": process.env.AWS_SESSION_TOKEN ?? "" } });
  const body = await res.json();
  if (!res.ok) throw new Error(`token broker answered ${res.status}: ${body.message}`);
  const host = process.env.DATABRICKS_HOST.replace(/\/$/, "");
  const me = await fetch(`${host}/api/2.0/preview/scim/v2/Me`, { headers: { Authorization: `Bearer ${body.access_token}` } });
  const user = await me.json();
  if (!me.ok) throw new Error(`Databricks answered ${me.status}: ${user.message ?? JSON.stringify(user)}`);
  return user.userName;
}

async function viaSdk() {
  const me = await new WorkspaceClient({}).currentUser.me();
  return me.userName;
}

/** The error as a user would read it: class, message, and what fetch hides in `cause`. */
const describe = (err) => {
  const cause = err?.cause ? ` (cause: ${err.cause.name ?? "Error"}: ${err.cause.message ?? String(err.cause)})` : "";
  return `${err?.name ?? "Error"}: ${err?.message ?? String(err)}${cause}`;
};

export async function handler(event) {
  const started = performance.now();
  try {
    if (event?.barrier) await (await fetch(event.barrier)).text();
    const userName = event?.use === "sdk" ? await viaSdk() : await viaToken();
    return { ok: true, user_name: userName, ms: performance.now() - started };
  } catch (err) {
    return { ok: false, error: describe(err) };
  }
}
