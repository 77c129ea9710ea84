// Where the real peers live once `node test/peers/install.mjs` has put them into the
// git-ignored cache (.cache/peers), and the versions pinned for each. One place, read by the
// installer and by the tests, so a version is changed once.
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(fileURLToPath(new URL(".", import.meta.url)), "..", "..");
export const CACHE = join(ROOT, ".cache", "peers");
export const BIN = join(CACHE, "bin");

/**
 * AWS's Lambda Runtime Interface Emulator. The module has no tagged release on the Go module
 * proxy newer than v1.23.0 (refused here); this pseudo-version is the one `go get` accepted,
 * and the first with the Managed Instances mode (AWS_LAMBDA_MAX_CONCURRENCY).
 */
export const RIE_MODULE = "github.com/aws/aws-lambda-runtime-interface-emulator";
export const RIE_VERSION = "v0.0.0-20261030222936-bef5c4ba774d";
export const RIE = join(BIN, "aws-lambda-rie");

/** Python peers: awslambdaric, databricks-sdk and boto3, pinned in requirements.txt. */
export const REQUIREMENTS = join(ROOT, "test", "peers", "requirements.txt");
export const VENV = join(CACHE, "venv");
export const PYTHON = join(VENV, "bin", "python");

/**
 * Wheels of examples/python's requirements for Lambda's python3.13 on x86_64, the platform
 * examples/cdk bundles that function for: its synth in the tests finds them here, with pip
 * kept off the index (test/cdk-example.test.ts).
 */
export const EXAMPLE_REQUIREMENTS = join(ROOT, "examples", "python", "requirements.txt");
export const EXAMPLE_WHEELS = join(CACHE, "example-wheels");

/**
 * Node.js runtime interface client, as AWS's own Node.js base images run it. 4.x declares
 * `engines.node >=22` (Lambda's nodejs22.x and newer) yet runs on this machine's Node.js 20;
 * 3.x needs autoreconf to build. It builds curl and aws-lambda-cpp from source at install
 * (cmake, make, g++), which is why it lives in the cache rather than in package.json: `npm ci`
 * stays quick for everyone who never runs the peer tests.
 */
export const NODE_RIC_VERSION = "4.0.2";
export const NODE_RIC_DIR = join(CACHE, "node-ric");
export const NODE_RIC = join(NODE_RIC_DIR, "node_modules", "aws-lambda-ric", "index.mjs");

/** The Go program under test/peers/go (databricks-sdk-go, pinned by its go.mod). */
export const GO_PEER_SRC = join(ROOT, "test", "peers", "go");
export const GO_PEER = join(BIN, "sdk-go-peer");

/**
 * The Databricks CLI, built from its Go module. v1.13.0, the newest tag, is refused by the Go
 * module proxy here (403), as is v1.12.0; v1.12.1 is served and builds with Go 1.26.
 * `go install` of it fails (it asks the proxy for the module's version list, which is refused),
 * so the installer downloads the module and builds it in place.
 */
export const CLI_MODULE = "github.com/databricks/cli";
export const CLI_VERSION = "v1.12.1";
export const CLI = join(BIN, "databricks");

/**
 * Where RIE wants the function and the layer. The tests bind-mount over them inside a private
 * mount namespace, so the machine's own /opt never changes; /var/task only has to exist as a
 * mount point.
 */
export const TASK_ROOT = "/var/task";
export const OPT = "/opt";
