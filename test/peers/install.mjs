#!/usr/bin/env node
// Puts the real peers of the tests (SPEC §9) into the git-ignored cache .cache/peers: AWS's
// Lambda Runtime Interface Emulator (built from its Go module), a Python virtual environment
// with awslambdaric, databricks-sdk and boto3, the wheels examples/cdk bundles its Python
// function with, the Node.js runtime interface client, and the Go SDK program of
// test/peers/go. `npm test` runs it first. Each step records what it installed (a key of its
// pinned inputs) and does nothing when that is already there, so a second run costs a few
// milliseconds. A missing toolchain stops it with a message that names the tool: the peer
// tests never skip.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  BIN,
  CACHE,
  CLI,
  CLI_MODULE,
  CLI_VERSION,
  EXAMPLE_REQUIREMENTS,
  EXAMPLE_WHEELS,
  GO_PEER,
  GO_PEER_SRC,
  NODE_RIC,
  NODE_RIC_DIR,
  NODE_RIC_VERSION,
  PYTHON,
  REQUIREMENTS,
  RIE,
  RIE_MODULE,
  RIE_VERSION,
  TASK_ROOT,
  VENV,
} from "./paths.mjs";

const STAMPS = join(CACHE, "stamps");

class Missing extends Error {}

/** Fails with what to install when `cmd` cannot run. */
function need(cmd, args, what) {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.error || r.status !== 0) throw new Missing(`${cmd} is needed ${what}, and \`${[cmd, ...args].join(" ")}\` failed: ${r.error?.message ?? r.stderr.trim()}`);
  return r.stdout.trim();
}

function run(cmd, args, options = {}) {
  const started = Date.now();
  execFileSync(cmd, args, { stdio: ["ignore", "inherit", "inherit"], ...options });
  return Date.now() - started;
}

const keyOf = (...parts) => createHash("sha256").update(parts.join("\0")).digest("hex").slice(0, 16);

/** Runs `install` unless the stamp of `name` holds `key` and `output` exists. */
function step(name, key, output, install) {
  const stamp = join(STAMPS, name);
  if (existsSync(output) && existsSync(stamp) && readFileSync(stamp, "utf8") === key) return;
  process.stdout.write(`peers: installing ${name}\n`);
  const ms = install();
  mkdirSync(STAMPS, { recursive: true });
  writeFileSync(stamp, key);
  process.stdout.write(`peers: ${name} ready in ${(ms / 1000).toFixed(1)} s\n`);
}

const goEnv = () => ({ ...process.env, GOBIN: BIN, GOFLAGS: "-modcacherw", CGO_ENABLED: "0" });

function rie() {
  step("aws-lambda-rie", keyOf(RIE_MODULE, RIE_VERSION), RIE, () => {
    need("go", ["version"], "to build AWS's Lambda Runtime Interface Emulator (install Go 1.26 or newer)");
    return run("go", ["install", `${RIE_MODULE}/cmd/aws-lambda-rie@${RIE_VERSION}`], { env: goEnv() });
  });
}

function goPeer() {
  const files = readdirSync(GO_PEER_SRC)
    .filter((f) => /\.(go|mod|sum)$/.test(f))
    .sort()
    .map((f) => f + readFileSync(join(GO_PEER_SRC, f), "utf8"));
  step("sdk-go-peer", keyOf(...files), GO_PEER, () => {
    need("go", ["version"], "to build the Go SDK peer in test/peers/go (install Go 1.26 or newer)");
    return run("go", ["build", "-o", GO_PEER, "."], { cwd: GO_PEER_SRC, env: goEnv() });
  });
}

function cli() {
  step("databricks-cli", keyOf(CLI_MODULE, CLI_VERSION), CLI, () => {
    need("go", ["version"], "to build the Databricks CLI (install Go 1.26 or newer)");
    // Outside any module, so the download is not recorded in a go.mod.
    const info = JSON.parse(execFileSync("go", ["mod", "download", "-json", `${CLI_MODULE}@${CLI_VERSION}`], { cwd: CACHE, env: goEnv(), encoding: "utf8" }));
    if (!info.Dir) throw new Error(`go mod download ${CLI_MODULE}@${CLI_VERSION}: ${info.Error ?? "no directory"}`);
    // The release build's own flags: no symbols, and the version `databricks --version` prints.
    const ldflags = `-s -w -X ${CLI_MODULE}/internal/build.buildVersion=${CLI_VERSION.slice(1)}`;
    return run("go", ["build", "-trimpath", "-ldflags", ldflags, "-o", CLI, "."], { cwd: info.Dir, env: goEnv() });
  });
}

function python() {
  const requirements = readFileSync(REQUIREMENTS, "utf8");
  step("python-venv", keyOf(requirements), PYTHON, () => {
    const version = need("python3", ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"], "for the Python peers (awslambdaric, databricks-sdk, boto3)");
    const [major, minor] = version.split(".").map(Number);
    if (major !== 3 || minor < 9) throw new Missing(`python3 is ${version}; the Python peers need 3.9 or newer`);
    rmSync(VENV, { recursive: true, force: true });
    const ms = run("python3", ["-m", "venv", VENV]);
    // Wheels only: a source build would need compilers and headers this step does not check.
    return ms + run(PYTHON, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:", "-r", REQUIREMENTS]);
  });
}

/** The example function's wheels for Lambda's platform, as examples/cdk/app.ts asks pip for them. */
function exampleWheels() {
  const requirements = readFileSync(EXAMPLE_REQUIREMENTS, "utf8");
  const platform = ["--platform", "manylinux2014_x86_64", "--implementation", "cp", "--python-version", "3.13"];
  step("example-wheels", keyOf(requirements, ...platform), EXAMPLE_WHEELS, () => {
    rmSync(EXAMPLE_WHEELS, { recursive: true, force: true });
    return run(PYTHON, ["-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:", ...platform, "--dest", EXAMPLE_WHEELS, "-r", EXAMPLE_REQUIREMENTS]);
  });
}

function nodeRic() {
  step("aws-lambda-ric", keyOf(NODE_RIC_VERSION), NODE_RIC, () => {
    // Its install script builds curl and aws-lambda-cpp (SPEC §9 peers: aws-lambda-ric).
    for (const [tool, why] of [
      ["cmake", "--version"],
      ["make", "--version"],
      ["g++", "--version"],
    ]) need(tool, [why], `to build aws-lambda-ric ${NODE_RIC_VERSION}'s native part (Debian: apt-get install cmake make g++)`);
    rmSync(NODE_RIC_DIR, { recursive: true, force: true });
    mkdirSync(NODE_RIC_DIR, { recursive: true });
    writeFileSync(join(NODE_RIC_DIR, "package.json"), JSON.stringify({ name: "peers-node-ric", private: true }));
    return run("npm", ["install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error", `aws-lambda-ric@${NODE_RIC_VERSION}`], { cwd: NODE_RIC_DIR });
  });
}

/** RIE runs under a private mount namespace with the layer bound on /opt: root, unshare, mount. */
function mountNamespace() {
  need("unshare", ["--version"], "to give each Lambda emulator its own /opt and /var/task (util-linux)");
  const probe = spawnSync("unshare", ["-m", "--propagation", "private", "true"], { encoding: "utf8" });
  if (probe.status !== 0) throw new Missing(`the peer tests run each Lambda emulator in its own mount namespace and need root for it: \`unshare -m true\` failed: ${probe.stderr.trim()}`);
  // The function's directory is bound over /var/task inside that namespace; only the empty
  // mount point is created on the machine itself.
  if (!existsSync(TASK_ROOT)) mkdirSync(TASK_ROOT, { recursive: true });
}

export function installPeers() {
  mkdirSync(BIN, { recursive: true });
  mountNamespace();
  rie();
  python();
  exampleWheels();
  nodeRic();
  goPeer();
  cli();
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    installPeers();
  } catch (err) {
    process.stderr.write(`peers: ${err instanceof Missing ? err.message : String(err?.stack ?? err)}\n`);
    process.exit(1);
  }
}
