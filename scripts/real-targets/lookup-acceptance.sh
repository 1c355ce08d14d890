#!/usr/bin/env bash
# Never a second ticket, against a real ticketing system: the gateway's `created` reaches the
# target, which stores the ticket, but its answer is held (slow-proxy.py) past the connector's
# timeout — or the gateway gets SIGTERM while it waits and is restarted. Each time the gateway
# must look the ticket up and find it: exactly one new ticket, the lookup in the attempts.
#
#   scripts/real-targets/lookup-acceptance.sh redmine|rt [path/to/incident-gateway]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${1:?redmine or rt}"
gateway="${2:-$repo/target/debug/incident-gateway}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
admin="acceptance-admin-token-0123"
source_key="acceptance-source-key-0123"
port=18090
proxy_port=3190

case "$target" in
  redmine)
    # shellcheck disable=SC1091
    . "$here/redmine.env"
    upstream="${REDMINE_URL#http://}"
    count() { curl -s -H "X-Redmine-API-Key: $REDMINE_API_KEY" \
      "$REDMINE_URL/issues.json?project_id=soc&status_id=*&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_count"])'; }
    connector() { cat <<TOML
[[connectors]]
name = "redmine"
kind = "http"
url = "http://127.0.0.1:$proxy_port/issues.json"
template = "$repo/templates/redmine/created.json.hbs"
ticket_id = "/issue/id"
timeout = "$1"
error_message = ["/errors"]
priorities = { critical = 4, high = 3, medium = 2, low = 1, info = 1, default = 2 }
[connectors.retry]
initial_backoff = "1s"
max_backoff = "2s"
max_attempts = 20
[connectors.headers]
"X-Redmine-API-Key" = "$REDMINE_API_KEY"
[connectors.vars]
project_id = "soc"
tracker_id = "1"
closed_status_id = "5"
correlation_field_id = "$REDMINE_CF_ID"
[connectors.lookup]
url = "http://127.0.0.1:$proxy_port/issues.json?cf_$REDMINE_CF_ID={{ticket.ref}}&status_id=*&limit=1"
found_id = "/issues/0/id"
[connectors.requests.updated]
method = "PUT"
url = "http://127.0.0.1:$proxy_port/issues/{{ticket.id}}.json"
template = "$repo/templates/redmine/updated.json.hbs"
[connectors.requests.completed]
method = "PUT"
url = "http://127.0.0.1:$proxy_port/issues/{{ticket.id}}.json"
template = "$repo/templates/redmine/completed.json.hbs"
TOML
    }
    ;;
  rt)
    # shellcheck disable=SC1091
    . "$here/rt.env"
    upstream="${RT_URL#http://}"
    count() { curl -s -H "Authorization: token $RT_TOKEN" \
      "$RT_URL/REST/2.0/tickets?query=id>0&per_page=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
    connector() { python3 - "$1" "$proxy_port" "$repo" "$RT_TOKEN" <<'PY'
import re, sys
timeout, port, repo, token = sys.argv[1:]
text = open(f"{repo}/examples/connectors.toml").read()
block = re.search(r'(\[\[connectors\]\]\nname = "rt"\n.*?)(?=\n# -{20,}|\Z)', text, re.S).group(1)
block = block.replace("https://rt.example.com", f"http://127.0.0.1:{port}")
block = block.replace('"../templates/', f'"{repo}/templates/').replace('"../schemas/', f'"{repo}/schemas/')
block = re.sub(r'\$\{RT_TOKEN[^}]*\}', token, block)
block = re.sub(r'timeout = "[^"]*"', f'timeout = "{timeout}"', block)
print(block)
print('[connectors.retry]\ninitial_backoff = "1s"\nmax_backoff = "2s"\nmax_attempts = 20')
PY
    }
    ;;
  *) echo "redmine or rt" >&2; exit 2 ;;
esac

write_config() {
  cat > "$work/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_token = "$admin"
shutdown_grace = "1s"

[storage]
url = "sqlite://$work/gateway.db"

[[sources]]
name = "detector"
api_key = "$source_key"

[templates]
partials = "$repo/templates/partials"

$(connector "$1")
TOML
}

start_gateway() {
  "$gateway" serve --config "$work/gateway.toml" >>"$work/gateway.log" 2>&1 &
  gw=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "gateway did not start"; cat "$work/gateway.log"; exit 1
}

post_incident() {
  python3 - "$repo/../shared/fixtures/incident-sample.json" "$1" <<'PY' > "$work/incident.json"
import json, sys
inc = json.load(open(sys.argv[1])); inc["incidentId"] = sys.argv[2]; print(json.dumps(inc))
PY
  curl -s -H "Authorization: Bearer $source_key" -H 'Content-Type: application/json' \
    --data @"$work/incident.json" "http://127.0.0.1:$port/v1/incidents" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["deliveries"][0]["id"])'
}

wait_delivered() {
  for _ in $(seq 120); do
    status=$(curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/v1/deliveries/$1" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status"))')
    [ "$status" = delivered ] && break
    sleep 0.5
  done
  curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/v1/deliveries/$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("  delivery", d["id"], d["status"])
for a in d.get("attempts", []):
    print("  attempt", a["attempt"], a["outcome"], "HTTP", a.get("status_code"), "|", a.get("error") or "", "|", a.get("lookup") or "")'
}

run_id="ACC-$(date +%s)"
echo "== $target: a created that times out after the target stored it"
python3 "$here/slow-proxy.py" --listen "127.0.0.1:$proxy_port" --target "$upstream" --delay 6 --slow 1 >"$work/proxy1.log" 2>&1 &
proxy=$!
sleep 0.5
write_config 2s
before=$(count)
start_gateway
delivery=$(post_incident "$run_id-TIMEOUT")
wait_delivered "$delivery"
after=$(count)
echo "  tickets before $before, after $after: $((after - before)) opened"
kill "$gw" "$proxy"; wait "$gw" 2>/dev/null || true

echo "== $target: SIGTERM while the created waits for its answer, then restart"
python3 "$here/slow-proxy.py" --listen "127.0.0.1:$proxy_port" --target "$upstream" --delay 10 --slow 1 >"$work/proxy2.log" 2>&1 &
proxy=$!
sleep 0.5
rm -f "$work"/gateway.db*
write_config 30s
before=$(count)
start_gateway
delivery=$(post_incident "$run_id-SIGTERM")
sleep 2
kill -TERM "$gw"; wait "$gw" || true
echo "  gateway stopped by SIGTERM with the create unanswered"
start_gateway
wait_delivered "$delivery"
after=$(count)
echo "  tickets before $before, after $after: $((after - before)) opened"
kill "$gw" "$proxy"
