/**
 * Client of the Lambda Extensions API (`AWS_LAMBDA_RUNTIME_API`, path `/2020-01-01/extension`).
 * It uses node:http rather than fetch: `event/next` is a long poll that may wait for hours
 * in an environment that is not frozen, longer than fetch's built-in header timeout.
 */
import http from "node:http";

export type LambdaEvent =
  | { eventType: "INVOKE"; deadlineMs: number; requestId: string; invokedFunctionArn?: string }
  | { eventType: "SHUTDOWN"; deadlineMs: number; shutdownReason: string };

export type EventType = "INVOKE" | "SHUTDOWN";

/** Lambda Extensions API reference: "Extensions API" in the Lambda developer guide. */
const BASE_PATH = "/2020-01-01/extension";

export interface ExtensionsApi {
  /**
   * `onSent` runs once the request is handed to the OS, before Lambda answers: work that
   * must not delay the registration itself can start there and overlap its round trip.
   */
  register(name: string, events: EventType[], onSent?: () => void): Promise<string>;
  /** `onSent` as for `register`: the event may be hours away, the request's send is not. */
  next(onSent?: () => void): Promise<LambdaEvent>;
  initError(errorType: string, message: string): Promise<void>;
  exitError(errorType: string, message: string): Promise<void>;
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function request(runtimeApi: string, method: string, path: string, headers: Record<string, string>, body?: string, onSent?: () => void): Promise<Answer> {
  const [host, port] = runtimeApi.split(":");
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port: Number(port || 80), method, path: `${BASE_PATH}${path}`, headers: body === undefined ? headers : { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(body) }, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (onSent) req.once("finish", onSent);
    req.end(body);
  });
}

function check(what: string, a: Answer): Answer {
  if (a.status < 200 || a.status >= 300) throw new Error(`Extensions API ${what} answered ${a.status}: ${a.body.slice(0, 300)}`);
  return a;
}

/** A client bound to `runtimeApi` (`host:port`); `register` must come first. */
export function createExtensionsApi(runtimeApi: string): ExtensionsApi {
  let id: string | undefined;
  const idHeader = () => {
    if (!id) throw new Error("Extensions API: register first");
    return { "lambda-extension-identifier": id };
  };
  const report = async (kind: "init" | "exit", errorType: string, message: string) => {
    const body = JSON.stringify({ errorMessage: message, errorType, stackTrace: [] });
    check(`${kind}/error`, await request(runtimeApi, "POST", `/${kind}/error`, { ...idHeader(), "lambda-extension-function-error-type": errorType }, body));
  };
  return {
    async register(name, events, onSent) {
      const a = check("register", await request(runtimeApi, "POST", "/register", { "lambda-extension-name": name }, JSON.stringify({ events }), onSent));
      const got = a.headers["lambda-extension-identifier"];
      if (typeof got !== "string" || got === "") throw new Error("Extensions API register answered without Lambda-Extension-Identifier");
      id = got;
      return got;
    },
    async next(onSent) {
      const a = check("event/next", await request(runtimeApi, "GET", "/event/next", idHeader(), undefined, onSent));
      return JSON.parse(a.body) as LambdaEvent;
    },
    initError: (errorType, message) => report("init", errorType, message),
    exitError: (errorType, message) => report("exit", errorType, message),
  };
}
