/**
 * A simulated Lambda function, one process per execution environment, driven over IPC by the
 * bench. Two ways to reach Databricks:
 *  - `direct`: what the Databricks documentation's example does. The module loads the AWS SDK
 *    at init; the first invoke of the environment constructs an STS client, asks STS for a
 *    JWT, exchanges it at the token endpoint, and later invokes reuse that token.
 *  - `broker`: asks the extension on loopback for a token at every invoke.
 * Either way an invoke ends with the authorised call `GET /api/2.0/preview/scim/v2/Me`.
 */
import type * as Sts from "@aws-sdk/client-sts";

export type FunctionMode = "direct" | "broker";
export interface InvokeMessage {
  type: "invoke";
  id: number;
}
/** `tokenMs`: how long getting the token took within the invoke (nothing when reused). */
export type FunctionMessage = { type: "ready" } | { type: "done"; id: number; status: number; tokenMs: number; error?: string };

const mode = process.env.BENCH_FUNCTION_MODE as FunctionMode;
const host = process.env.DATABRICKS_HOST ?? "";
// A Node.js function imports its SDK at module load, so that cost falls in the function's init.
const sdk: typeof Sts | undefined = mode === "direct" ? await import("@aws-sdk/client-sts") : undefined;

/** Below this much life left the function's own token is thrown away, as the broker's minimum TTL does. */
const MIN_TTL_MS = 120_000;
let own: { token: string; expiresAt: number } | undefined;

async function directToken(): Promise<string> {
  if (own && own.expiresAt - Date.now() > MIN_TTL_MS) return own.token;
  if (!sdk) throw new Error("no SDK loaded");
  const sts = new sdk.STSClient({ region: process.env.AWS_REGION ?? "us-east-1" });
  const jwt = await sts.send(new sdk.GetWebIdentityTokenCommand({ Audience: ["databricks"], SigningAlgorithm: "RS256", DurationSeconds: 300 }));
  const sentAt = Date.now();
  const res = await fetch(`${host}/oidc/v1/token`, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
      subject_token: jwt.WebIdentityToken ?? "",
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
      scope: "all-apis",
      client_id: process.env.DATABRICKS_CLIENT_ID ?? "",
    }),
  });
  if (!res.ok) throw new Error(`exchange answered ${res.status}`);
  const body = (await res.json()) as { access_token: string; expires_in: number };
  own = { token: body.access_token, expiresAt: sentAt + body.expires_in * 1000 };
  return own.token;
}

async function brokerToken(): Promise<string> {
  const res = await fetch(`http://localhost:${process.env.BROKER_PORT}/token`, { headers: { "x-aws-session-token": process.env.AWS_SESSION_TOKEN ?? "" } });
  if (!res.ok) throw new Error(`broker answered ${res.status}`);
  return ((await res.json()) as { access_token: string }).access_token;
}

async function handler(): Promise<{ status: number; tokenMs: number }> {
  const started = performance.now();
  const token = mode === "direct" ? await directToken() : await brokerToken();
  const tokenMs = performance.now() - started;
  const res = await fetch(`${host}/api/2.0/preview/scim/v2/Me`, { headers: { authorization: `Bearer ${token}` } });
  await res.arrayBuffer();
  return { status: res.status, tokenMs };
}

const send = (m: FunctionMessage) => process.send?.(m);
process.on("message", (m: InvokeMessage) => {
  if (m.type !== "invoke") return;
  handler().then(
    ({ status, tokenMs }) => send({ type: "done", id: m.id, status, tokenMs }),
    (err: unknown) => send({ type: "done", id: m.id, status: 0, tokenMs: 0, error: String(err) }),
  );
});
// The bench owns this process's life: it ends when the bench disconnects.
process.on("disconnect", () => process.exit(0));
send({ type: "ready" });
