// Loopback stand-in for the two IAM actions of outbound identity federation, spoken to by the
// real @aws-sdk/client-iam: awsQuery (form-encoded POST with Action and Version=2010-05-08,
// XML answers in the https://iam.amazonaws.com/doc/2010-05-08/ namespace). The error codes are
// the wire codes of the client's error registry: `FeatureDisabled` (404) and `FeatureEnabled`
// (409), which the client turns into FeatureDisabledException / FeatureEnabledException.
// Every request must be SigV4-signed (sigv4.ts) with a key the account knows. Linked to the
// STS stand-in, it shares its enabled switch, its keys and its clock, and reports its issuer.
import { randomUUID } from "node:crypto";
import { KNOWN_CREDENTIALS } from "./credentials.js";
import { type AwsCredential, verifySigV4 } from "./sigv4.js";
import { type AwsFault, FaultPlan, listenLoopback, playAwsFault, readBody, type Handler, type StsStandIn } from "./sts.js";

const XMLNS = "https://iam.amazonaws.com/doc/2010-05-08/";
const API_VERSION = "2010-05-08";
export const GET_INFO = "GetOutboundWebIdentityFederationInfo";
export const ENABLE = "EnableOutboundWebIdentityFederation";
export type IamAction = typeof GET_INFO | typeof ENABLE;

/** Read on every request, so tests may change them at runtime through `iam.settings`. */
export interface IamSettings {
  /** Outbound identity federation enabled; bound to the STS stand-in's switch when linked. */
  enabled: boolean;
  /** The account's issuer URL; the STS stand-in's issuer when linked. */
  issuer: string;
  accountId: string;
  /** Actions the caller may not perform (answered 403 AccessDenied, as IAM does). */
  denied: IamAction[];
  /**
   * How Get answers for a disabled account: the documented `FeatureDisabled` error, or a
   * success with `JwtVendingEnabled=false` (an account that had it once, and still has an issuer).
   */
  disabledAnswer: "FeatureDisabled" | "JwtVendingEnabled=false";
  /** The account's keys (SigV4); the STS stand-in's when linked, else KNOWN_CREDENTIALS. */
  credentials: AwsCredential[];
  /**
   * The only region a signature may be scoped to; undefined accepts any. IAM is global and its
   * real endpoint wants us-east-1, but an SDK pointed at a custom endpoint (the only way to reach
   * this stand-in) signs with the client's own region, where against AWS it would resolve the
   * global endpoint and sign for us-east-1: accepting any region is what the client would see.
   */
  region?: string;
}

export interface IamOptions extends Partial<IamSettings> {
  /** Share the enabled switch, the keys, the clock and the issuer with this STS stand-in. */
  sts?: StsStandIn;
  /** Wall clock in ms for the SigV4 time check (default Date.now). */
  now?: () => number;
}

export type IamFault = AwsFault;

export interface IamCall {
  time: number;
  action?: string;
  /** SigV4 credential scope: region and service. */
  region?: string;
  service?: string;
  status: number;
  error?: string;
  fault?: IamFault["kind"];
}

export interface IamStandIn {
  /** Endpoint for `new IAMClient({ endpoint })` or `AWS_ENDPOINT_URL_IAM`. */
  readonly url: string;
  readonly settings: IamSettings;
  readonly calls: IamCall[];
  setFault(fault: IamFault, times?: number): void;
  addFault(fault: IamFault, times?: number): void;
  clearFault(): void;
  refuseConnections(): Promise<void>;
  acceptConnections(): Promise<void>;
  close(): Promise<void>;
}

const xmlEscape = (s: string) => s.replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]!);

export async function startIam(options: IamOptions = {}): Promise<IamStandIn> {
  const { sts } = options;
  const settings: IamSettings = {
    enabled: options.enabled ?? true,
    issuer: options.issuer ?? sts?.issuer ?? "https://3f1c0e9a-5b7d-4e2a-9c61-0d8f2b4a7e13.tokens.sts.global.api.aws",
    accountId: options.accountId ?? sts?.settings.accountId ?? "123456789012",
    denied: options.denied ?? [],
    disabledAnswer: options.disabledAnswer ?? "FeatureDisabled",
    credentials: options.credentials ?? [...KNOWN_CREDENTIALS],
    region: options.region,
  };
  const now = options.now ?? sts?.now ?? Date.now;
  if (sts) {
    // One account, one switch: enabling through IAM is what lets STS sign. One account, one set of keys.
    if (options.enabled !== undefined) sts.settings.enabled = options.enabled;
    if (options.credentials !== undefined) sts.settings.credentials = options.credentials;
    for (const key of ["enabled", "credentials"] as const) {
      Object.defineProperty(settings, key, {
        get: () => sts.settings[key],
        set: (v: never) => {
          sts.settings[key] = v;
        },
        enumerable: true,
      });
    }
  }
  const calls: IamCall[] = [];
  const faults = new FaultPlan<IamFault>();

  const handler: Handler = async (req, res) => {
    const body = await readBody(req);
    const requestId = randomUUID();
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const params = new URLSearchParams(url.search);
    for (const [k, v] of new URLSearchParams(body ?? "")) params.append(k, v);
    const call: IamCall = { time: now(), action: params.get("Action") ?? undefined, status: 0 };
    calls.push(call);

    const answer = (status: number, xml: string) => {
      call.status = status;
      res.writeHead(status, { "content-type": "text/xml", "x-amzn-RequestId": requestId }).end(xml);
    };
    const fail = (status: number, code: string, message: string, type: "Sender" | "Receiver" = status >= 500 ? "Receiver" : "Sender") => {
      call.error = code;
      answer(
        status,
        `<ErrorResponse xmlns="${XMLNS}"><Error><Type>${type}</Type><Code>${xmlEscape(code)}</Code>` +
          `<Message>${xmlEscape(message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`,
      );
    };
    const ok = (action: IamAction, fields: Record<string, string | boolean>) =>
      answer(
        200,
        `<${action}Response xmlns="${XMLNS}"><${action}Result>` +
          Object.entries(fields)
            .map(([k, v]) => `<${k}>${xmlEscape(String(v))}</${k}>`)
            .join("") +
          `</${action}Result><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`,
      );

    const cutShort = `<${GET_INFO}Response xmlns="${XMLNS}"><${GET_INFO}Result><IssuerIdentifier>${settings.issuer}</IssuerIdentifier></${GET_INFO}Result></${GET_INFO}Response>`;
    if (await playAwsFault(faults.take(), call, res, fail, cutShort)) return;

    if (req.method !== "POST" || url.pathname !== "/") return fail(404, "UnknownOperationException", `No operation at ${req.method} ${url.pathname}`);
    if (body === undefined) return fail(413, "RequestEntityTooLarge", "Request body is too large");
    const signed = verifySigV4(
      { method: req.method, url: req.url ?? "/", rawHeaders: req.rawHeaders, body },
      { service: "iam", region: settings.region, credentials: settings.credentials, now: now() },
    );
    call.region = signed.region;
    call.service = signed.service;
    if (!signed.ok) return fail(signed.failure.status, signed.failure.code, signed.failure.message);
    const action = call.action;
    if ((action !== GET_INFO && action !== ENABLE) || params.get("Version") !== API_VERSION) {
      return fail(400, "InvalidAction", `Could not find operation ${action ?? "(none)"} for version ${params.get("Version") ?? "(none)"}`);
    }
    if (settings.denied.includes(action)) {
      return fail(403, "AccessDenied", `User: arn:aws:iam::${settings.accountId}:user/tester is not authorized to perform: iam:${action} on resource: *`);
    }
    if (action === GET_INFO) {
      if (settings.enabled) return ok(GET_INFO, { IssuerIdentifier: settings.issuer, JwtVendingEnabled: true });
      if (settings.disabledAnswer === "FeatureDisabled") {
        return fail(404, "FeatureDisabled", "Outbound identity federation is disabled for your AWS account.");
      }
      return ok(GET_INFO, { IssuerIdentifier: settings.issuer, JwtVendingEnabled: false });
    }
    if (settings.enabled) {
      return fail(
        409,
        "FeatureEnabled",
        "Outbound identity federation is already enabled for your AWS account. To fetch the current configuration, use GetOutboundWebIdentityFederationInfo.",
      );
    }
    settings.enabled = true;
    return ok(ENABLE, { IssuerIdentifier: settings.issuer });
  };

  const server = await listenLoopback(handler);
  return {
    url: server.url,
    settings,
    calls,
    setFault: (fault, times) => faults.set(fault, times),
    addFault: (fault, times) => faults.add(fault, times),
    clearFault: () => faults.clear(),
    refuseConnections: () => server.refuse(),
    acceptConnections: () => server.accept(),
    close: () => server.close(),
  };
}
