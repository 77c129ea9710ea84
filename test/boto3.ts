/**
 * Real boto3 against the loopback stand-ins: a Python program run with the peers' virtual
 * environment, which prints one JSON line. Async, so the stand-ins in this process keep
 * answering while it runs.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { PYTHON } from "./peers/paths.mjs";

/** The peers' Python (test/peers/requirements.txt pins boto3), made by test/peers/install.mjs. */
export const BOTO3_PYTHON = PYTHON;

/** Runs `program` (Python source) with `args` as sys.argv[1:]; answers its last stdout line, parsed. */
export function runPython<T>(program: string, args: string[] = [], env: Record<string, string> = {}): Promise<T> {
  if (!existsSync(BOTO3_PYTHON)) {
    // SPEC §9: a missing toolchain fails with a clear message, never skips.
    return Promise.reject(new Error(`no Python with boto3 at ${BOTO3_PYTHON}: run node test/peers/install.mjs (npm test does)`));
  }
  return new Promise((resolve, reject) => {
    execFile(
      BOTO3_PYTHON,
      ["-c", program, ...args],
      // Nothing of this machine's AWS set-up may reach boto3: only what the program passes.
      { env: { PATH: process.env.PATH ?? "", HOME: "/nonexistent", AWS_CONFIG_FILE: "/dev/null", AWS_SHARED_CREDENTIALS_FILE: "/dev/null", AWS_EC2_METADATA_DISABLED: "true", ...env }, timeout: 60_000 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`${err.message}\n${stderr}`));
        try {
          resolve(JSON.parse(stdout.trim().split("\n").pop() ?? "") as T);
        } catch {
          reject(new Error(`not JSON: ${stdout}\n${stderr}`));
        }
      },
    );
  });
}

/** Python preamble: a boto3 client for a stand-in, one attempt, no retries of its own. */
export const BOTO3_CLIENT = `
import json, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

def client(service, endpoint, key, secret, token=None, region="us-east-1"):
    return boto3.client(service, region_name=region, endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, aws_session_token=token,
                        config=Config(retries={"total_max_attempts": 1}))

def error(e):
    return {"type": type(e).__name__, "code": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"], "str": str(e)}
`;
