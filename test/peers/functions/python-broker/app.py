# The function of ../python-documented with the broker doing the authentication: the same
# module-level WorkspaceClient and the same handler, but built with no arguments, so that the
# SDK takes the host and the token from the environment the README's set-up gives it
# (DATABRICKS_HOST, DATABRICKS_METADATA_SERVICE_URL pointing at the broker's /metadata,
# DATABRICKS_AUTH_TYPE=metadata-service). No boto3, no STS call, no exchange in the function.
# The bench (bench/peers.ts) runs both under AWS's Lambda emulator and compares them.
#
# Two events are the bench's alone: {"ask": {"urls": [...], "n": N}} times the request the SDK
# makes when it asks the broker again, against the broker and against a bare server;
# {"client": "handler"} builds the WorkspaceClient in the handler, as the README's example does.
#
# For the bench, it also notes times (time.time() for comparing with the stand-ins' records,
# perf_counter() for durations inside the process) and answers them with the user's name.
import time

_loaded_at = time.time()
_loaded_pc = time.perf_counter()

_sdk_pc = time.perf_counter()

from databricks.sdk import WorkspaceClient  # noqa: E402
from databricks.sdk.credentials_provider import MetadataServiceTokenSource  # noqa: E402

_imported_pc = time.perf_counter()

w = WorkspaceClient()

_ready_pc = time.perf_counter()
_invokes = 0


def _asks(urls, n):
    """ms of `n` asks of each URL, taken in turn, each made as the SDK makes one when its token
    goes stale (MetadataServiceTokenSource.refresh: requests.get, a new connection each time)."""
    source = MetadataServiceTokenSource(w.config)
    times = {url: [] for url in urls}
    for _ in range(n):
        for url in urls:
            source.url = url
            started = time.perf_counter()
            source.refresh()
            times[url].append((time.perf_counter() - started) * 1000)
    return times


def handler(event, context):
    global _invokes
    if "ask" in event:  # the bench's measure of one ask, apart from the compared invokes
        return {"ok": True, "asks": _asks(event["ask"]["urls"], event["ask"]["n"])}
    started_at = time.time()
    started = time.perf_counter()
    _invokes += 1
    client = w
    if event.get("client") == "handler":  # the bench's: a client built on every invoke, which the README advises against
        client = WorkspaceClient()
    built = time.perf_counter()
    user = client.current_user.me().user_name
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
        "sdk_import_ms": (_imported_pc - _sdk_pc) * 1000,
        "client_ready": since_load(_ready_pc),
        "handler_start": since_load(started),
        "handler_end": since_load(done),
        "handler_client_ms": (built - started) * 1000,
        "sts_calls": [],
    }
