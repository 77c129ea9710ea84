/**
 * A function with the built layer under AWS's Lambda emulator, configured exactly as the
 * README's set-up step 4 says, against the STS and Databricks stand-ins: what every peer test
 * starts from. Only two variables are the test's own: the broker's port (test files run side
 * by side, so each takes a free one; DATABRICKS_METADATA_SERVICE_URL follows it) and
 * AWS_ENDPOINT_URL_STS (the STS stand-in).
 */
import { join } from "node:path";
import { CLIENT_ID, freePort, ROOT } from "../stack.js";
import { findLeaks } from "../secrets.js";
import { startDatabricks, type DatabricksOptions, type DatabricksStandIn } from "../standins/databricks.js";
import { startSts, type StsOptions, type StsStandIn } from "../standins/sts.js";
import { type Rie, type RieOptions, startRie } from "./rie.js";

export const LAYER = join(ROOT, "dist", "layer");
export const FUNCTIONS = join(ROOT, "test", "peers", "functions");

export interface PeerStackOptions {
  task: string;
  bootstrap: string[];
  /** A service-principal federation policy (DATABRICKS_CLIENT_ID set); false: an account-wide one. */
  servicePrincipal?: boolean;
  /** Set DATABRICKS_AUTH_TYPE=metadata-service, as the README says (default true). */
  authType?: boolean;
  /** Merged last: `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  sts?: StsOptions;
  db?: Partial<DatabricksOptions>;
  rie?: Partial<RieOptions>;
  /** The layer bound on /opt (default: the plain layer, dist/layer). */
  layer?: string;
}

export interface PeerStack {
  sts: StsStandIn;
  db: DatabricksStandIn;
  rie: Rie;
  port: number;
  env: Record<string, string | undefined>;
  /** Who Databricks says the token belongs to: the service principal, or the role for an account-wide policy. */
  user: string;
  /** Invokes the function and parses its JSON answer. */
  call(event: unknown): Promise<Record<string, unknown>>;
  /** Stops everything; fails if a log line or answer carried a token, JWT or credential. */
  close(): Promise<void>;
}

export async function startPeerStack(o: PeerStackOptions): Promise<PeerStack> {
  const servicePrincipal = o.servicePrincipal ?? true;
  const sts = await startSts({ region: "us-east-1", ...o.sts });
  const db = await startDatabricks({
    policy: {
      issuer: sts.issuer,
      audiences: ["databricks"],
      subject: sts.settings.roleArn,
      ...(servicePrincipal ? { servicePrincipalId: CLIENT_ID } : {}),
    },
    ...o.db,
  });
  const port = await freePort();
  const env: Record<string, string | undefined> = {
    DATABRICKS_TOKEN_BROKER_ENABLED: "true",
    DATABRICKS_HOST: db.url,
    ...(servicePrincipal ? { DATABRICKS_CLIENT_ID: CLIENT_ID } : {}),
    DATABRICKS_METADATA_SERVICE_URL: `http://localhost:${port}/metadata`,
    ...((o.authType ?? true) ? { DATABRICKS_AUTH_TYPE: "metadata-service" } : {}),
    DATABRICKS_TOKEN_BROKER_PORT: String(port),
    AWS_ENDPOINT_URL_STS: sts.url,
    ...o.env,
  };
  const rie = await startRie({ layer: o.layer ?? LAYER, task: o.task, bootstrap: o.bootstrap, env, ...o.rie });
  const answers: string[] = [];
  return {
    sts,
    db,
    rie,
    port,
    env,
    user: servicePrincipal ? CLIENT_ID : sts.settings.roleArn,
    async call(event) {
      const r = await rie.invoke(event);
      answers.push(r.body);
      if (r.status !== 200) throw new Error(`invoke answered ${r.status}: ${r.body}\n${rie.lines.slice(-20).join("\n")}`);
      try {
        return JSON.parse(r.body) as Record<string, unknown>;
      } catch {
        throw new Error(`the function's answer is not JSON: ${r.body}\n${rie.lines.slice(-20).join("\n")}`);
      }
    },
    async close() {
      await rie.close();
      await Promise.all([sts.close(), db.close()]);
      // The function's answers name users, never tokens; the extension's lines never carry one.
      const leaks = findLeaks({
        lines: rie.lines,
        reports: [],
        answers: answers.map((body) => ({ method: "POST", route: "/invoke", status: 200, body })),
        secrets: [...db.issuedTokens.map((t) => t.token), ...sts.issued.map((j) => j.token), rie.env.AWS_SESSION_TOKEN, rie.env.AWS_SECRET_ACCESS_KEY],
      });
      if (leaks.length > 0) throw new Error(`secrets leaked:\n${leaks.slice(0, 20).join("\n")}`);
    },
  };
}
