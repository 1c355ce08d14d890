"""Verifies Standard Webhooks signatures with the reference implementation
(`standardwebhooks` on PyPI), independently of the gateway's own code.

Reads JSON from stdin: {"secret": "whsec_...", "requests": [{"headers": {...}, "body": "..."}]}
and prints one line per request: "ok <webhook-id>" or "FAIL <webhook-id> <error>".
Exit status 0 only if every request verified.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

doc = json.load(sys.stdin)
hook = Webhook(doc["secret"])
failed = False
for request in doc["requests"]:
    headers = request["headers"]
    try:
        hook.verify(request["body"], headers)
        print("ok", headers.get("webhook-id"))
    except Exception as e:  # noqa: BLE001 - report every kind of failure
        failed = True
        print("FAIL", headers.get("webhook-id"), repr(e))
sys.exit(1 if failed else 0)
