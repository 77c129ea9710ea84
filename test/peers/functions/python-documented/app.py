# The Lambda function as Databricks documents it ("Enable workload identity federation for AWS
# IAM workloads", its section "Authenticate to Databricks"), with no broker. An
# oidc.IdTokenSource asks AWS STS GetWebIdentityToken through boto3 for a JWT (audience
# "databricks", RS256, 300 s), a credentials strategy wires it into the SDK's OIDC token
# exchange, and the WorkspaceClient is built at module level, as the page builds it. The bench
# (bench/peers.ts) runs it under AWS's Lambda emulator beside ../python-broker, which differs
# only in how it authenticates.
#
# Two departures from the page, both configuration: host, client ID and region come from the
# environment instead of literals, and boto3 finds the STS stand-in through
# AWS_ENDPOINT_URL_STS, which it honours (botocore's service-specific endpoint variables).
#
# For the bench, it also notes times (time.time() for comparing with the stand-ins' records,
# perf_counter() for durations inside the process) and answers them with the user's name.
import time

_loaded_at = time.time()
_loaded_pc = time.perf_counter()

import os  # noqa: E402

import boto3  # noqa: E402

_boto3_pc = time.perf_counter()

from databricks.sdk import WorkspaceClient, oidc  # noqa: E402
from databricks.sdk.core import Config, credentials_strategy, oidc_credentials_provider  # noqa: E402

_imported_pc = time.perf_counter()
_sts_calls = []  # (start, end) perf_counter pairs of every GetWebIdentityToken


class AwsStsTokenSource(oidc.IdTokenSource):
    """An ID token for Databricks, signed by AWS STS for this function's role."""

    def __init__(self, audience="databricks", region=os.environ.get("AWS_REGION", "us-east-1")):
        self._audience = audience
        self._region = region

    def id_token(self) -> oidc.IdToken:
        started = time.perf_counter()
        # A new client on every call, as on the page.
        sts = boto3.client("sts", region_name=self._region)
        answer = sts.get_web_identity_token(
            Audience=[self._audience],
            SigningAlgorithm="RS256",
            DurationSeconds=300,
        )
        _sts_calls.append((started, time.perf_counter()))
        return oidc.IdToken(jwt=answer["WebIdentityToken"])


@credentials_strategy("aws-sts-wif", [])
def aws_sts_wif(cfg: Config):
    return oidc_credentials_provider(cfg, AwsStsTokenSource())


w = WorkspaceClient(
    host=os.environ["DATABRICKS_HOST"],
    client_id=os.environ["DATABRICKS_CLIENT_ID"],
    credentials_strategy=aws_sts_wif,
)

_ready_pc = time.perf_counter()
_invokes = 0


def handler(event, context):
    global _invokes
    started_at = time.time()
    started = time.perf_counter()
    _invokes += 1
    user = w.current_user.me().user_name
    done = time.perf_counter()
    since_load = lambda t: (t - _loaded_pc) * 1000  # noqa: E731
    return {
        "ok": True,
        "user_name": user,
        "invoke": _invokes,
        # Epoch ms, to place on the stand-ins' timeline.
        "loaded_at": _loaded_at * 1000,
        "handler_at": started_at * 1000,
        # ms since this module began loading, on the process's own clock.
        "imported": since_load(_imported_pc),
        "sdk_import_ms": (_imported_pc - _boto3_pc) * 1000,
        "client_ready": since_load(_ready_pc),
        "handler_start": since_load(started),
        "handler_end": since_load(done),
        "sts_calls": [[since_load(s), since_load(e)] for s, e in _sts_calls],
    }
