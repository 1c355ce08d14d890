#!/bin/sh
# End-to-end check of Redmine: REST create/search/note/close + mail handler create/reply/close
# + notification mail arriving in the IMAP mailbox (soc/soc @ 127.0.0.1:1143).
set -e
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/redmine.env"
K="corr-$(date +%s)-$$"
H="X-Redmine-API-Key: $REDMINE_API_KEY"
j() { python3 -c "import sys,json; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

echo "== REST create"
ID=$(curl -sf -H "$H" -H 'Content-Type: application/json' -X POST "$REDMINE_URL/issues.json" \
  -d "{\"issue\":{\"project_id\":\"soc\",\"tracker_id\":$REDMINE_TRACKER_BUG_ID,\"priority_id\":3,\"subject\":\"REST alert $K\",\"description\":\"created by verify-redmine.sh\",\"custom_fields\":[{\"id\":$REDMINE_CF_ID,\"value\":\"$K\"}]}}" | j "d['issue']['id']")
echo "created issue #$ID"
echo "== REST search by correlation key"
curl -sf -H "$H" "$REDMINE_URL/issues.json?project_id=soc&status_id=*&cf_$REDMINE_CF_ID=$K" | j "[i['id'] for i in d['issues']]"
echo "== REST note"
curl -sf -o /dev/null -w 'PUT note -> %{http_code}\n' -H "$H" -H 'Content-Type: application/json' -X PUT "$REDMINE_URL/issues/$ID.json" -d '{"issue":{"notes":"update from verify-redmine.sh"}}'
echo "== REST close"
curl -sf -o /dev/null -w 'PUT status -> %{http_code}\n' -H "$H" -H 'Content-Type: application/json' -X PUT "$REDMINE_URL/issues/$ID.json" -d "{\"issue\":{\"status_id\":$REDMINE_CLOSED_STATUS_ID,\"notes\":\"closing\"}}"
curl -sf -H "$H" "$REDMINE_URL/issues/$ID.json?include=journals" | j "(d['issue']['status'], len(d['issue']['journals']))"

mailpost() { # $1 = file with raw RFC822 mail
  curl -s -o /dev/null -w '%{http_code}' "$REDMINE_URL/mail_handler" \
    --data-urlencode "key=$REDMINE_MAIL_KEY" --data-urlencode "email@$1" \
    --data-urlencode "issue[project]=soc" --data-urlencode "issue[tracker]=Bug" \
    --data-urlencode "allow_override=all" --data-urlencode "unknown_user=accept"
}
T=$(mktemp)
echo "== mail handler: new issue"
cat > $T <<MAIL
From: Incident Gateway <gateway@soc.example>
To: redmine@soc.example
Subject: Mail alert $K
Message-ID: <$K.1@soc.example>
Content-Type: text/plain; charset=utf-8

Alert body from mail.

Priority: Urgent
$REDMINE_CF_NAME: $K
MAIL
echo "POST /mail_handler -> $(mailpost $T)"
MID=$(curl -sf -H "$H" "$REDMINE_URL/issues.json?project_id=soc&status_id=*&cf_$REDMINE_CF_ID=$K&sort=id:desc" | j "d['issues'][0]['id']")
curl -sf -H "$H" "$REDMINE_URL/issues/$MID.json" | j "('#%d'%d['issue']['id'], d['issue']['subject'], d['issue']['priority']['name'], d['issue']['custom_fields'])"
echo "== mail handler: reply [#$MID] adds a note"
cat > $T <<MAIL
From: Incident Gateway <gateway@soc.example>
To: redmine@soc.example
Subject: Re: [soc - Bug #$MID] Mail alert $K
Message-ID: <$K.2@soc.example>
Content-Type: text/plain; charset=utf-8

Second occurrence, adding a note.
MAIL
echo "POST /mail_handler -> $(mailpost $T)"
echo "== mail handler: reply with 'Status: Closed'"
cat > $T <<MAIL
From: Incident Gateway <gateway@soc.example>
To: redmine@soc.example
Subject: Re: [#$MID] Mail alert $K
Message-ID: <$K.3@soc.example>
Content-Type: text/plain; charset=utf-8

Resolved upstream.

Status: Closed
MAIL
echo "POST /mail_handler -> $(mailpost $T)"
curl -sf -H "$H" "$REDMINE_URL/issues/$MID.json?include=journals" | j "(d['issue']['status']['name'], [ (x['notes'][:40], [(c['name'],c['new_value']) for c in x['details']]) for x in d['issue']['journals']])"
rm -f $T
echo "== notification in IMAP INBOX (soc/soc@127.0.0.1:1143)"
sleep 3
python3 - "$MID" <<'PY'
import imaplib, sys, email.header
m = imaplib.IMAP4('127.0.0.1', 1143); m.login('soc', 'soc'); m.select('INBOX')
typ, data = m.search(None, 'SUBJECT', '"Bug #%s]"' % sys.argv[1])
ids = data[0].split()
print("messages for #%s: %d" % (sys.argv[1], len(ids)))
for i in ids[:3]:
    h = m.fetch(i, '(BODY.PEEK[HEADER.FIELDS (SUBJECT TO)])')[1][0][1].decode().strip()
    print("  ", " | ".join(h.splitlines()))
m.logout()
sys.exit(0 if ids else 1)
PY
