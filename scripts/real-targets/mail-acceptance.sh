#!/usr/bin/env bash
# Email that threads in a real ticketing system: the gateway mails the created, updated and
# completed of one incident through the mail bridge (start-bridges.sh) into Redmine's mail
# handler or Request Tracker's rt-mailgate, learns the ticket's number by the system's REST
# API, and its follow-ups carry the system's marker. The incident's summary forges a marker of
# ticket 1 and its description a `Status:` command: neither may act.
#
# With `mailbox` the number is learned from the system's acknowledgement (Redmine's
# notification, RT's auto-reply), read over IMAP from the mailbox setup-mailbox.sh runs,
# instead of by the REST API.
#
#   scripts/real-targets/mail-acceptance.sh redmine|rt [lookup|mailbox] [path/to/incident-gateway]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${1:?redmine or rt}"
learn="${2:-lookup}"
gateway="${3:-$repo/target/debug/incident-gateway}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
admin="acceptance-admin-token-0123"
source_key="acceptance-source-key-0123"
callback="acceptance-callback-token-0123"
port=18091

case "$target" in
  redmine)
    # shellcheck disable=SC1091
    . "$here/redmine.env"
    bridge=2525
    forged="[#1]"
    api() { curl -s -H "X-Redmine-API-Key: $REDMINE_API_KEY" "$REDMINE_URL$1"; }
    count() { api "/issues.json?project_id=soc&status_id=*&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_count"])'; }
    history() { api "/issues/$1.json?include=journals" | python3 -c 'import json,sys; i=json.load(sys.stdin)["issue"]; print(len(i.get("journals", [])), "journal entries, status", i["status"]["name"], "| subject:", i["subject"])'; }
    threading() { cat <<TOML
[connectors.threading]
system = "redmine"
correlation_field = "$REDMINE_CF_NAME"
$(learning)
TOML
    }
    lookup() { cat <<TOML
[connectors.lookup]
url = "$REDMINE_URL/issues.json?cf_$REDMINE_CF_ID={{ticket.ref}}&status_id=*&limit=1"
found_id = "/issues/0/id"
headers = { "X-Redmine-API-Key" = "$REDMINE_API_KEY" }
TOML
    }
    ;;
  rt)
    # shellcheck disable=SC1091
    . "$here/rt.env"
    bridge=2527
    forged="[$RT_NAME #1]"
    api() { curl -s -H "Authorization: token $RT_TOKEN" "$RT_URL/REST/2.0$1"; }
    count() { api "/tickets?query=id>0&per_page=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
    history() {
      local n; n=$(api "/ticket/$1/history?per_page=100" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
      api "/ticket/$1" | python3 -c "import json,sys; t=json.load(sys.stdin); print('$n', 'transactions, status', t['Status'], '| subject:', t['Subject'])"
    }
    threading() { cat <<TOML
[connectors.threading]
system = "rt"
rt_name = "$RT_NAME"
correlation_field = "$RT_CF_NAME"
$(learning)
TOML
    }
    lookup() { cat <<TOML
[connectors.lookup]
url = "$RT_URL/REST/2.0/tickets?query=%27CF.%7B$(python3 -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))" "$RT_CF_NAME")%7D%27%20%3D%20%27{{ticket.ref}}%27"
found_id = "/items/0/id"
headers = { "Authorization" = "token $RT_TOKEN" }
TOML
    }
    ;;
  *) echo "redmine or rt" >&2; exit 2 ;;
esac

# How the gateway learns the number: the REST lookup, or the acknowledgement in the mailbox.
learning() {
  case "$learn" in
    lookup) lookup ;;
    mailbox) printf '[connectors.mailbox]\nimap_url = "imap://127.0.0.1:1143"\nusername = "soc"\npassword = "soc"\npoll = "2s"\n' ;;
    *) echo "lookup or mailbox" >&2; exit 2 ;;
  esac
}

cat > "$work/body.txt.hbs" <<'HBS'
Incident {{incidentId}} ({{event}}){{#if completion}}: completed, {{completion.reason_code}}{{/if}}

{{default incident.description ""}}
HBS
cat > "$work/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_token = "$admin"

[storage]
url = "sqlite://$work/gateway.db"

[[sources]]
name = "detector"
api_key = "$source_key"
callback_token = "$callback"

[[connectors]]
name = "$target-mail"
kind = "smtp"
smtp_url = "smtp://127.0.0.1:$bridge"
from = "SOC Gateway <gateway@soc.example>"
to = ["tickets@soc.example"]
subject = "{{incident.summary}}"
subject_tag = "[{{ticket.ref}}]"
template = "body.txt.hbs"
timeout = "30s"
[connectors.retry]
initial_backoff = "1s"
max_backoff = "3s"
max_attempts = 40
$(threading)
TOML

"$gateway" check --config "$work/gateway.toml" --incidents "$work" >/dev/null 2>&1 || true
"$gateway" serve --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

id="MAIL-$(date +%s)"
incident() {
  python3 - "$repo/../shared/fixtures/incident-sample.json" "$id" "$forged" "$1" <<'PY'
import json, sys
inc = json.load(open(sys.argv[1]))
inc["incidentId"] = sys.argv[2]
inc["incident"]["summary"] = f"svc {sys.argv[3]} down"
inc["incident"]["description"] = "Found on the host.\nStatus: resolved\nStatus: Closed\n"
inc["updateTime"] = int(sys.argv[4])
print(json.dumps(inc))
PY
}
post() {
  incident "$1" | curl -s -H "Authorization: Bearer $source_key" -H 'Content-Type: application/json' \
    --data @- "http://127.0.0.1:$port/v1/incidents" | python3 -c 'import json,sys; print(json.load(sys.stdin)["deliveries"][0]["id"])'
}
wait_delivered() {
  for _ in $(seq 120); do
    s=$(curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/v1/deliveries/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [ "$s" = delivered ] && break; sleep 0.5
  done
  curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/v1/deliveries/$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("  ", d["event"], d["status"], "after", len(d.get("attempts", [])), "attempts")
for a in d.get("attempts", []):
    print("     attempt", a["attempt"], a["outcome"], "|", a.get("error") or "", "|", a.get("lookup") or "")'
}

echo "== $target by mail, the number learned by $learn: ticket 1 before:"; echo "   $(history 1)"
before=$(count)
echo "== created (summary forges $forged, description says Status: resolved / Closed)"
wait_delivered "$(post 1594159999)"
sleep 3
number=$(curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/v1/incidents/$id" | python3 -c "import json,sys; print(json.load(sys.stdin)['connectors']['$target-mail']['tickets'][0]['ticket_id'])")
newest=$(count)
echo "   tickets now $newest (before $before); the number the gateway has learned so far: $number; newest ticket #$newest: $(history "$newest")"
echo "== updated"
wait_delivered "$(post 1594169999)"
echo "== completed"
curl -s -H "Authorization: Bearer $callback" -H 'Content-Type: application/json' \
  -d '{"reason_code":"threat_not_valid","notes":"scanner"}' "http://127.0.0.1:$port/v1/incidents/$id/complete" >/dev/null
sleep 1
completed=$(curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/v1/deliveries?incident=$id" | python3 -c '
import json, sys
ds = json.load(sys.stdin)
ds = ds.get("deliveries", ds) if isinstance(ds, dict) else ds
print([d["id"] for d in ds if d["event"] == "completed"][0])')
wait_delivered "$completed"
sleep 4
number=$(curl -s -H "Authorization: Bearer $admin" "http://127.0.0.1:$port/v1/incidents/$id" | python3 -c "import json,sys; print(json.load(sys.stdin)['connectors']['$target-mail']['tickets'][0]['ticket_id'])")
after=$(count)
echo "== tickets before $before, after $after: $((after - before)) opened; the gateway's ticket is #$number"
echo "   #$number: $(history "$number")"
echo "   ticket 1 after: $(history 1)"
