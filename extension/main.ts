/**
 * Entry point of the extension process: the only module that touches `process`
 * (environment, exit, signals). Lambda starts it from /opt/extensions at init.
 */
import { createExtensionsApi } from "../src/extensions-api.js";
import { httpPost } from "../src/http-post.js";
import { run } from "../src/lifecycle.js";
import { readLogLevel } from "../src/config.js";
import { createLogger } from "../src/log.js";

// Node.js reads it at every TLS connection, and "0" skips certificate checks for STS and the
// exchange. The launcher unsets it too; an image may start this bundle without the launcher.
const tlsChecksOff = process.env.NODE_TLS_REJECT_UNAUTHORIZED === "0";
delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;

// DATABRICKS_TOKEN_BROKER_LOG_LEVEL applies to every line, Node.js's warnings included (SPEC §2).
const log = createLogger({ level: readLogLevel(process.env) });
if (tlsChecksOff) {
  log.warn("NODE_TLS_REJECT_UNAUTHORIZED=0 is ignored: the extension always checks TLS certificates; trust a private CA with NODE_EXTRA_CA_CERTS");
}

// The AWS SDK's multi-line Node.js 20 notice would be a warn line at every cold start. The SDK
// documents this switch for it (aws-sdk-js-v3 issue 7983); the same news is logged once, at
// debug, here. A value the function set itself is left alone.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
if (Number(process.versions.node.split(".")[0]) < 22) {
  log.debug(`Node.js ${process.version} is past its end of life (April 2026), and AWS SDK for JavaScript releases after the first week of January 2027 need Node.js 22 or later: move the function to nodejs22.x or nodejs24.x`);
}

// The extension dying makes Lambda reset the whole environment, so one stray error
// is logged, not fatal. Every known failure path is handled where it happens.
process.on("uncaughtException", (err) => log.error("uncaught exception", { error: err }));
process.on("unhandledRejection", (err) => log.error("unhandled rejection", { error: err }));
// Node.js prints process warnings (a deprecation; the AWS SDK's notice that it will need a
// newer Node.js) to stderr as plain, multi-line text: they become log lines like any other.
process.removeAllListeners("warning");
process.on("warning", (w) => log.warn("Node.js warning", { name: w.name, message: w.message }));
// Lambda sends SHUTDOWN through the Extensions API; SIGTERM only comes from elsewhere (a local runner).
process.on("SIGTERM", () => process.exit(0));

const runtimeApi = process.env.AWS_LAMBDA_RUNTIME_API;
if (!runtimeApi) {
  // Run by hand, say where to go instead: the demo runs it under a local Lambda, the CLI checks a configuration.
  log.error(
    "AWS_LAMBDA_RUNTIME_API is not set: this program runs as a Lambda extension, started by Lambda from /opt/extensions. To try it locally, run npm start in the databricks-token-broker repository (a local Lambda with STS and Databricks stand-ins); to check a configuration and your AWS credentials, run databricks-token-broker doctor",
  );
  process.exit(1);
}

run({
  env: process.env,
  api: createExtensionsApi(runtimeApi),
  makeLogger: (level) => createLogger({ level }),
  // Imported only here and only this way: the bundle keeps the AWS SDK in lazy/ (layer/build.mjs).
  loadSts: async (region) => (await import("../src/sts-client.js")).createStsPort(region),
  fetch: httpPost,
}).then(
  (code) => process.exit(code),
  (err: unknown) => {
    log.error("extension failed", { error: err });
    process.exit(1);
  },
);
