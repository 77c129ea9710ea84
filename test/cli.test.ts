/**
 * `setup` and `doctor` in-process against the stand-ins, through the real IAM and STS clients
 * and real fetch, in every failure the stand-ins can produce; and the built command run as a
 * user runs it. No output may carry a token, a JWT or a credential.
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { EnableOutboundWebIdentityFederationCommand, GetOutboundWebIdentityFederationInfoCommand, IAMClient } from "@aws-sdk/client-iam";
import { STSClient } from "@aws-sdk/client-sts";
import { webIdentityTokenPort } from "../src/sts-client.js";
import { afterEach, describe, expect, it } from "vitest";
import type { Check } from "../src/diagnosis.js";
import { runCli } from "../src/cli/main.js";
import { CLIENT_ID, ROOT } from "./stack.js";
import { startDatabricks, type DatabricksOptions, type DatabricksStandIn } from "./standins/databricks.js";
import { ENABLE, GET_INFO, startIam, type IamOptions, type IamStandIn } from "./standins/iam.js";
import { startSts, type StsOptions, type StsStandIn } from "./standins/sts.js";

const CREDENTIALS = { accessKeyId: "AKIDCLITESTEXAMPLE", secretAccessKey: "cli-test-secret-access-key-0123456789", sessionToken: "cli-test-session-token-IQoJb3JpZ2luX2Vj" };
const JWT_SHAPE = /eyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}/;
const CLI = join(ROOT, "dist", "layer", "databricks-token-broker", "cli.mjs");

interface World {
  sts: StsStandIn;
  iam: IamStandIn;
  db: DatabricksStandIn;
  env: Record<string, string | undefined>;
  run(argv: string[], env?: Record<string, string | undefined>): Promise<{ code: number; out: string; err: string }>;
  doctor(env?: Record<string, string | undefined>, argv?: string[]): Promise<{ code: number; ok: boolean; checks: Check[]; text: string }>;
  setup(argv?: string[], env?: Record<string, string | undefined>): Promise<{ code: number; report: SetupJson; text: string }>;
}

interface SetupJson {
  ok: boolean;
  federation: { enabled: boolean | null; enabledNow: boolean; issuer: string | null; problem: { code: string; fix: string } | null };
  role: { arn: string | null; source: string | null; note: string | null; problem: { code: string } | null };
  iamPolicy: { Statement: { Action: string; Condition: Record<string, Record<string, unknown>> }[] };
  commands: { enableFederation: string | null; putRolePolicy: string; findServicePrincipal: string | null; createFederationPolicy: string };
  environment: Record<string, string>;
  unresolved: { placeholder: string; fix: string }[];
}

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

/** Everything a leak could be: every JWT STS signed, every token Databricks issued, the credentials. */
function expectNoSecrets(w: World, ...texts: string[]): void {
  const secrets = [...w.sts.issued.map((i) => i.token), ...w.db.issuedTokens.map((t) => t.token), CREDENTIALS.secretAccessKey, CREDENTIALS.sessionToken];
  for (const text of texts) {
    expect(JWT_SHAPE.test(text), "output carries a JWT").toBe(false);
    for (const s of secrets) expect(text.includes(s), "output carries a secret").toBe(false);
  }
}

interface WorldOptions {
  sts?: StsOptions;
  iam?: Omit<IamOptions, "sts">;
  db?: Partial<DatabricksOptions>;
  env?: Record<string, string | undefined>;
  /** The clients' credentials, or a provider; the test credentials by default. */
  credentials?: typeof CREDENTIALS | (() => Promise<typeof CREDENTIALS>);
}

async function world(o: WorldOptions = {}): Promise<World> {
  const sts = await startSts({ region: "us-east-1", ...o.sts });
  const iam = await startIam({ sts, ...o.iam });
  const db = await startDatabricks({
    policy: { issuer: sts.issuer, audiences: ["databricks"], subject: sts.settings.roleArn, servicePrincipalId: CLIENT_ID },
    lifetime: "subject-token",
    ...o.db,
  });
  closers.push(() => sts.close(), () => iam.close(), () => db.close());
  const clients = (region: string) => {
    const credentials = o.credentials ?? CREDENTIALS;
    const stsClient = new STSClient({ region, endpoint: sts.url, credentials, maxAttempts: 1 });
    return { iam: new IAMClient({ region, endpoint: iam.url, credentials, maxAttempts: 1 }), sts: stsClient, getWebIdentityToken: webIdentityTokenPort(stsClient) };
  };
  const baseEnv: Record<string, string | undefined> = {
    DATABRICKS_TOKEN_BROKER_ENABLED: "true",
    DATABRICKS_HOST: db.url,
    DATABRICKS_CLIENT_ID: CLIENT_ID,
    AWS_REGION: "us-east-1",
    ...o.env,
  };
  const w: World = {
    sts,
    iam,
    db,
    env: baseEnv,
    async run(argv, env = {}) {
      let out = "";
      let err = "";
      const code = await runCli(argv, { env: { ...baseEnv, ...env }, out: (t) => (out += t), err: (t) => (err += t), clients, fetch: (u, i) => fetch(u, i) });
      expectNoSecrets(w, out, err);
      return { code, out, err };
    },
    async doctor(env = {}, argv = []) {
      const json = await w.run(["doctor", "--json", ...argv], env);
      const text = await w.run(["doctor", ...argv], env);
      const report = JSON.parse(json.out) as { ok: boolean; checks: Check[] };
      expect(text.code).toBe(json.code);
      return { code: json.code, ok: report.ok, checks: report.checks, text: text.out };
    },
    async setup(argv = [], env = {}) {
      const json = await w.run(["setup", "--json", ...argv], env);
      const text = await w.run(["setup", ...argv], env);
      return { code: json.code, report: JSON.parse(json.out) as SetupJson, text: text.out };
    },
  };
  return w;
}

const step = (checks: Check[], name: string, target?: string) => {
  const found = checks.filter((c) => c.step === name && (target === undefined || c.target === target));
  expect(found.length, `check ${name}`).toBeGreaterThan(0);
  return found[found.length - 1]!;
};
const statuses = (checks: Check[]) => Object.fromEntries(checks.map((c) => [`${c.step}${c.target ? `[${c.target}]` : ""}`, c.status]));

describe("the IAM stand-in", () => {
  it("speaks the wire format of the real client: actions, XML shapes, and the registry's error codes", async () => {
    const w = await world({ iam: { enabled: false } });
    const client = new IAMClient({ region: "eu-west-1", endpoint: w.iam.url, credentials: CREDENTIALS, maxAttempts: 1 });
    await expect(client.send(new GetOutboundWebIdentityFederationInfoCommand({}))).rejects.toMatchObject({ name: "FeatureDisabledException", Code: "FeatureDisabled", $metadata: { httpStatusCode: 404 } });
    await expect(client.send(new EnableOutboundWebIdentityFederationCommand({}))).resolves.toMatchObject({ IssuerIdentifier: w.sts.issuer });
    await expect(client.send(new GetOutboundWebIdentityFederationInfoCommand({}))).resolves.toMatchObject({ IssuerIdentifier: w.sts.issuer, JwtVendingEnabled: true });
    await expect(client.send(new EnableOutboundWebIdentityFederationCommand({}))).rejects.toMatchObject({ name: "FeatureEnabledException", Code: "FeatureEnabled", $metadata: { httpStatusCode: 409 } });
    expect(w.iam.calls.map((c) => [c.action, c.service, c.status])).toEqual([
      [GET_INFO, "iam", 404],
      [ENABLE, "iam", 200],
      [GET_INFO, "iam", 200],
      [ENABLE, "iam", 409],
    ]);
    // Enabling through IAM is what lets STS sign.
    expect(w.sts.settings.enabled).toBe(true);
  });
});

describe("setup", () => {
  it("reports an enabled account: issuer, the role's policy with audience and duration conditions, and the exact commands", async () => {
    const w = await world({ env: { DATABRICKS_TOKEN_BROKER_AUDIENCE: "my-audience", DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "900" } });
    const { code, report, text } = await w.setup(["--service-principal-id", "4711"]);
    expect(code).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.federation).toEqual({ enabled: true, enabledNow: false, issuer: w.sts.issuer, problem: null });
    expect(report.role).toMatchObject({ arn: "arn:aws:iam::123456789012:role/broker-test", source: "session" });
    expect(report.iamPolicy.Statement[0]).toMatchObject({
      Action: "sts:GetWebIdentityToken",
      Condition: { "ForAllValues:StringEquals": { "sts:IdentityTokenAudience": "my-audience" }, NumericLessThanEquals: { "sts:DurationSeconds": 900 } },
    });
    expect(report.commands.createFederationPolicy).toBe(
      `databricks account service-principal-federation-policy create 4711 --json '{"oidc_policy":{"issuer":"${w.sts.issuer}","audiences":["my-audience"],"subject":"arn:aws:iam::123456789012:role/broker-test"}}'`,
    );
    expect(report.commands.putRolePolicy).toMatch(/^aws iam put-role-policy --role-name broker-test --policy-name databricks-token-broker --policy-document '\{.*"sts:DurationSeconds":900.*\}'$/);
    expect(report.commands.findServicePrincipal).toBeNull();
    expect(report.environment).toMatchObject({ DATABRICKS_TOKEN_BROKER_AUDIENCE: "my-audience", DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "900", DATABRICKS_CLIENT_ID: CLIENT_ID });
    // The SDKs' variables come as a pair: the URL alone makes them refuse to start beside DATABRICKS_CLIENT_ID.
    expect(report.environment).toMatchObject({ DATABRICKS_METADATA_SERVICE_URL: "http://localhost:2775/metadata", DATABRICKS_AUTH_TYPE: "metadata-service" });
    expect(text).toMatch(/DATABRICKS_METADATA_SERVICE_URL=http:\/\/localhost:2775\/metadata\n\s+DATABRICKS_AUTH_TYPE=metadata-service\n/);
    expect(text).toContain("✓ Outbound web identity federation: enabled");
    expect(text).toContain(`Issuer URL: ${w.sts.issuer}`);
    expect(text).toContain(report.commands.createFederationPolicy);
    // Read-only without --enable.
    expect(w.iam.calls.every((c) => c.action === GET_INFO)).toBe(true);
  });

  it("the printed policy and command are what the stand-ins then accept: the doctor passes after following them", async () => {
    const w = await world({ iam: { enabled: false }, db: { policy: { issuer: "https://not-yet.example", subject: "nobody", servicePrincipalId: CLIENT_ID } } });
    const { report } = await w.setup(["--enable"]);
    expect(report.federation).toMatchObject({ enabled: true, enabledNow: true });
    const body = JSON.parse(/--json '(.*)'$/.exec(report.commands.createFederationPolicy)![1]!) as { oidc_policy: { issuer: string; audiences: string[]; subject: string } };
    w.db.settings.policy = { ...body.oidc_policy, servicePrincipalId: CLIENT_ID };
    const cond = report.iamPolicy.Statement[0]!.Condition;
    w.sts.settings.allow = {
      audiences: [cond["ForAllValues:StringEquals"]!["sts:IdentityTokenAudience"] as string],
      maxDurationSeconds: cond.NumericLessThanEquals!["sts:DurationSeconds"] as number,
    };
    const d = await w.doctor();
    expect(d.ok, d.text).toBe(true);
  });

  it("--enable on a disabled account enables it (and STS then signs); without --enable it only says how", async () => {
    const w = await world({ iam: { enabled: false } });
    const before = await w.setup();
    expect(before.code).toBe(1);
    expect(before.report.federation).toEqual({ enabled: false, enabledNow: false, issuer: null, problem: null });
    expect(before.report.commands.enableFederation).toBe("databricks-token-broker setup --enable");
    expect(before.report.commands.createFederationPolicy).toContain('"issuer":"<ISSUER_URL>"');
    expect(before.text).toContain("✗ Outbound web identity federation: disabled");
    expect(w.iam.calls.some((c) => c.action === ENABLE)).toBe(false);

    const after = await w.setup(["--enable", "--service-principal-id", "4711"]);
    expect(after.code).toBe(0);
    expect(after.report.federation).toEqual({ enabled: true, enabledNow: true, issuer: w.sts.issuer, problem: null });
    expect(w.sts.settings.enabled).toBe(true);
    expect(after.report.commands.createFederationPolicy).toContain(`"issuer":"${w.sts.issuer}"`);
  });

  it("--enable on an enabled account is not an error and calls nothing that changes it", async () => {
    const w = await world();
    const { code, report } = await w.setup(["--enable", "--service-principal-id", "4711"]);
    expect(code).toBe(0);
    expect(report.federation).toMatchObject({ enabled: true, enabledNow: false });
    expect(w.iam.calls.some((c) => c.action === ENABLE)).toBe(false);
  });

  it("FeatureEnabled from a concurrent enable counts as enabled, and the issuer is read back", async () => {
    const w = await world();
    // Get says disabled once; by the time Enable arrives someone else switched it on.
    w.iam.addFault({ kind: "error", code: "FeatureDisabled", status: 404 });
    const { code, report } = await w.run(["setup", "--json", "--enable", "--service-principal-id", "4711"]).then((r) => ({ code: r.code, report: JSON.parse(r.out) as SetupJson }));
    expect(code).toBe(0);
    expect(report.federation).toMatchObject({ enabled: true, issuer: w.sts.issuer, problem: null });
    expect(w.iam.calls.map((c) => [c.action, c.error])).toEqual([
      [GET_INFO, "FeatureDisabled"],
      [ENABLE, "FeatureEnabled"],
      [GET_INFO, undefined],
    ]);
  });

  it("an account that had federation once reports JwtVendingEnabled=false with its issuer; --enable switches it back on", async () => {
    const w = await world({ iam: { enabled: false, disabledAnswer: "JwtVendingEnabled=false" } });
    const before = await w.setup();
    expect(before.report.federation).toMatchObject({ enabled: false, issuer: w.sts.issuer });
    expect(before.code).toBe(1);
    const after = await w.setup(["--enable"]);
    expect(after.report.federation).toMatchObject({ enabled: true, enabledNow: true, issuer: w.sts.issuer });
  });

  it.each([
    // A state IAM would not tell is unknown (null), not off; one it told stays what it said.
    ["read denied", { denied: [GET_INFO] }, false, null, "unknown, IAM could not be read: AccessDenied", /iam:GetOutboundWebIdentityFederationInfo/],
    ["enable denied", { enabled: false, denied: [ENABLE] }, true, false, "disabled, and enabling it failed: AccessDenied", /iam:EnableOutboundWebIdentityFederation/],
  ] as const)("IAM %s → ✗ with the permission to ask for", async (_name, iam, enable, enabled, says, fix) => {
    const w = await world({ iam: { ...iam, denied: [...iam.denied] } });
    const { code: exit, report, text } = await w.setup([...(enable ? ["--enable"] : []), "--service-principal-id", "4711"]);
    expect(exit).toBe(1);
    expect(report.federation).toMatchObject({ enabled, problem: { code: "AccessDenied", fix: expect.stringMatching(fix) } });
    expect(text).toContain(`✗ Outbound web identity federation: ${says}`);
    expect(w.sts.settings.enabled).toBe(!enable);
  });

  it.each([
    ["a 5xx", { kind: "error", code: "ServiceFailure", status: 500 }, "ServiceFailure", /IAM failed; try again/],
    ["throttling", { kind: "error", code: "Throttling", status: 400 }, "Throttling", /throttling/],
    ["a reset connection", { kind: "reset" }, undefined, /could not be reached/],
    ["an HTML error page", { kind: "raw", status: 502, body: "<html><body>Bad Gateway</body></html>" }, undefined, /./],
    ["a truncated answer", { kind: "drop" }, undefined, /could not be reached/],
  ] as const)("IAM answering %s → ✗ with a fix, never a crash", async (_name, fault, code, fix) => {
    const w = await world();
    w.iam.setFault(fault);
    const { code: exit, report } = await w.setup();
    expect(exit).toBe(1);
    expect(report.federation.problem).toMatchObject({ ...(code ? { code } : {}), fix: expect.stringMatching(fix) });
  });

  it("IAM unreachable → ✗ could not be reached; enabled is unknown (null), not false, in --json", async () => {
    const w = await world();
    await w.iam.refuseConnections();
    const { code, report, text } = await w.setup(["--service-principal-id", "4711"]);
    expect(code).toBe(1);
    expect(report.federation).toMatchObject({ enabled: null, enabledNow: false, issuer: null, problem: { fix: expect.stringMatching(/could not be reached/) } });
    expect(report.unresolved).toEqual([{ placeholder: "<ISSUER_URL>", fix: "read it with credentials that may call iam:GetOutboundWebIdentityFederationInfo, and run setup again" }]);
    expect(text).toContain("✗ Outbound web identity federation: unknown, IAM could not be read: ");
    expect(text).not.toContain("disabled");
  });

  it("--role-arn wins over the session; a role path survives into the subject and the --role-name", async () => {
    const w = await world();
    const arn = "arn:aws:iam::123456789012:role/service-role/my-fn-role";
    const { report } = await w.setup(["--role-arn", arn]);
    expect(report.role).toMatchObject({ arn, source: "--role-arn" });
    expect(report.commands.createFederationPolicy).toContain(`"subject":"${arn}"`);
    expect(report.commands.putRolePolicy).toContain("--role-name my-fn-role ");
    expect(w.sts.calls.some((c) => c.action === "GetCallerIdentity")).toBe(false);
  });

  it("derives the role from an assumed-role session, and warns that the session ARN drops a path", async () => {
    const w = await world({ sts: { roleArn: "arn:aws:iam::123456789012:role/service-role/fn" } });
    const { report } = await w.setup();
    expect(report.role).toMatchObject({ arn: "arn:aws:iam::123456789012:role/fn", source: "session", note: expect.stringMatching(/path.*--role-arn/) });
  });

  it("credentials of an IAM user → ✗ asks for --role-arn rather than guessing; --role-name gets a name placeholder, not the ARN's", async () => {
    const w = await world({ sts: { callerArn: "arn:aws:iam::123456789012:user/alice" } });
    const { code, report, text } = await w.setup(["--service-principal-id", "4711"]);
    expect(code).toBe(1);
    expect(report.role).toMatchObject({ arn: null, note: expect.stringMatching(/user\/alice.*--role-arn/) });
    expect(report.commands.createFederationPolicy).toContain('"subject":"<ROLE_ARN>"');
    expect(report.commands.putRolePolicy).toMatch(/^aws iam put-role-policy --role-name '<ROLE_NAME>' --policy-name databricks-token-broker /);
    expect(report.unresolved.map((u) => [u.placeholder, u.fix])).toEqual([
      ["<ROLE_ARN>", "pass the function's execution role with --role-arn"],
      ["<ROLE_NAME>", "pass the function's execution role with --role-arn"],
    ]);
    expect(text).toContain("✗ Execution role: unknown");
    expect(text).not.toContain("ROLE_ARN>' ");
  });

  it("an IAM Identity Center session is never taken for the function's role", async () => {
    const w = await world({ sts: { callerArn: "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_AdministratorAccess_0123abcd/alice@example.com" } });
    const { code, report } = await w.setup();
    expect(code).toBe(1);
    expect(report.role).toMatchObject({ arn: null, note: expect.stringMatching(/IAM Identity Center session.*--role-arn/) });
  });

  it("GetCallerIdentity failing → ✗ with the reason", async () => {
    const w = await world();
    w.sts.setFault({ kind: "error", code: "ExpiredToken", status: 403, message: "The security token included in the request is expired" });
    const { code, report } = await w.setup();
    expect(code).toBe(1);
    expect(report.role.problem).toMatchObject({ code: "ExpiredToken" });
  });

  it("a placeholder left in the output (<SERVICE_PRINCIPAL_ID>) → exit 1, naming it and how to supply it", async () => {
    const w = await world();
    const { code, report, text } = await w.setup();
    expect(code).toBe(1);
    expect(report.ok).toBe(false);
    expect(report.federation.enabled).toBe(true);
    const lookUp = `databricks account service-principals list --filter 'applicationId eq "${CLIENT_ID}"'`;
    expect(report.unresolved).toEqual([{ placeholder: "<SERVICE_PRINCIPAL_ID>", fix: `pass the service principal's numeric ID with --service-principal-id; look it up with: ${lookUp}` }]);
    expect(text).toContain(`✗ Not ready: these placeholders stand in the commands above; supply them and run setup again:\n   <SERVICE_PRINCIPAL_ID>: pass the service principal's numeric ID with --service-principal-id; look it up with: ${lookUp}\n`);
  });

  it("no DATABRICKS_HOST or DATABRICKS_CLIENT_ID → their placeholders are named too, and the exit is 1", async () => {
    const w = await world({ env: { DATABRICKS_HOST: undefined, DATABRICKS_CLIENT_ID: undefined } });
    const { code, report } = await w.setup(["--service-principal-id", "4711"]);
    expect(code).toBe(1);
    expect(report.unresolved.map((u) => u.placeholder)).toEqual(["<service principal application ID>", "https://<workspace-host>"]);
    const full = await w.setup(["--service-principal-id", "4711", "--client-id", CLIENT_ID], { DATABRICKS_HOST: w.db.url });
    expect(full.code).toBe(0);
    expect(full.report.unresolved).toEqual([]);
    expect(full.text).toContain("✓ Every value above is real");
  });

  it("numbers its steps as README's set-up section does, with the same titles", async () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const section = readme.slice(readme.indexOf("## Set up on AWS"), readme.indexOf("\n## ", readme.indexOf("## Set up on AWS") + 1));
    const steps = [...section.matchAll(/^\*\*(\d)\. ([^*]+?)\.?\*\*/gm)].map((m) => [m[1]!, m[2]!] as const);
    expect(steps.map(([n]) => n)).toEqual(["1", "2", "3", "4", "5"]);
    const w = await world();
    const { text } = await w.setup(["--service-principal-id", "4711"]);
    const printed = text.split("\n").filter((l) => /^\d\. /.test(l));
    expect(printed).toHaveLength(steps.length);
    steps.forEach(([n, title], i) => expect(printed[i]).toMatch(new RegExp(`^${n}\\. ${title.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\b`)));
  });

  it("prints how to find the numeric service principal ID from DATABRICKS_CLIENT_ID", async () => {
    const w = await world();
    const { report, text } = await w.setup();
    expect(report.commands.findServicePrincipal).toBe(`databricks account service-principals list --filter 'applicationId eq "${CLIENT_ID}"'`);
    expect(report.commands.createFederationPolicy).toMatch(/^databricks account service-principal-federation-policy create <SERVICE_PRINCIPAL_ID> --json '/);
    expect(text).toContain(report.commands.findServicePrincipal!);
  });

  it.each([
    [["setup", "--service-principal-id", CLIENT_ID], /--service-principal-id must be the service principal's numeric ID/],
    [["setup", "--role-arn", "arn:aws:sts::123456789012:assumed-role/x/y"], /--role-arn must be an IAM role ARN/],
    [["setup", "--duration-seconds", "30"], /--duration-seconds must be a whole number from 60 to 3600/],
    [["setup", "--bogus"], /Unknown option '--bogus'/],
    [["doctor", "--enable"], /--enable is a setup option/],
    [["doctor", "extra"], /unexpected argument "extra"/],
    [["frobnicate"], /unknown command "frobnicate"/],
    [["setup", "--region", "mars"], /--region must be an AWS region/],
  ])("usage error %j → exit 2 naming the option, no AWS call", async (argv, message) => {
    const w = await world();
    const { code, out, err } = await w.run(argv);
    expect(code).toBe(2);
    expect(out).toBe("");
    expect(err).toMatch(message);
    expect(err).toContain("Usage: databricks-token-broker");
    expect(w.iam.calls).toHaveLength(0);
    expect(w.sts.calls).toHaveLength(0);
  });

  it("a bad DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS is named as a usage error", async () => {
    const w = await world();
    const { code, err } = await w.run(["setup"], { DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "9999" });
    expect(code).toBe(2);
    expect(err).toMatch(/DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS must be a whole number from 60 to 3600/);
  });

  it("help, -h and no command print the usage and exit 0", async () => {
    const w = await world();
    for (const argv of [["help"], ["-h"], [], ["doctor", "--help"]]) {
      const { code, out } = await w.run(argv);
      expect(code).toBe(0);
      expect(out).toMatch(/^Usage: databricks-token-broker <command>/);
    }
  });
});

describe("doctor", () => {
  it("passes every step on a working set-up, without printing a token", async () => {
    const w = await world();
    const d = await w.doctor();
    expect(d.code, d.text).toBe(0);
    expect(statuses(d.checks)).toEqual({
      configuration: "pass",
      federation: "pass",
      sts: "pass",
      "claims.iss": "pass",
      "claims.aud": "pass",
      "claims.sub": "pass",
      "claims.exp": "pass",
      "exchange[default]": "pass",
      "api[default]": "pass",
    });
    expect(step(d.checks, "claims.iss").detail).toContain(w.sts.issuer);
    expect(step(d.checks, "claims.sub").detail).toContain(w.sts.settings.roleArn);
    expect(step(d.checks, "api").detail).toContain(`as ${CLIENT_ID}`);
    expect(d.text).toMatch(/^databricks-token-broker doctor\n✓ configuration: /);
    expect(d.text).toContain("✓ every step passed");
    // The token is named by its fingerprint only.
    expect(step(d.checks, "exchange").detail).toMatch(/sha256 [0-9a-f]{8}/);
    expect(w.db.apiCalls).toHaveLength(2);
  });

  it("checks every target, each with a JWT of its own", async () => {
    const w = await world();
    w.env.DATABRICKS_TOKEN_BROKER_TARGETS = JSON.stringify({ second: { host: w.db.url, client_id: CLIENT_ID } });
    const d = await w.doctor();
    expect(d.ok, d.text).toBe(true);
    expect(statuses(d.checks)).toMatchObject({ "exchange[default]": "pass", "exchange[second]": "pass", "api[second]": "pass" });
    const jtis = w.db.exchanges.map((e) => e.claims?.jti);
    expect(new Set(jtis).size).toBe(jtis.length);
  });

  describe("configuration", () => {
    it("a bad configuration → ✗ naming every variable; nothing else runs", async () => {
      const w = await world();
      const d = await w.doctor({ DATABRICKS_HOST: undefined, DATABRICKS_TOKEN_BROKER_PORT: "9001", AWS_REGION: undefined });
      expect(d.code).toBe(1);
      const c = step(d.checks, "configuration");
      expect(c).toMatchObject({ status: "fail", fix: expect.stringMatching(/environment variables/) });
      expect(c.detail).toMatch(/DATABRICKS_HOST: is required/);
      expect(c.detail).toMatch(/DATABRICKS_TOKEN_BROKER_PORT: 9001/);
      expect(c.detail).toMatch(/AWS_REGION: is required/);
      expect(d.checks.filter((x) => x.step !== "configuration").every((x) => x.status === "skip")).toBe(true);
      expect(w.sts.calls).toHaveLength(0);
      expect(w.iam.calls).toHaveLength(0);
    });

    it("names the metrics setting: off, or emf and its namespace", async () => {
      const w = await world();
      expect(step((await w.doctor({})).checks, "configuration").detail).toMatch(/; metrics off$/);
      const on = await w.doctor({ DATABRICKS_TOKEN_BROKER_METRICS: "emf", DATABRICKS_TOKEN_BROKER_METRICS_NAMESPACE: "Team/Data" });
      expect(step(on.checks, "configuration").detail).toMatch(/; metrics emf in namespace Team\/Data$/);
    });

    it("the SDK variables of the README → no warning", async () => {
      const w = await world();
      const d = await w.doctor({ DATABRICKS_METADATA_SERVICE_URL: "http://localhost:2775/metadata", DATABRICKS_AUTH_TYPE: "metadata-service" });
      expect(d.checks.filter((c) => c.status === "warn" && c.step === "configuration")).toEqual([]);
    });

    it("DATABRICKS_METADATA_SERVICE_URL without DATABRICKS_AUTH_TYPE → ! naming the SDKs' error and the fix; the chain still runs", async () => {
      const w = await world();
      // The world sets DATABRICKS_CLIENT_ID, as a service-principal policy does.
      const d = await w.doctor({ DATABRICKS_METADATA_SERVICE_URL: "http://localhost:2775/metadata" });
      expect(d.code).toBe(0);
      const warned = d.checks.filter((c) => c.step === "configuration" && c.status === "warn");
      expect(warned).toEqual([
        {
          step: "configuration",
          status: "warn",
          detail: expect.stringContaining('"validate: more than one authorization method configured: metadata-service and oauth"'),
          fix: "set DATABRICKS_AUTH_TYPE=metadata-service on the function",
        },
      ]);
      expect(d.text).toContain("! configuration: DATABRICKS_METADATA_SERVICE_URL is set without DATABRICKS_AUTH_TYPE: ");
      expect(d.text).toContain("\n    fix: set DATABRICKS_AUTH_TYPE=metadata-service on the function\n");
      expect(step(d.checks, "sts").status).not.toBe("skip");
    });

    it("DATABRICKS_METADATA_SERVICE_URL on another port → ! with the broker's URL", async () => {
      const w = await world();
      const d = await w.doctor({ DATABRICKS_METADATA_SERVICE_URL: "http://localhost:8080/metadata", DATABRICKS_AUTH_TYPE: "metadata-service", DATABRICKS_TOKEN_BROKER_PORT: "2780" });
      expect(d.code).toBe(0);
      expect(d.checks.filter((c) => c.step === "configuration" && c.status === "warn")).toEqual([
        { step: "configuration", status: "warn", detail: expect.stringContaining("it names port 8080, but the broker listens on 2780"), fix: "set DATABRICKS_METADATA_SERVICE_URL=http://localhost:2780/metadata on the function" },
      ]);
    });

    it("--region stands in for AWS_REGION", async () => {
      const w = await world();
      const d = await w.doctor({ AWS_REGION: undefined }, ["--region", "us-east-1"]);
      expect(d.ok, d.text).toBe(true);
    });

    it("the switch off → ! warns that the extension would idle, and checks the chain anyway", async () => {
      const w = await world();
      const d = await w.doctor({ DATABRICKS_TOKEN_BROKER_ENABLED: undefined });
      expect(d.code).toBe(0);
      expect(d.checks.find((c) => c.step === "configuration" && c.status === "warn")).toMatchObject({ fix: "set DATABRICKS_TOKEN_BROKER_ENABLED=true on the function" });
      expect(d.text).toContain("! configuration: DATABRICKS_TOKEN_BROKER_ENABLED is not set");
    });
  });

  describe("the AWS profile's region and the credentials (issue 14, item 4)", () => {
    /** A home directory whose ~/.aws/config holds `config`; removed after the test. */
    const home = (config: string): string => {
      const dir = mkdtempSync(join(tmpdir(), "cli-home-"));
      mkdirSync(join(dir, ".aws"));
      writeFileSync(join(dir, ".aws", "config"), config);
      closers.push(async () => rmSync(dir, { recursive: true, force: true }));
      return dir;
    };
    const NO_REGION = { AWS_REGION: undefined, AWS_DEFAULT_REGION: undefined };

    it("AWS_PROFILE's region in ~/.aws/config is the region: the chain runs there", async () => {
      const w = await world({ sts: { region: "eu-west-1" } });
      const dir = home("[default]\nregion = ap-south-1\n\n[profile dev]\n# the laptop's profile\nregion = eu-west-1\n");
      const d = await w.doctor({ ...NO_REGION, HOME: dir, AWS_PROFILE: "dev" });
      expect(d.ok, d.text).toBe(true);
      expect(step(d.checks, "configuration").detail).toContain(`region eu-west-1 (from profile dev in ${join(dir, ".aws", "config")})`);
    });

    it("without AWS_PROFILE the default profile's; AWS_CONFIG_FILE names another file; AWS_REGION and AWS_DEFAULT_REGION come first", async () => {
      const w = await world();
      const dir = home("[default]\nregion = us-east-1\n[profile dev]\nregion = eu-west-1\n");
      expect((await w.doctor({ ...NO_REGION, HOME: dir })).checks[0]!.detail).toContain(`region us-east-1 (from profile default in ${join(dir, ".aws", "config")})`);
      const other = join(dir, "other-config");
      writeFileSync(other, "[profile ci]\nregion = us-east-1\n");
      expect((await w.doctor({ ...NO_REGION, HOME: dir, AWS_CONFIG_FILE: other, AWS_PROFILE: "ci" })).checks[0]!.detail).toContain(`region us-east-1 (from profile ci in ${other})`);
      expect((await w.doctor({ ...NO_REGION, AWS_DEFAULT_REGION: "us-east-1", HOME: dir, AWS_PROFILE: "dev" })).checks[0]!.detail).toMatch(/region us-east-1 \(from AWS_DEFAULT_REGION\); metrics off$/);
      const d = await w.doctor({ AWS_REGION: "us-east-1", AWS_DEFAULT_REGION: "eu-west-1", HOME: dir, AWS_PROFILE: "dev" });
      expect(d.checks[0]!.detail).toMatch(/region us-east-1; metrics off$/);
      expect(d.ok, d.text).toBe(true);
    });

    it("setup takes the profile's region too (the STS stand-in refuses a request signed for another)", async () => {
      const w = await world({ sts: { region: "eu-west-1" } });
      const dir = home("[profile dev]\nregion = eu-west-1\n");
      const { report } = await w.setup(["--service-principal-id", "4711"], { ...NO_REGION, HOME: dir, AWS_PROFILE: "dev" });
      expect(report.role).toMatchObject({ arn: "arn:aws:iam::123456789012:role/broker-test", problem: null });
      // Without the profile, us-east-1: the stand-in refuses the signature's region.
      const { report: without } = await w.setup(["--service-principal-id", "4711"], { ...NO_REGION, HOME: dir });
      expect(without.role.arn).toBeNull();
    });

    it("no region anywhere → ✗ configuration saying where it looked and how to set one", async () => {
      const w = await world();
      const dir = home("[profile dev]\noutput = json\n");
      const d = await w.doctor({ ...NO_REGION, HOME: dir, AWS_PROFILE: "dev" });
      expect(d.code).toBe(1);
      expect(step(d.checks, "configuration")).toMatchObject({
        status: "fail",
        detail: expect.stringContaining("AWS_REGION: is required"),
        fix: expect.stringContaining(`; AWS_REGION: no region found (looked in AWS_REGION, AWS_DEFAULT_REGION and profile dev (AWS_PROFILE) in ${join(dir, ".aws", "config")}): set AWS_REGION to the function's region, pass --region, or add region = <the function's region> to that profile`),
      });
      expect(w.sts.calls).toHaveLength(0);
    });

    it.each([
      ["an SSO token that cannot be refreshed", Object.assign(new Error('SSO Token refresh failed. Please log in using "aws sso login"'), { name: "TokenProviderError", tryNextLink: false })],
      // As in Lambda before the launcher set HOME: the chain's file lookup threw (commit 94a7e69).
      ["no home directory to read ~/.aws from", Object.assign(new Error('SSO Token refresh failed. Please log in using "aws sso login"'), { name: "SystemError", code: "ERR_SYSTEM_ERROR" })],
    ])("a credential provider failing (%s) → ✗ sts: no credentials, STS not called, and where the SDK looked", async (_name, failure) => {
      const w = await world({ credentials: async () => Promise.reject(failure) });
      const d = await w.doctor({ AWS_PROFILE: "sso-dev", HOME: "/home/someone", AWS_CONFIG_FILE: undefined, AWS_SHARED_CREDENTIALS_FILE: undefined });
      expect(d.code).toBe(1);
      expect(step(d.checks, "federation")).toMatchObject({ status: "skip", detail: expect.stringContaining("no AWS credentials were found") });
      const sts = step(d.checks, "sts");
      expect(sts.detail).toBe('no AWS credentials were found, so STS was not called (SSO Token refresh failed. Please log in using "aws sso login")');
      expect(sts.detail).not.toMatch(/STS answer could not be used/);
      expect(sts.fix).toBe(
        "the AWS SDK looked in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), profile sso-dev (AWS_PROFILE) in /home/someone/.aws/credentials and /home/someone/.aws/config (keys, SSO, role_arn, credential_process), a web identity token file (AWS_WEB_IDENTITY_TOKEN_FILE), container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI), EC2 instance metadata: give one of them the execution role's credentials (a profile with role_arn, aws sso login for an SSO profile, or run inside the function)",
      );
      expect(w.sts.calls).toHaveLength(0);
      expect(w.iam.calls).toHaveLength(0);
    });
  });

  describe("AWS side", () => {
    it("federation disabled → ✗ federation with the enable command, and ✗ sts with the same fix", async () => {
      const w = await world({ iam: { enabled: false } });
      const d = await w.doctor();
      expect(d.code).toBe(1);
      expect(step(d.checks, "federation")).toMatchObject({ status: "fail", fix: expect.stringMatching(/setup --enable/) });
      expect(step(d.checks, "sts")).toMatchObject({ status: "fail", detail: expect.stringMatching(/^OutboundWebIdentityFederationDisabled: /), fix: expect.stringMatching(/enable-outbound-web-identity-federation/) });
      expect(step(d.checks, "exchange").status).toBe("skip");
    });

    it("federation reported as JwtVendingEnabled=false → ✗ federation", async () => {
      const w = await world({ iam: { enabled: false, disabledAnswer: "JwtVendingEnabled=false" } });
      const d = await w.doctor();
      expect(step(d.checks, "federation").status).toBe("fail");
    });

    it("IAM not readable (as in Lambda) → - skipped, not a failure; the issuer comes from the token", async () => {
      const w = await world({ iam: { denied: [GET_INFO] } });
      const d = await w.doctor();
      expect(d.ok, d.text).toBe(true);
      expect(step(d.checks, "federation")).toMatchObject({ status: "skip", detail: expect.stringMatching(/AccessDenied/) });
      expect(step(d.checks, "claims.iss").detail).not.toMatch(/this account's issuer URL/);
    });

    it("IAM failing otherwise → ! warning with its fix, the rest still runs", async () => {
      const w = await world();
      w.iam.setFault({ kind: "error", code: "ServiceFailure", status: 500 });
      const d = await w.doctor();
      expect(d.ok).toBe(true);
      expect(step(d.checks, "federation")).toMatchObject({ status: "warn", fix: expect.stringMatching(/try again/) });
    });

    it.each([
      ["audience", { audiences: ["someone-else"] }],
      ["duration", { maxDurationSeconds: 60 }],
    ])("the role may not sign for this %s → ✗ sts AccessDenied, with the policy to attach", async (_name, allow) => {
      const w = await world({ sts: { allow } });
      const d = await w.doctor();
      const c = step(d.checks, "sts");
      expect(c).toMatchObject({ status: "fail", detail: expect.stringMatching(/^AccessDenied: /) });
      expect(c.fix).toMatch(/sts:IdentityTokenAudience/);
      expect(c.fix).toContain('"sts:IdentityTokenAudience":"databricks"');
      expect(c.fix).toContain('"sts:DurationSeconds":300');
      expect(statuses(d.checks)).toMatchObject({ "claims.iss": "skip", exchange: "skip", api: "skip" });
    });

    it("the role session ends before the JWT would → STS asked for less; ✓ with a note", async () => {
      const w = await world({ sts: { sessionExpiresAt: Date.now() + 200_000 } });
      const d = await w.doctor({ DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "60", DATABRICKS_TOKEN_BROKER_REFRESH_AHEAD_SECONDS: "60" });
      expect(d.ok, d.text).toBe(true);
      expect(step(d.checks, "claims.exp").detail).toMatch(/asked for 300 s: the role session ends sooner/);
    });

    it("the role session ending within a minute → ✗ sts SessionDurationEscalation", async () => {
      const w = await world({ sts: { sessionExpiresAt: Date.now() + 30_000 } });
      const d = await w.doctor();
      expect(step(d.checks, "sts")).toMatchObject({ status: "fail", detail: expect.stringMatching(/^SessionDurationEscalation: /) });
    });

    it.each([
      ["throttling", { kind: "error", code: "Throttling", status: 400 }, /^Throttling: /],
      ["a 5xx", { kind: "error", code: "InternalFailure", status: 500 }, /^InternalFailure: /],
      ["a reset connection", { kind: "reset" }, /could not be reached|could not be used/],
      ["a truncated answer", { kind: "drop" }, /could not be/],
      ["an HTML page", { kind: "raw", status: 503, body: "<html>Service Unavailable</html>" }, /./],
    ] as const)("STS answering %s → ✗ sts with a fix", async (_name, fault, detail) => {
      const w = await world();
      w.sts.setFault(fault);
      const d = await w.doctor();
      const c = step(d.checks, "sts");
      expect(c.status).toBe("fail");
      expect(c.detail).toMatch(detail);
      expect(c.fix).toBeTruthy();
    });

    it("STS unreachable → ✗ sts naming the network", async () => {
      const w = await world();
      await w.sts.refuseConnections();
      const d = await w.doctor();
      expect(step(d.checks, "sts")).toMatchObject({ status: "fail", fix: expect.stringMatching(/network|route/) });
    });

    it("expired credentials → ✗ sts saying so, not blaming the audience", async () => {
      const w = await world();
      w.sts.setFault({ kind: "error", code: "ExpiredToken", status: 403, message: "The security token included in the request is expired" });
      const d = await w.doctor();
      expect(step(d.checks, "sts")).toMatchObject({ status: "fail", fix: expect.stringMatching(/credentials are expired or invalid/) });
    });

    it.each([
      ["SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."],
      ["InvalidClientTokenId", "The security token included in the request is invalid."],
      ["UnrecognizedClientException", "The security token included in the request is invalid."],
    ])("refused credentials (%s) → ✗ sts saying so, not blaming the audience", async (code, message) => {
      const w = await world();
      w.sts.setFault({ kind: "error", code, status: 403, message });
      const d = await w.doctor();
      const sts = step(d.checks, "sts");
      expect(sts).toMatchObject({ status: "fail", fix: expect.stringMatching(/credentials are expired or invalid/) });
      expect(sts.fix).not.toMatch(/AUDIENCE/);
    });

    it("a clock far off (Signature expired) → ✗ sts naming the clock, not the credentials", async () => {
      const w = await world();
      w.sts.setFault({ kind: "error", code: "SignatureDoesNotMatch", status: 403, message: "Signature expired: 20261129T114400Z is now earlier than 20261129T114500Z (20261129T120000Z - 15 min.)" });
      const d = await w.doctor();
      expect(step(d.checks, "sts")).toMatchObject({ status: "fail", fix: expect.stringMatching(/clock is more than 15 minutes off/) });
    });
  });

  describe("claims", () => {
    it("credentials of another role than --role-arn → ✗ claims.sub: run as the function's role", async () => {
      const w = await world();
      const d = await w.doctor({}, ["--role-arn", "arn:aws:iam::123456789012:role/the-function-role"]);
      expect(step(d.checks, "claims.sub")).toMatchObject({ status: "fail", fix: expect.stringMatching(/not a session of arn:aws:iam::123456789012:role\/the-function-role/) });
    });

    it("credentials of an IAM user → ! claims.sub: in Lambda the subject is the execution role", async () => {
      const w = await world({ sts: { callerArn: "arn:aws:iam::123456789012:user/alice" } });
      const d = await w.doctor();
      expect(step(d.checks, "claims.sub")).toMatchObject({ status: "warn", detail: expect.stringMatching(/user\/alice.*execution role/) });
    });

    it("with someone else's credentials a refused subject says to run as the role first, not to change the policy", async () => {
      const w = await world({ sts: { callerArn: "arn:aws:iam::123456789012:user/alice" } });
      w.db.settings.policy = { ...w.db.settings.policy, subject: "arn:aws:iam::123456789012:role/the-function-role" };
      const d = await w.doctor();
      expect(step(d.checks, "claims.sub").status).toBe("warn");
      expect(step(d.checks, "exchange").fix).toMatch(/^first run the doctor with the execution role's credentials \(see claims.sub\)/);
    });

    it("GetCallerIdentity failing → ! claims.sub, the chain still runs", async () => {
      const w = await world();
      // The broker's call comes first and passes; the caller lookup gets the fault.
      w.sts.addFault({ kind: "delay", ms: 0 });
      w.sts.addFault({ kind: "error", code: "InternalFailure", status: 500 });
      const d = await w.doctor();
      expect(step(d.checks, "claims.sub")).toMatchObject({ status: "warn", detail: expect.stringMatching(/could not be read \(InternalFailure/) });
      expect(step(d.checks, "exchange").status).toBe("pass");
    });

    it("a role with a path: the token's full ARN matches the session's role → ✓", async () => {
      const roleArn = "arn:aws:iam::123456789012:role/service-role/fn";
      const w = await world({ sts: { roleArn } });
      const d = await w.doctor();
      expect(d.ok, d.text).toBe(true);
      expect(step(d.checks, "claims.sub").detail).toContain(`sub ${roleArn} (the role's full ARN, with its path)`);
    });

    it("an issuer other than the account's → ✗ claims.iss", async () => {
      const w = await world({ iam: { issuer: "https://0000.tokens.sts.global.api.aws" } });
      const d = await w.doctor();
      expect(step(d.checks, "claims.iss")).toMatchObject({ status: "fail", detail: expect.stringMatching(/is not this account's issuer URL https:\/\/0000/) });
    });

    it("a JWT that outlives the minimum TTL by too little → ✗ claims.exp, and ✗ exchange: the token could never be served", async () => {
      const w = await world({ db: { lifetime: "fixed" } });
      const d = await w.doctor({ DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS: "100", DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS: "120" });
      expect(step(d.checks, "claims.exp")).toMatchObject({ status: "fail", fix: expect.stringMatching(/raise DATABRICKS_TOKEN_BROKER_STS_DURATION_SECONDS/) });
      expect(step(d.checks, "exchange")).toMatchObject({ status: "fail", detail: expect.stringMatching(/could never serve it/) });
    });
  });

  describe("exchange", () => {
    const policyCases: [string, (w: World) => void, RegExp][] = [
      ["issuer", (w) => (w.db.settings.policy.issuer = "https://elsewhere.example"), /issuer does not match: the policy's issuer must be the account's outbound-federation issuer URL, "http:\/\/127\.0\.0\.1:\d+"/],
      ["audiences", (w) => (w.db.settings.policy.audiences = ["not-databricks"]), /audience does not match: the policy's audiences must include DATABRICKS_TOKEN_BROKER_AUDIENCE, "databricks"/],
      ["subject", (w) => (w.db.settings.policy.subject = "arn:aws:iam::123456789012:role/other"), /subject does not match: the policy's subject must be the execution role's ARN, "arn:aws:iam::123456789012:role\/broker-test"; set it on the federation policy of service principal/],
    ];
    it.each(policyCases)("the federation policy's %s differs → ✗ invalid_grant naming that setting and the value to set", async (_field, mutate, fix) => {
      const w = await world();
      mutate(w);
      const d = await w.doctor();
      expect(d.code).toBe(1);
      // The claims are what they should be; the policy is what is wrong.
      expect(statuses(d.checks)).toMatchObject({ "claims.iss": "pass", "claims.aud": "pass", "claims.sub": "pass", "exchange[default]": "fail", "api[default]": "skip" });
      const c = step(d.checks, "exchange");
      expect(c.detail).toMatch(/^invalid_grant: /);
      expect(c.fix).toMatch(fix);
    });

    it("an algorithm Databricks does not take → ✗ invalid_grant pointing at DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM", async () => {
      const w = await world();
      const d = await w.doctor({ DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM: "ES384" });
      expect(step(d.checks, "exchange").fix).toMatch(/DATABRICKS_TOKEN_BROKER_SIGNING_ALGORITHM=RS256/);
    });

    it("keys rotated away under a cached key set → ✗ invalid_grant about the signature", async () => {
      const w = await world();
      expect((await w.doctor()).ok).toBe(true);
      await w.sts.rotateKeys(false);
      const d = await w.doctor();
      expect(step(d.checks, "exchange")).toMatchObject({ status: "fail", fix: expect.stringMatching(/algorithm or signature/) });
    });

    it("Databricks' clock past the JWT → ✗ invalid_grant about expiry and clocks", async () => {
      const w = await world({ db: { now: () => Date.now() + 3_600_000 } });
      const d = await w.doctor();
      expect(step(d.checks, "exchange").fix).toMatch(/clock/);
    });

    it.each([
      ["a wrong DATABRICKS_CLIENT_ID", { DATABRICKS_CLIENT_ID: "00000000-0000-0000-0000-000000000000" }, /DATABRICKS_CLIENT_ID "00000000-.*" is not the application ID/],
      ["no DATABRICKS_CLIENT_ID for a service-principal policy", { DATABRICKS_CLIENT_ID: undefined }, /set DATABRICKS_CLIENT_ID to its application ID/],
    ])("%s → ✗ invalid_client naming DATABRICKS_CLIENT_ID", async (_name, env, fix) => {
      const w = await world();
      const d = await w.doctor(env);
      const c = step(d.checks, "exchange");
      expect(c.detail).toMatch(/^invalid_client: /);
      expect(c.fix).toMatch(fix);
    });

    it("a client ID against an account-wide policy → ✗ invalid_client", async () => {
      const w = await world();
      w.db.settings.policy = { ...w.db.settings.policy, servicePrincipalId: undefined };
      const d = await w.doctor();
      expect(step(d.checks, "exchange").detail).toMatch(/^invalid_client: /);
    });

    it("a scope Databricks does not grant → ✗ invalid_scope naming DATABRICKS_TOKEN_BROKER_SCOPE", async () => {
      const w = await world();
      const d = await w.doctor({ DATABRICKS_TOKEN_BROKER_SCOPE: "everything" });
      expect(step(d.checks, "exchange")).toMatchObject({ detail: expect.stringMatching(/^invalid_scope: /), fix: expect.stringMatching(/DATABRICKS_TOKEN_BROKER_SCOPE/) });
    });

    it("a wrong account ID on an account token endpoint → ✗ invalid_request naming DATABRICKS_ACCOUNT_ID", async () => {
      const w = await world();
      const d = await w.doctor({ DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: w.db.accountTokenEndpoint("no-such-account") });
      expect(step(d.checks, "exchange")).toMatchObject({ detail: expect.stringMatching(/^invalid_request: /), fix: expect.stringMatching(/DATABRICKS_ACCOUNT_ID/) });
    });

    it("a token too short-lived for the minimum TTL → ✗ exchange", async () => {
      const w = await world({ db: { lifetime: "fixed", expiresIn: 60 } });
      const d = await w.doctor();
      expect(step(d.checks, "exchange")).toMatchObject({ status: "fail", fix: expect.stringMatching(/lower DATABRICKS_TOKEN_BROKER_MIN_TTL_SECONDS/) });
    });

    it.each([
      ["a 5xx", { kind: "error", status: 503, error: "temporarily_unavailable" }, /^temporarily_unavailable: /],
      ["rate limiting", { kind: "error", status: 429, error: "rate_limited" }, /^rate_limited: /],
      ["a reset connection", { kind: "reset" }, /could not be reached/],
      ["a truncated answer", { kind: "drop" }, /could not be reached|answered 200 but/],
      ["an HTML page", { kind: "raw", status: 502, body: "<html><h1>502 Bad Gateway</h1></html>" }, /^HTTP 502: .*502 Bad Gateway/],
      ["no access_token", { kind: "patch", fields: { access_token: undefined } }, /without a usable access_token/],
      ["a non-Bearer token type", { kind: "patch", fields: { token_type: "mac" } }, /not Bearer/],
      ["no expires_in", { kind: "patch", fields: { expires_in: undefined } }, /expires_in/],
    ] as const)("Databricks answering %s → ✗ exchange with a fix", async (_name, fault, detail) => {
      const w = await world();
      w.db.setFault(fault);
      const d = await w.doctor();
      const c = step(d.checks, "exchange");
      expect(c.status).toBe("fail");
      expect(c.detail).toMatch(detail);
      expect(c.fix).toBeTruthy();
    });

    it("Databricks unreachable → ✗ exchange naming the network", async () => {
      const w = await world();
      await w.db.refuseConnections();
      const d = await w.doctor();
      expect(step(d.checks, "exchange")).toMatchObject({ status: "fail", fix: expect.stringMatching(/network/) });
    });
  });

  describe("the authenticated call", () => {
    it("a token the workspace does not accept → ✗ api with the workspace-assignment fix", async () => {
      const w = await world();
      w.db.setFault({ kind: "patch", fields: { access_token: "dapi0000000000000000000000000000000000" } });
      const d = await w.doctor();
      expect(step(d.checks, "exchange").status).toBe("pass");
      expect(step(d.checks, "api")).toMatchObject({ status: "fail", detail: expect.stringMatching(/→ 403: Invalid access token/), fix: expect.stringMatching(/assign the service principal to this workspace/) });
    });

    it("an accounts host → - skipped: no workspace API", async () => {
      const w = await world();
      const d = await w.doctor({
        DATABRICKS_HOST: "https://accounts.cloud.databricks.com",
        DATABRICKS_ACCOUNT_ID: w.db.settings.accountId,
        DATABRICKS_TOKEN_BROKER_TOKEN_ENDPOINT: w.db.accountTokenEndpoint(),
      });
      expect(d.ok, d.text).toBe(true);
      expect(step(d.checks, "api")).toMatchObject({ status: "skip", detail: expect.stringMatching(/accounts host/) });
    });
  });
});

describe("the built command", () => {
  const exec = promisify(execFile);
  const spawnCli = async (args: string[], env: Record<string, string | undefined>) => {
    try {
      const { stdout, stderr } = await exec(process.execPath, [CLI, ...args], { env: env as NodeJS.ProcessEnv, timeout: 20_000 });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  it("runs doctor and setup from dist/layer like a user does, reaching AWS through the SDK's endpoint variables", async () => {
    const w = await world();
    const env = {
      PATH: process.env.PATH,
      HOME: "/nonexistent",
      ...w.env,
      AWS_ENDPOINT_URL_STS: w.sts.url,
      AWS_ENDPOINT_URL_IAM: w.iam.url,
      AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
      AWS_SESSION_TOKEN: CREDENTIALS.sessionToken,
      AWS_EC2_METADATA_DISABLED: "true",
    };
    const doctor = await spawnCli(["doctor", "--json"], env);
    expect(doctor.code, doctor.stderr).toBe(0);
    expect((JSON.parse(doctor.stdout) as { ok: boolean }).ok).toBe(true);
    const setup = await spawnCli(["setup", "--json", "--service-principal-id", "4711"], env);
    expect(setup.code, setup.stderr).toBe(0);
    expect((JSON.parse(setup.stdout) as SetupJson).federation.issuer).toBe(w.sts.issuer);

    w.db.settings.policy = { ...w.db.settings.policy, subject: "arn:aws:iam::123456789012:role/other" };
    const failing = await spawnCli(["doctor"], env);
    expect(failing.code).toBe(1);
    expect(failing.stdout).toMatch(/✗ exchange \[default\]: invalid_grant/);
    expectNoSecrets(w, doctor.stdout, doctor.stderr, setup.stdout, setup.stderr, failing.stdout, failing.stderr);

    const usage = await spawnCli(["--nope"], env);
    expect(usage.code).toBe(2);
  });

  it("with no credentials anywhere and the region only in ~/.aws/config: ✗ sts says no credentials were found and where, and STS is never called", async () => {
    const w = await world({ sts: { region: "eu-west-1" } });
    const dir = mkdtempSync(join(tmpdir(), "cli-home-"));
    closers.push(async () => rmSync(dir, { recursive: true, force: true }));
    mkdirSync(join(dir, ".aws"));
    writeFileSync(join(dir, ".aws", "config"), "[default]\nregion = eu-west-1\n");
    const env = {
      PATH: process.env.PATH,
      HOME: dir,
      ...w.env,
      AWS_REGION: undefined,
      AWS_ENDPOINT_URL_STS: w.sts.url,
      AWS_ENDPOINT_URL_IAM: w.iam.url,
      // The chain's last link would ask 169.254.169.254; nothing here may leave the machine.
      AWS_EC2_METADATA_DISABLED: "true",
    };
    const r = await spawnCli(["doctor", "--json"], env);
    expect(r.code, r.stderr).toBe(1);
    const checks = (JSON.parse(r.stdout) as { checks: Check[] }).checks;
    expect(step(checks, "configuration").detail).toContain(`region eu-west-1 (from profile default in ${join(dir, ".aws", "config")})`);
    const sts = step(checks, "sts");
    expect(sts.detail).toMatch(/^no AWS credentials were found, so STS was not called \(Could not load credentials from any providers\)$/);
    expect(sts.fix).toContain(`profile default in ${join(dir, ".aws", "credentials")} and ${join(dir, ".aws", "config")}`);
    expect(sts.fix).toContain("EC2 instance metadata");
    expect(w.sts.calls).toHaveLength(0);
  });
});
