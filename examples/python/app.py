"""A Python function that calls Databricks through the broker, both ways:
plain GET /token, and databricks-sdk finding the token itself through the
metadata service. For the SDK, set on the function (template.yaml does):

    DATABRICKS_HOST=https://<workspace>.cloud.databricks.com
    DATABRICKS_METADATA_SERVICE_URL=http://localhost:2775/metadata
    DATABRICKS_AUTH_TYPE=metadata-service

The auth type is not optional: with DATABRICKS_CLIENT_ID also set (a
service-principal policy), databricks-sdk refuses to start without it
("more than one authorization method configured: metadata-service and oauth")."""
import json
import os
import urllib.request

from databricks.sdk import WorkspaceClient

BROKER = f"http://localhost:{os.environ.get('DATABRICKS_TOKEN_BROKER_PORT', '2775')}"

# Built once, at init: building a client asks the workspace for its configuration and the
# broker for a token, so in the handler it would cost every invoke a round trip. The
# broker starts fetching at init, so the token is usually ready when the client asks.
w = WorkspaceClient()


def token_from_broker() -> dict:
    # The session token proves the caller runs inside this execution environment.
    req = urllib.request.Request(f"{BROKER}/token", headers={"X-Aws-Session-Token": os.environ.get("AWS_SESSION_TOKEN", "")})
    with urllib.request.urlopen(req, timeout=15) as res:
        return json.load(res)


def handler(event, context):
    # 1. Plain HTTP: ask the broker, then call the REST API with the bearer token.
    token = token_from_broker()
    host = os.environ["DATABRICKS_HOST"].rstrip("/")
    req = urllib.request.Request(f"{host}/api/2.0/preview/scim/v2/Me", headers={"Authorization": f"Bearer {token['access_token']}"})
    with urllib.request.urlopen(req, timeout=15) as res:
        me = json.load(res)

    # 2. The SDK: DATABRICKS_HOST, DATABRICKS_METADATA_SERVICE_URL and
    #    DATABRICKS_AUTH_TYPE=metadata-service are all it needs; it asks the broker
    #    again, from its cache, when its token nears expiry.
    sdk_me = w.current_user.me()

    return {"plain": me.get("userName"), "sdk": sdk_me.user_name, "tokenExpiresIn": token["expires_in"]}
