// The AWS credentials the tests sign with, and so the ones the STS and IAM stand-ins know by
// default: an AWS account knows its own keys, and a request signed with any other key, secret
// or session token is refused as AWS refuses it (sigv4.ts). All are made up and valid nowhere.
import type { AwsCredential } from "./sigv4.js";

/** What in-process tests give their own STSClient. */
export const EXAMPLE_CREDENTIALS: AwsCredential = { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret", sessionToken: "session" };

/**
 * What the Lambda emulator puts in the environment by default: the AWS documentation's example
 * key pair, and a session token as Lambda gives an execution role's temporary credentials.
 */
export const LAMBDA_CREDENTIALS: AwsCredential = {
  accessKeyId: "ASIAIOSFODNN7EXAMPLE",
  secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
  sessionToken: "IQoJb3JpZ2luX2VjEmulatedSessionTokenForLocalTestsOnly",
};

/** test/cli.test.ts's own credentials (that file is owned elsewhere; it passes these to its clients). */
export const CLI_TEST_CREDENTIALS: AwsCredential = {
  accessKeyId: "AKIDCLITESTEXAMPLE",
  secretAccessKey: "cli-test-secret-access-key-0123456789",
  sessionToken: "cli-test-session-token-IQoJb3JpZ2luX2Vj",
};

/** The keys the stand-ins accept unless told otherwise (`credentials` setting). */
export const KNOWN_CREDENTIALS: readonly AwsCredential[] = [EXAMPLE_CREDENTIALS, LAMBDA_CREDENTIALS, CLI_TEST_CREDENTIALS];
