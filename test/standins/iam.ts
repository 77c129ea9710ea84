// Loopback stand-in for the two IAM actions of outbound identity federation, spoken to by the
// real @aws-sdk/client-iam: awsQuery (form-encoded POST with Action and Version=2010-05-08,
// XML answers in the https://iam.amazonaws.com/doc/2010-05-08/ namespace). The error codes are
// the wire codes of the client's error registry: `FeatureDisabled` (404) and `FeatureEnabled`
// (409), which the client turns into FeatureDisabledException / FeatureEnabledException.
// Linked to the STS stand-in, it shares its enabled switch and reports its issuer.
import { randomUUID } from "node:crypto";
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
}

export interface IamOptions extends Partial<IamSettings> {
  /** Share the enabled switch and the issuer with this STS stand-in. */
  sts?: StsStandIn;
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

const SIGV4 = /^AWS4-HMAC-SHA256 Credential=([^/\s]+)\/(\d{8})\/([^/\s]+)\/([^/\s]+)\/aws4_request,\s*SignedHeaders=[a-z0-9;-]+,\s*Signature=[0-9a-f]{64}$/;
const xmlEscape = (s: string) => s.replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]!);

export async function startIam(options: IamOptions = {}): Promise<IamStandIn> {
  const { sts } = options;
  const settings: IamSettings = {
    enabled: options.enabled ?? true,
    issuer: options.issuer ?? sts?.issuer ?? "https://3f1c0e9a-5b7d-4e2a-9c61-0d8f2b4a7e13.tokens.sts.global.api.aws",
    accountId: options.accountId ?? sts?.settings.accountId ?? "123456789012",
    denied: options.denied ?? [],
    disabledAnswer: options.disabledAnswer ?? "FeatureDisabled",
  };
  if (sts) {
    // One account, one switch: enabling through IAM is what lets STS sign.
    if (options.enabled !== undefined) sts.settings.enabled = options.enabled;
    Object.defineProperty(settings, "enabled", {
      get: () => sts.settings.enabled,
      set: (v: boolean) => {
        sts.settings.enabled = v;
      },
      enumerable: true,
    });
  }
  const calls: IamCall[] = [];
  const faults = new FaultPlan<IamFault>();

  const handler: Handler = async (req, res) => {
    const body = await readBody(req);
    const requestId = randomUUID();
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const params = new URLSearchParams(url.search);
    for (const [k, v] of new URLSearchParams(body ?? "")) params.append(k, v);
    const sigv4 = SIGV4.exec(req.headers.authorization ?? "");
    const call: IamCall = { time: Date.now(), action: params.get("Action") ?? undefined, region: sigv4?.[3], service: sigv4?.[4], status: 0 };
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
    // The signature itself is not checked, only that one is there and is scoped to IAM.
    if (!sigv4) return fail(403, "MissingAuthenticationToken", "Request is missing Authentication Token");
    if (sigv4[4] !== "iam") return fail(403, "SignatureDoesNotMatch", "Credential should be scoped to correct service: 'iam'. ");
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
