// A Node.js function that calls Databricks with the token the broker serves.
// The broker runs beside it as an extension; no secret, no STS call, no token code here.
// Or let @databricks/sdk-experimental find the token itself: set DATABRICKS_HOST,
// DATABRICKS_METADATA_SERVICE_URL=http://localhost:2775/metadata and
// DATABRICKS_AUTH_TYPE=metadata-service on the function, then `new WorkspaceClient({})`.
const BROKER = `http://localhost:${process.env.DATABRICKS_TOKEN_BROKER_PORT ?? "2775"}`;

/** Asks the broker for a token; it answers from its cache, refreshing ahead of expiry. */
async function databricksToken() {
  // The session token proves the caller runs inside this execution environment.
  const res = await fetch(`${BROKER}/token`, { headers: { "X-Aws-Session-Token": process.env.AWS_SESSION_TOKEN ?? "" } });
  const body = await res.json();
  if (!res.ok) throw new Error(`token broker answered ${res.status}: ${body.message}`);
  return body;
}

export async function handler() {
  const { access_token: token, expires_in: expiresIn } = await databricksToken();
  const host = process.env.DATABRICKS_HOST.replace(/\/$/, "");
  const res = await fetch(`${host}/api/2.0/preview/scim/v2/Me`, { headers: { Authorization: `Bearer ${token}` } });
  const me = await res.json();
  if (!res.ok) throw new Error(`Databricks answered ${res.status}: ${me.message ?? JSON.stringify(me)}`);
  return { databricksUser: me.userName ?? me.displayName, tokenExpiresIn: expiresIn };
}
