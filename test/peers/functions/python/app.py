# A Python function as a user writes one (README "Use from the function"), run by awslambdaric
# under AWS's Lambda emulator. The event picks the way it asks for a token:
#   {"use": "token"}: GET /token with the session token, then the Databricks API with it;
#   {"use": "sdk"}:   databricks-sdk's WorkspaceClient() with no arguments, configured only by
#                     the environment (DATABRICKS_HOST, DATABRICKS_METADATA_SERVICE_URL, ...);
#   {"use": "exec", "argv": [...]}: runs a program (the Go SDK peer, the Databricks CLI) with the
#                     function's own environment, as a function shelling out to it would.
# It reports what happened rather than raising, so the test reads the SDK's own error text.
import json
import os
import subprocess
import time
import urllib.request


def _broker():
    return "http://localhost:" + os.environ.get("DATABRICKS_TOKEN_BROKER_PORT", "2775")


def _me(token):
    req = urllib.request.Request(
        os.environ["DATABRICKS_HOST"].rstrip("/") + "/api/2.0/preview/scim/v2/Me",
        headers={"Authorization": "Bearer " + token},
    )
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.load(res)


def handler(event, context):
    started = time.perf_counter()
    if event.get("use") == "exec":
        done = subprocess.run(event["argv"], capture_output=True, text=True, timeout=60)
        return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "ms": (time.perf_counter() - started) * 1000}
    try:
        if event.get("use") == "sdk":
            from databricks.sdk import WorkspaceClient

            user = WorkspaceClient().current_user.me().user_name
        else:
            req = urllib.request.Request(
                _broker() + "/token",
                headers={"X-Aws-Session-Token": os.environ["AWS_SESSION_TOKEN"]},
            )
            with urllib.request.urlopen(req, timeout=15) as res:
                token = json.load(res)["access_token"]
            user = _me(token)["userName"]
        return {"ok": True, "user_name": user, "ms": (time.perf_counter() - started) * 1000}
    except Exception as e:  # the test asserts on what a user would see
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
