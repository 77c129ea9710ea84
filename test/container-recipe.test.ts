/**
 * The container-image recipes of examples/containers (README, "Container-image functions")
 * against the layer `npm run build` writes. No image is built here (no Docker, no registry):
 * each Dockerfile is read line by line, and what it relies on is checked against the built
 * zips, unpacked as its `unzip` unpacks them, and against the variables src/config.ts reads.
 */
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ARTIFACTS, buildAll, EXTENSION_NAME } from "../layer/build.mjs";
import { ARCHES } from "../layer/node-runtime.mjs";
import { parseConfig } from "../src/config.js";
import { ROOT } from "./stack.js";
import { unzip } from "./unzip.js";

const RECIPES_DIR = join(ROOT, "examples", "containers");

/**
 * Each recipe: the AWS Lambda base image its function stage starts from (the tags AWS documents
 * on Amazon Linux 2023, whose glibc the with-Node.js flavour's Node.js needs), and the flavour.
 */
const RECIPES = [
  { file: "Dockerfile.python", image: "public.ecr.aws/lambda/python:3.13", withNode: true },
  { file: "Dockerfile.nodejs", image: "public.ecr.aws/lambda/nodejs:22", withNode: false },
  { file: "Dockerfile.java", image: "public.ecr.aws/lambda/java:21", withNode: true },
] as const;

/** The build context the recipes take the zips from: `docker build --build-context broker=dist`. */
const ZIP_CONTEXT = "broker";
/** Docker's TARGETARCH for each of Lambda's architecture names. */
const DOCKER_ARCH: Record<string, string> = { x86_64: "amd64", arm64: "arm64" };
/** What Lambda itself sets in every environment that the configuration needs. */
const LAMBDA_VARIABLES = { AWS_REGION: "eu-west-1" };
/** The workspace's variables of README step 4, which the recipes leave to the function. */
const FUNCTION_VARIABLES = { DATABRICKS_HOST: "https://dbc-1234abcd-5678.cloud.databricks.com", DATABRICKS_CLIENT_ID: "6b2c8e4a-0f1d-4c3b-9a7e-2d5f8c1b3e90" };

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  image: string;
  name?: string;
  instructions: Instruction[];
}
interface Dockerfile {
  text: string;
  /** `ARG`s before the first FROM, with their defaults. */
  args: Map<string, string | undefined>;
  stages: Stage[];
}

/** Reads a Dockerfile: comments dropped, continued lines joined, instructions by stage. */
function parseDockerfile(text: string): Dockerfile {
  const lines = text.split("\n").filter((l) => !/^\s*#/.test(l));
  const joined = lines.join("\n").replace(/\\\n/g, " ").split("\n").map((l) => l.trim()).filter(Boolean);
  const args = new Map<string, string | undefined>();
  const stages: Stage[] = [];
  for (const line of joined) {
    const [, op = "", rest = ""] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    const upper = op.toUpperCase();
    if (upper === "FROM") {
      const words = rest.split(/\s+/).filter((w) => !w.startsWith("--"));
      stages.push({ image: words[0] ?? "", ...(words[1]?.toUpperCase() === "AS" ? { name: words[2] } : {}), instructions: [] });
    } else if (stages.length === 0) {
      expect(upper, `only ARG may come before the first FROM: ${line}`).toBe("ARG");
      const [name = "", value] = rest.split(/=(.*)/s);
      args.set(name, value);
    } else {
      stages.at(-1)?.instructions.push({ op: upper, args: rest });
    }
  }
  return { text, args, stages };
}

/** `${NAME}` and `$NAME` replaced by `values`; a name without a value fails the test. */
function substitute(s: string, values: Record<string, string>): string {
  return s.replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_, name: string) => {
    expect(values, `${name} has no value`).toHaveProperty(name);
    return values[name] ?? "";
  });
}

/** The flags (`--from=x`) and the words of a COPY. */
function copyOf(i: Instruction): { from?: string; sources: string[]; dest: string } {
  const words = i.args.split(/\s+/);
  const from = words.find((w) => w.startsWith("--from="))?.slice("--from=".length);
  const paths = words.filter((w) => !w.startsWith("--"));
  return { ...(from ? { from } : {}), sources: paths.slice(0, -1), dest: paths.at(-1) ?? "" };
}

/** The `ENV name=value ...` of a stage. */
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of stage.instructions.filter((x) => x.op === "ENV")) {
    for (const pair of i.args.split(/\s+/)) {
      const [name = "", value] = pair.split(/=(.*)/s);
      expect(value, `ENV ${pair}: name=value expected`).toBeDefined();
      env[name] = value ?? "";
    }
  }
  return env;
}

/** The names `parseConfig` reads from `env`, which otherwise it reads as it is. */
function variablesRead(env: Record<string, string>): Set<string> {
  const read = new Set<string>();
  const recording = new Proxy(env, {
    get(target, key) {
      if (typeof key === "string") read.add(key);
      return Reflect.get(target, key);
    },
  });
  parseConfig(recording);
  return read;
}

/**
 * What the recipe's unpack stage does: the zip it copies from the build context (its name with
 * `ARCH` as given), where the `unzip` puts the tree, and that stage's name.
 */
function unpackStep(recipe: Dockerfile, arch?: string) {
  const stage = recipe.stages.find((s) => s.instructions.some((i) => i.op === "COPY" && copyOf(i).from === ZIP_CONTEXT));
  expect(stage, `a stage that copies a zip --from=${ZIP_CONTEXT}`).toBeDefined();
  const { name, instructions } = stage as Stage;
  const values: Record<string, string> = {};
  for (const [arg, fallback] of recipe.args) {
    // A global ARG reaches a stage only when declared in it again.
    if (instructions.some((i) => i.op === "ARG" && i.args === arg) && fallback !== undefined) values[arg] = arg === "ARCH" && arch ? arch : fallback;
  }
  const copy = copyOf(instructions.find((i) => i.op === "COPY" && copyOf(i).from === ZIP_CONTEXT) as Instruction);
  expect(copy.sources).toHaveLength(1);
  const run = instructions.filter((i) => i.op === "RUN").map((i) => i.args).join(" && ");
  const unzipped = new RegExp(`\\bunzip\\s+(?:-\\S+\\s+)*${copy.dest.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}\\s+-d\\s+(\\S+)`).exec(run);
  expect(unzipped, `the RUN unzips ${copy.dest}: ${run}`).not.toBeNull();
  return { stageName: name, zip: substitute(copy.sources[0] ?? "", values), dir: unzipped?.[1] ?? "", run };
}

const recipes = new Map<string, Dockerfile>(RECIPES.map((r) => [r.file, parseDockerfile(readFileSync(join(RECIPES_DIR, r.file), "utf8"))]));
const recipe = (file: string) => recipes.get(file) as Dockerfile;

let dist: string;
const tmp: string[] = [];

beforeAll(async () => {
  dist = await mkdtemp(join(tmpdir(), "dtb-dist-"));
  tmp.push(dist);
  await buildAll({ dist });
}, 240_000);

afterAll(async () => {
  await Promise.all(tmp.map((d) => rm(d, { recursive: true, force: true })));
});

/** The zip unpacked as the recipe's `unzip` does (modes kept); returns the directory, its /opt. */
async function unpacked(zip: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dtb-image-opt-"));
  tmp.push(dir);
  await unzip(join(dist, zip), dir);
  return dir;
}

const mode = async (path: string) => (await stat(path)).mode & 0o7777;

describe.each(RECIPES)("examples/containers/$file", ({ file, image, withNode }) => {
  // The architectures the recipe can be built for: the ARCH it takes, or the one plain zip for both.
  const arches: (string | undefined)[] = withNode ? Object.keys(ARCHES) : [undefined];

  it("takes a zip npm run build writes, for each architecture it can be built for", () => {
    const zips = arches.map((arch) => unpackStep(recipe(file), arch).zip);
    for (const zip of zips) expect(ARTIFACTS).toContain(zip);
    expect(zips).toEqual(withNode ? Object.keys(ARCHES).map((a) => `layer-with-node-${a}.zip`) : ["layer.zip"]);
    if (withNode) expect(recipe(file).args.get("ARCH"), "ARCH defaults to x86_64, Lambda's default architecture").toBe("x86_64");
  });

  it("refuses an ARCH that is not the image's architecture", () => {
    if (!withNode) return;
    const { run } = unpackStep(recipe(file));
    expect(run).toContain('case "${ARCH}/${TARGETARCH}" in');
    for (const arch of Object.keys(ARCHES)) expect(run, `${arch} builds for linux/${DOCKER_ARCH[arch]}`).toMatch(new RegExp(`[ |]${arch}/${DOCKER_ARCH[arch]}[ |)]`));
    expect(run).toMatch(/\*\) echo .*>&2; exit 1/);
  });

  it("copies the unpacked tree to /opt of an AWS Lambda base image", () => {
    const { stageName, dir, run } = unpackStep(recipe(file));
    // Info-ZIP's unzip, which restores the zip's unix modes, installed in the unpack stage first.
    expect(run).toMatch(/\bdnf install -y unzip\b.*\bunzip -q /);
    const final = recipe(file).stages.at(-1) as Stage;
    expect(final.image).toBe(image);
    expect(dir).toBe("/opt");
    const copies = final.instructions.filter((i) => i.op === "COPY").map(copyOf);
    expect(copies.filter((c) => c.from === stageName)).toEqual([{ from: stageName, sources: [dir], dest: "/opt" }]);
    // Nothing else of the image's is put over the layer's tree.
    expect(copies.filter((c) => c.dest.startsWith("/opt"))).toHaveLength(1);
  });

  it.each(arches.map((arch) => ({ arch, label: arch ?? "either architecture" })))("finds the extension, the CLI and the bundle where it copies them, with their modes ($label)", async ({ arch }) => {
    const opt = await unpacked(unpackStep(recipe(file), arch).zip);
    // Lambda starts the executables of /opt/extensions; the file name is the extension's.
    expect(await mode(join(opt, "extensions", EXTENSION_NAME))).toBe(0o755);
    // Lambda's base images have /opt/bin on PATH: `databricks-token-broker doctor` in the image.
    expect(await mode(join(opt, "bin", EXTENSION_NAME))).toBe(0o755);
    expect((await stat(join(opt, EXTENSION_NAME, "index.cjs"))).isFile()).toBe(true);
    const launcher = await readFile(join(opt, "extensions", EXTENSION_NAME), "utf8");
    if (withNode) {
      expect(await mode(join(opt, EXTENSION_NAME, "node", "bin", "node"))).toBe(0o755);
      const [marked] = (await readFile(join(opt, EXTENSION_NAME, "node", "arch"), "utf8")).split(" ");
      expect(marked, "the Node.js of the zip ARCH selects is for that architecture").toBe(arch);
    } else {
      // The plain layer runs on the Node.js of Lambda's Node.js images.
      await expect(stat(join(opt, EXTENSION_NAME, "node"))).rejects.toMatchObject({ code: "ENOENT" });
      expect(launcher).toContain("elif [ -x /var/lang/bin/node ]; then");
    }
  });

  it("sets or names only variables the broker reads, and sets them to a valid configuration", () => {
    const final = recipe(file).stages.at(-1) as Stage;
    const env = envOf(final);
    expect(env.DATABRICKS_TOKEN_BROKER_ENABLED).toBe("true");
    // Named anywhere in the file, comments included: each one a variable src/config.ts reads.
    const named = new Set([...recipe(file).text.matchAll(/\bDATABRICKS_[A-Z0-9_]+\b/g)].map((m) => m[0]));
    const left = [...named].filter((n) => !(n in env)).sort();
    expect(left, "the workspace's variables, left to the function").toEqual(Object.keys(FUNCTION_VARIABLES).sort());
    const full = { ...LAMBDA_VARIABLES, ...env, ...FUNCTION_VARIABLES };
    const read = variablesRead(full);
    for (const name of named) expect(read, `${name} is read by src/config.ts`).toContain(name);
    expect(parseConfig(full)).toMatchObject({ enabled: true, warnings: [] });
  });
});

describe("README, Container-image functions", () => {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const deploy = readme.slice(readme.indexOf("\n## Deploy the layer\n"));
  // From its heading to the next heading of any level; empty if it is not inside "Deploy the layer".
  const start = deploy.indexOf("\n### Container-image functions\n");
  const nextTop = deploy.indexOf("\n## ", 1);
  const end = start + 1 + deploy.slice(start + 1).search(/\n##+ /);
  const section = start < 0 || (nextTop >= 0 && nextTop < start) ? "" : deploy.slice(start, end > start ? end : undefined);

  it("is under Deploy the layer, names each recipe and says no image is built by the tests", () => {
    expect(section).toMatch(/^\n### Container-image functions\n/);
    for (const { file } of RECIPES) expect(section).toContain(`examples/containers/${file}`);
    expect(section).toContain("no image is built");
  });

  it("shows the Python recipe as the file has it, and builds with the recipes' build context", () => {
    const blocks = [...section.matchAll(/```dockerfile\n([\s\S]*?)```/g)].map((m) => m[1] ?? "");
    expect(blocks).toHaveLength(1);
    expect(recipe("Dockerfile.python").text).toContain(blocks[0]);
    const builds = [...section.matchAll(/docker build [^\n]*(?:\\\n[^\n]*)*/g)].map((m) => m[0]);
    expect(builds.length).toBeGreaterThan(0);
    for (const b of builds) expect(b).toContain(`--build-context ${ZIP_CONTEXT}=`);
  });
});
