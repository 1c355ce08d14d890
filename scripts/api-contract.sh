#!/usr/bin/env bash
# The API contract, checked against the real gateway: starts the binary on a config made for
# the run (a temp folder, a SQLite file, an admin token, a source key and a callback token),
# then runs Schemathesis (from PyPI, in a venv kept under target/ so reruns are quick) against
# the document the gateway serves at /openapi.json, with every check: no 5xx, status codes,
# content types, headers and bodies as documented, auth enforced, bad input refused.
#
# Three runs, one per credential, as one Authorization header cannot be the admin token, a
# source key and a callback token at once: admin operations and probes with the admin token,
# POST /v1/incidents with the source key, POST /v1/incidents/{id}/complete with the callback
# token. Bounded by IGW_CONTRACT_EXAMPLES test cases per operation (default 40) and
# IGW_CONTRACT_MAX_TIME seconds per run (default 60).
# Usage: scripts/api-contract.sh [--locked]   (extra arguments go to cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/api-contract/venv"
schemathesis_version="4.32.5"
examples="${IGW_CONTRACT_EXAMPLES:-40}"
max_time="${IGW_CONTRACT_MAX_TIME:-60}"

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "installing schemathesis $schemathesis_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

cargo build "$@" --bin incident-gateway
binary="$target/debug/incident-gateway"

work=$(mktemp -d)
gateway_pid=""
cleanup() {
  if [ -n "$gateway_pid" ]; then kill "$gateway_pid" 2>/dev/null || true; wait "$gateway_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
admin_token="contract-admin-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
source_key="contract-source-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
callback_token="contract-callback-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"

# The example's connector, its template by absolute path; its target is a closed port, so
# deliveries retry (and show up as pending) without anything listening.
cat > "$work/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_token = "$admin_token"

[storage]
url = "sqlite://$work/gateway.db"

[[sources]]
name = "detector"
api_key = "$source_key"
callback_token = "$callback_token"

[[connectors]]
name = "ticketing"
kind = "http"
url = "http://127.0.0.1:9/hook"
template = "$root/templates/generic/incident.json.hbs"
timeout = "2s"
EOF

"$binary" serve --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$gateway_pid" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
  sleep 0.1
done

# Something to find: a few incidents (one completed), so the admin lists and views have
# pages to show and the complete operation meets both a known and an unknown incident.
for i in 1 2 3; do
  curl -fsS -o /dev/null -X POST "$base/v1/incidents" -H "Authorization: Bearer $source_key" \
    -H 'Content-Type: application/json' --data-binary "{\"incidentId\": \"contract-$i\"}"
done
curl -fsS -o /dev/null -X POST "$base/v1/incidents/contract-3/complete" \
  -H "Authorization: Bearer $callback_token" -H 'Content-Type: application/json' \
  --data-binary '{"reason_code": "other"}'

run() {
  local credential="$1"; shift
  # From the temp folder: Schemathesis keeps its cache in the working directory.
  (cd "$work" && "$venv/bin/schemathesis" --config-file "$root/scripts/api-contract.toml" run "$base/openapi.json" \
    --checks all \
    --max-examples "$examples" \
    --max-time "$max_time" \
    --seed 1 \
    --generation-database none \
    --request-timeout 10 \
    --no-color \
    -H "Authorization: Bearer $credential" \
    "$@")
}

status=0
echo "== admin operations and probes (admin token)" >&2
run "$admin_token" --include-tag admin --include-tag probes || status=1
echo "== POST /v1/incidents (source key)" >&2
run "$source_key" --include-operation-id postIncidents || status=1
echo "== the back channel: complete, SLA status (callback token)" >&2
run "$callback_token" --include-operation-id completeIncident --include-operation-id reportSlaStatus || status=1

if [ "$status" != 0 ]; then
  echo "the API does not keep its contract; the gateway's log:" >&2
  tail -n 50 "$work/gateway.log" >&2
fi
exit "$status"
