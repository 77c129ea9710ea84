// Loopback stand-in for a Databricks OAuth token endpoint doing workload identity federation
// (RFC 8693 token exchange), plus one authenticated REST route to prove an issued token works.
// It verifies subject tokens the way a relying party must: issuer pinned by the federation
// policy, keys found through the issuer's OIDC discovery, then signature, expiry, aud and sub.
// By default, as strict as Databricks: an access token lives no longer than the JWT it was
// exchanged for, and a JWT is exchanged once.
import type http from "node:http";
import { createHash, randomBytes } from "node:crypto";
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from "jose";
import {
  FaultPlan,
  listenLoopback,
  playTransportFault,
  readBody,
  sendJson,
  sleep,
  type Handler,
  type RateLimit,
  TokenBucket,
  type TransportFault,
} from "./sts.js";

export const TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange";
export const JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";
/** The workspace's numeric ID, as /.well-known/databricks-config gives it. */
export const WORKSPACE_ID = "1234567890123456";
export const DEFAULT_ACCOUNT_ID = "7a5e3c1d-0b2f-4e6a-9c8d-1f2e3d4c5b6a";

export interface FederationPolicy {
  issuer: string;
  /** Accepted `aud` values; Databricks defaults them to the account ID. */
  audiences?: string[];
  subject: string;
  /** Claim compared with `subject` (default `sub`). */
  subjectClaim?: string;
  /** Set for a service-principal policy: the exchange must carry this `client_id`. Unset: account-wide policy. */
  servicePrincipalId?: string;
}

/** Read on every request, so tests may change them at runtime through `databricks.settings`. */
export interface DatabricksSettings {
  policy: FederationPolicy;
  accountId: string;
  /** `expires_in` of issued tokens, in seconds: with lifetime "subject-token", the most they get. */
  expiresIn: number;
  /**
   * "subject-token" (default): the token lives as long as the JWT has left, capped at expiresIn,
   * as Databricks documents ("Each access token's lifetime is derived from the lifetime of the
   * federated token you provide", Authenticate with an identity provider token). The one-hour
   * cap is an assumption: the page names an hour as the most common lifetime, no maximum.
   * "fixed": always expiresIn, whatever the JWT's life (not what Databricks does; for tests that
   * need a token to outlive its JWT).
   */
  lifetime: "fixed" | "subject-token";
  /**
   * "refuse" (default): a JWT already exchanged is refused, `invalid_grant` 400. Databricks
   * documents no replay behaviour; a token endpoint that verifies `jti` (RFC 7523 §3 lets it,
   * and a JWT's single use is what the broker assumes) answers so, and it is the safe assumption.
   * "allow": any number of exchanges until the JWT expires.
   */
  replay: "refuse" | "allow";
  /** JWT algorithms accepted; Databricks documents RS256 and ES256. */
  algorithms: string[];
  scopes: string[];
  clockToleranceSeconds: number;
  /** Minimum wait before a JWKS is fetched again for an unknown `kid` (jose's cooldown, default 30 s). */
  jwksCooldownMs: number;
  /** Identity that SCIM /Me reports. */
  principal: { id: string; displayName: string };
  /**
   * Token requests beyond this token bucket are answered 429 with `Retry-After` (whole seconds
   * until the next token), as Databricks answers a client over its rate limit. Default: none.
   */
  rateLimit?: RateLimit;
}

export interface DatabricksOptions extends Partial<Omit<DatabricksSettings, "policy">> {
  policy: FederationPolicy;
  /** Wall clock in ms (default Date.now): JWT expiry checks, issued-token expiry, record times. */
  now?: () => number;
}

export type DatabricksFault =
  | TransportFault
  | { kind: "error"; status: number; error: string; description?: string; delayMs?: number }
  /** Exchange for real (the token works), but merge these fields into the JSON answer; `undefined` removes one. */
  | { kind: "patch"; fields: Record<string, unknown>; delayMs?: number };
// Of the transport faults, "drop" (the answer cut after its headers) comes from a Databricks
// that did the exchange: the JWT is used up and a token issued that never arrives. "reset" and
// "raw" never reach it (a connection cut before the request arrived, a proxy answering).

export interface Exchange {
  time: number;
  path: string;
  /** The client's port: requests on one kept-alive connection share it. */
  remotePort?: number;
  /** From the account route. */
  accountId?: string;
  grantType?: string;
  subjectTokenType?: string;
  scope?: string;
  clientId?: string;
  subjectToken?: string;
  /** Unverified claims of the subject token, when it decodes. */
  claims?: JWTPayload;
  status: number;
  /** Databricks did the exchange: a token was issued (and the JWT used up), even where a "drop" then cut the answer. */
  ok: boolean;
  error?: string;
  description?: string;
  accessToken?: string;
  fault?: DatabricksFault["kind"];
}

export interface IssuedToken {
  token: string;
  issuedAt: number;
  /** ms */
  expiresAt: number;
  scope: string;
  subject: string;
  clientId?: string;
}

export interface ApiCall {
  time: number;
  method: string;
  path: string;
  status: number;
  /** First 8 hex digits of the bearer token's SHA-256, as the product names tokens. */
  tokenHash?: string;
}

export interface DatabricksStandIn {
  /** Workspace host, e.g. for DATABRICKS_HOST or `new WorkspaceClient({ host })`. */
  readonly url: string;
  /** `{url}/oidc/v1/token` */
  readonly tokenEndpoint: string;
  accountTokenEndpoint(accountId?: string): string;
  readonly settings: DatabricksSettings;
  readonly exchanges: Exchange[];
  readonly issuedTokens: IssuedToken[];
  readonly apiCalls: ApiCall[];
  /** Every GET of a discovery document (`/oidc[/accounts/{id}]/.well-known/oauth-authorization-server`). */
  readonly discoveries: { time: number; path: string; authorization: boolean; remotePort?: number }[];
  setFault(fault: DatabricksFault, times?: number): void;
  addFault(fault: DatabricksFault, times?: number): void;
  clearFault(): void;
  refuseConnections(): Promise<void>;
  acceptConnections(): Promise<void>;
  /** Forget cached discovery documents and key sets. */
  resetJwksCache(): void;
  /** True once a JWT with this `jti` (or this whole JWT, lacking one) has been exchanged. */
  wasExchanged(jwt: string): boolean;
  close(): Promise<void>;
}

class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    readonly description: string,
  ) {
    super(description);
  }
}
const invalidGrant = (description: string) => new Refusal(400, "invalid_grant", description);
const invalidRequest = (description: string) => new Refusal(400, "invalid_request", description);

const LOOPBACK_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]"]);
/** Everything here stays on loopback: discovery for any other host is refused, never fetched. */
function loopbackUrl(raw: unknown): URL {
  const url = typeof raw === "string" && URL.canParse(raw) ? new URL(raw) : undefined;
  if (!url || !LOOPBACK_HOSTS.has(url.hostname) || !/^https?:$/.test(url.protocol)) {
    throw invalidGrant(`Cannot fetch signing keys from ${String(raw)}: only loopback issuers are reachable from this stand-in`);
  }
  return url;
}

const hash8 = (token: string) => createHash("sha256").update(token).digest("hex").slice(0, 8);

export async function startDatabricks(options: DatabricksOptions): Promise<DatabricksStandIn> {
  const now = options.now ?? Date.now;
  const settings: DatabricksSettings = {
    policy: options.policy,
    accountId: options.accountId ?? DEFAULT_ACCOUNT_ID,
    expiresIn: options.expiresIn ?? 3600,
    lifetime: options.lifetime ?? "subject-token",
    replay: options.replay ?? "refuse",
    algorithms: options.algorithms ?? ["RS256", "ES256"],
    scopes: options.scopes ?? ["all-apis", "sql", "offline_access"],
    clockToleranceSeconds: options.clockToleranceSeconds ?? 0,
    jwksCooldownMs: options.jwksCooldownMs ?? 30_000,
    principal: options.principal ?? { id: "4711000000000042", displayName: "databricks-token-broker" },
    rateLimit: options.rateLimit,
  };
  const bucket = new TokenBucket(now);
  const exchanges: Exchange[] = [];
  const issuedTokens: IssuedToken[] = [];
  const apiCalls: ApiCall[] = [];
  const discoveries: DatabricksStandIn["discoveries"] = [];
  /** The `jti` (or, lacking one, the whole token) of every JWT exchanged. */
  const usedJwts = new Set<string>();
  const faults = new FaultPlan<DatabricksFault>();
  const keySets = new Map<string, ReturnType<typeof createRemoteJWKSet>>();

  const keySetFor = async (issuer: string) => {
    const cached = keySets.get(issuer);
    if (cached) return cached;
    const discoveryUrl = loopbackUrl(`${issuer.replace(/\/$/, "")}/.well-known/openid-configuration`);
    let doc: { issuer?: unknown; jwks_uri?: unknown };
    try {
      const res = await fetch(discoveryUrl, { signal: AbortSignal.timeout(5000), redirect: "error" });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      doc = (await res.json()) as typeof doc;
    } catch (err) {
      throw invalidGrant(`Unable to fetch the OIDC discovery document of issuer ${issuer}: ${(err as Error).message}`);
    }
    if (doc.issuer !== issuer) throw invalidGrant(`The discovery document of ${issuer} names another issuer`);
    const keySet = createRemoteJWKSet(loopbackUrl(doc.jwks_uri), {
      timeoutDuration: 5000,
      cooldownDuration: settings.jwksCooldownMs,
    });
    keySets.set(issuer, keySet);
    return keySet;
  };

  /** Checks the subject token against the policy; answers the identity it maps to. */
  const verify = async (jwt: string, clientId: string | undefined): Promise<{ subject: string; payload: JWTPayload }> => {
    const policy = settings.policy;
    let alg: string | undefined;
    let iss: string | undefined;
    try {
      alg = decodeProtectedHeader(jwt).alg;
      iss = decodeJwt(jwt).iss;
    } catch {
      throw invalidGrant("The subject_token is not a well-formed JWT");
    }
    if (!alg || !settings.algorithms.includes(alg)) {
      throw invalidGrant(`The subject_token is signed with ${alg ?? "no algorithm"}; supported algorithms are ${settings.algorithms.join(", ")}`);
    }
    if (iss !== policy.issuer) {
      throw invalidGrant(`The token issuer (iss) '${iss ?? ""}' does not match any federation policy`);
    }
    // Databricks looks the policy up by service principal first, so client checks precede the token's.
    if (policy.servicePrincipalId === undefined ? clientId !== undefined : clientId !== policy.servicePrincipalId) {
      throw new Refusal(
        401,
        "invalid_client",
        clientId === undefined
          ? "client_id is required: the federation policy belongs to a service principal"
          : `No service principal with application ID '${clientId}' has a federation policy for this token`,
      );
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(jwt, await keySetFor(policy.issuer), {
        issuer: policy.issuer,
        algorithms: settings.algorithms,
        currentDate: new Date(now()),
        clockTolerance: settings.clockToleranceSeconds,
        requiredClaims: ["exp", "sub"],
      }));
    } catch (err) {
      if (err instanceof Refusal) throw err;
      const code = (err as { code?: string }).code;
      throw invalidGrant(
        code === "ERR_JWT_EXPIRED"
          ? "The subject_token has expired (exp)"
          : code === "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"
            ? "The subject_token signature verification failed"
            : code === "ERR_JWKS_NO_MATCHING_KEY"
              ? "No key in the issuer's JWKS matches the subject_token's kid"
              : code === "ERR_JWT_CLAIM_VALIDATION_FAILED"
                ? `The subject_token claim '${(err as { claim?: string }).claim}' is invalid: ${(err as Error).message}`
                : `The subject_token could not be verified: ${(err as Error).message}`,
      );
    }
    const accepted = policy.audiences ?? [settings.accountId];
    const aud = typeof payload.aud === "string" ? [payload.aud] : (payload.aud ?? []);
    if (!aud.some((a) => accepted.includes(a))) {
      throw invalidGrant(`The token audience (aud) [${aud.join(", ")}] is not accepted by the federation policy`);
    }
    const claim = policy.subjectClaim ?? "sub";
    const subject = payload[claim];
    if (subject !== policy.subject) {
      throw invalidGrant(`The token subject (${claim}) '${String(subject ?? "")}' does not match the federation policy`);
    }
    return { subject: String(subject), payload };
  };

  const handleToken = async (req: http.IncomingMessage, res: http.ServerResponse, path: string, accountId?: string) => {
    const body = await readBody(req);
    const form = new URLSearchParams(body ?? "");
    const field = (name: string) => form.get(name) ?? undefined;
    const subjectToken = field("subject_token");
    const exchange: Exchange = {
      time: now(),
      path,
      remotePort: req.socket.remotePort,
      accountId,
      grantType: field("grant_type"),
      subjectTokenType: field("subject_token_type"),
      scope: field("scope"),
      clientId: field("client_id"),
      subjectToken,
      status: 0,
      ok: false,
    };
    try {
      exchange.claims = subjectToken ? decodeJwt(subjectToken) : undefined;
    } catch {
      // Undecodable tokens are refused below; the record just has no claims.
    }
    exchanges.push(exchange);
    /** The answer the exchange itself would give: sent as it is, or cut short by a drop. */
    let answer: { status: number; body: Record<string, unknown> };
    const refused = (r: Refusal) => {
      Object.assign(exchange, { status: r.status, error: r.error, description: r.description });
      return { status: r.status, body: { error: r.error, error_description: r.description } };
    };

    const waitMs = bucket.take(settings.rateLimit);
    if (waitMs > 0) {
      Object.assign(exchange, { status: 429, error: "REQUEST_LIMIT_EXCEEDED" });
      return sendJson(res, 429, { error_code: "REQUEST_LIMIT_EXCEEDED", message: "Too many requests: the token endpoint's rate limit was exceeded" }, { "retry-after": String(Math.ceil(waitMs / 1000)) });
    }
    let fault = faults.take();
    if (fault?.kind === "delay") {
      await sleep(fault.ms);
      fault = undefined;
    }
    if (fault) exchange.fault = fault.kind;
    if (fault?.kind === "error") {
      if (fault.delayMs) await sleep(fault.delayMs);
      const { status, body: out } = refused(new Refusal(fault.status, fault.error, fault.description ?? `Injected ${fault.error}`));
      return sendJson(res, status, out, { "cache-control": "no-store" });
    }
    if (fault?.kind === "raw" || fault?.kind === "reset") {
      exchange.status = fault.kind === "raw" ? fault.status : 0;
      return playTransportFault(res, fault, { contentType: "application/json", body: "" });
    }

    try {
      answer = await exchangeFor(req, exchange, body, accountId, fault?.kind === "patch" ? fault.fields : {});
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      answer = refused(err);
    }
    if (fault?.kind === "drop" || fault?.kind === "stall") {
      if (fault.status !== undefined) exchange.status = fault.status;
      return playTransportFault(res, { ...fault, status: fault.status ?? answer.status }, { contentType: "application/json", body: JSON.stringify(answer.body) });
    }
    if (fault?.delayMs) await sleep(fault.delayMs);
    sendJson(res, answer.status, answer.body, { "cache-control": "no-store" });
  };

  /** The exchange proper: checks the request and the JWT, uses the JWT up, issues a token. */
  const exchangeFor = async (
    req: http.IncomingMessage,
    exchange: Exchange,
    body: string | undefined,
    accountId: string | undefined,
    patch: Record<string, unknown>,
  ): Promise<{ status: number; body: Record<string, unknown> }> => {
    const subjectToken = exchange.subjectToken;
    if (req.method !== "POST") throw new Refusal(405, "invalid_request", `${req.method} is not supported; use POST`);
    if (body === undefined) throw new Refusal(413, "invalid_request", "Request body is too large");
    if (!/^application\/x-www-form-urlencoded\b/i.test(req.headers["content-type"] ?? "")) {
      throw invalidRequest("Content-Type must be application/x-www-form-urlencoded");
    }
    if (accountId !== undefined && accountId !== settings.accountId) {
      throw invalidRequest(`Account ${accountId} does not exist or does not serve this endpoint`);
    }
    if (!exchange.grantType) throw invalidRequest("Missing required parameter: grant_type");
    if (exchange.grantType !== TOKEN_EXCHANGE_GRANT) {
      throw new Refusal(400, "unsupported_grant_type", `Unsupported grant_type: ${exchange.grantType}`);
    }
    if (!subjectToken) throw invalidRequest("Missing required parameter: subject_token");
    if (!exchange.subjectTokenType) throw invalidRequest("Missing required parameter: subject_token_type");
    if (exchange.subjectTokenType !== JWT_TOKEN_TYPE) {
      throw invalidRequest(`Unsupported subject_token_type: ${exchange.subjectTokenType}`);
    }
    if (!exchange.scope) throw invalidRequest("Missing required parameter: scope");
    const unknownScopes = exchange.scope.split(" ").filter((s) => !settings.scopes.includes(s));
    if (unknownScopes.length) throw new Refusal(400, "invalid_scope", `Unsupported scope: ${unknownScopes.join(" ")}`);

    const { subject, payload } = await verify(subjectToken, exchange.clientId);
    // Only a verified JWT is used up: a forged one says nothing about the real one's jti.
    const id = typeof payload.jti === "string" ? `jti:${payload.jti}` : `jwt:${subjectToken}`;
    if (settings.replay === "refuse") {
      if (usedJwts.has(id)) throw invalidGrant("The subject_token has already been used: a JWT is exchanged once (jti)");
      usedJwts.add(id);
    }
    const issuedAt = now();
    const jwtLeft = Math.floor(((payload.exp ?? 0) * 1000 - issuedAt) / 1000);
    const expiresIn = settings.lifetime === "subject-token" ? Math.min(settings.expiresIn, jwtLeft) : settings.expiresIn;
    const token = randomBytes(48).toString("hex");
    issuedTokens.push({
      token,
      issuedAt,
      expiresAt: issuedAt + expiresIn * 1000,
      scope: exchange.scope,
      subject: settings.policy.servicePrincipalId ?? subject,
      clientId: exchange.clientId,
    });
    Object.assign(exchange, { status: 200, ok: true, accessToken: token });
    return { status: 200, body: { access_token: token, scope: exchange.scope, token_type: "Bearer", expires_in: expiresIn, ...patch } };
  };

  const handleMe = (req: http.IncomingMessage, res: http.ServerResponse, path: string) => {
    const call: ApiCall = { time: now(), method: req.method ?? "", path, status: 0 };
    apiCalls.push(call);
    const answer = (status: number, body: unknown) => {
      call.status = status;
      sendJson(res, status, body);
    };
    const bearer = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "")?.[1];
    if (!bearer) {
      return answer(401, { error_code: "401", message: "Credential was not sent or was of an unsupported type for this API." });
    }
    call.tokenHash = hash8(bearer);
    const issued = issuedTokens.find((t) => t.token === bearer);
    // Databricks answers 403 for a bearer token it does not accept, expired or unknown alike.
    if (!issued || now() >= issued.expiresAt) {
      return answer(403, { error_code: "403", message: "Invalid access token." });
    }
    if (req.method !== "GET") {
      return answer(405, { error_code: "ENDPOINT_NOT_FOUND", message: `No API found for '${req.method} ${path}'` });
    }
    answer(200, {
      schemas: ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:workspace:2.0:User"],
      id: settings.principal.id,
      userName: issued.subject,
      displayName: settings.principal.displayName,
      active: true,
      emails: [],
      groups: [{ display: "users", type: "direct", value: "1000000000000001", $ref: "Groups/1000000000000001" }],
      entitlements: [{ value: "workspace-access" }],
    });
  };

  let base = "";
  const handler: Handler = async (req, res) => {
    const path = new URL(req.url ?? "/", base).pathname;
    const account = /^\/oidc\/accounts\/([^/]+)\/v1\/token$/.exec(path);
    if (path === "/oidc/v1/token" || account) return handleToken(req, res, path, account?.[1]);
    if (path === "/api/2.0/preview/scim/v2/Me") return handleMe(req, res, path);
    // The SDKs discover the OAuth endpoints here before an M2M or U2M flow.
    const wellKnown = /^\/oidc(\/accounts\/([^/]+))?\/\.well-known\/oauth-authorization-server$/.exec(path);
    if (wellKnown && req.method === "GET") {
      discoveries.push({ time: now(), path, authorization: req.headers.authorization !== undefined, remotePort: req.socket.remotePort });
      const prefix = `${base}/oidc${wellKnown[1] ?? ""}`;
      return sendJson(res, 200, {
        issuer: prefix,
        authorization_endpoint: `${prefix}/v1/authorize`,
        token_endpoint: `${prefix}/v1/token`,
        grant_types_supported: ["client_credentials", "authorization_code", "refresh_token", TOKEN_EXCHANGE_GRANT],
      });
    }
    // The SDKs (Python 0.162, Go 0.175, the CLI) read this before anything else to fill in the
    // workspace's IDs and OIDC root (its fields: databricks-sdk's oauth.HostMetadata); a real
    // workspace serves it, and without it the Python SDK's OIDC flows find no token endpoint.
    // token_federation_default_oidc_audiences is left out: its real value is not documented.
    if (path === "/.well-known/databricks-config" && req.method === "GET") {
      return sendJson(res, 200, { oidc_endpoint: `${base}/oidc`, account_id: settings.accountId, workspace_id: WORKSPACE_ID, cloud: "aws" });
    }
    sendJson(res, 404, { error_code: "ENDPOINT_NOT_FOUND", message: `No API found for '${req.method} ${path}'` });
  };

  const server = await listenLoopback(handler);
  base = server.url;
  return {
    url: server.url,
    tokenEndpoint: `${server.url}/oidc/v1/token`,
    accountTokenEndpoint: (accountId = settings.accountId) => `${server.url}/oidc/accounts/${accountId}/v1/token`,
    settings,
    exchanges,
    issuedTokens,
    apiCalls,
    discoveries,
    setFault: (fault, times) => faults.set(fault, times),
    addFault: (fault, times) => faults.add(fault, times),
    clearFault: () => faults.clear(),
    refuseConnections: () => server.refuse(),
    acceptConnections: () => server.accept(),
    resetJwksCache: () => keySets.clear(),
    wasExchanged: (jwt) => {
      let jti: unknown;
      try {
        jti = decodeJwt(jwt).jti;
      } catch {
        return false;
      }
      return usedJwts.has(typeof jti === "string" ? `jti:${jti}` : `jwt:${jwt}`);
    },
    close: () => server.close(),
  };
}
