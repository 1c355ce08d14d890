#!/bin/sh
# End-to-end check of RT5: REST2 create/search/correspond/resolve + rt-mailgate
# create/thread (correspond + comment) + autoreply arriving in the IMAP mailbox.
set -e
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/rt.env"
K="corr-$(date +%s)-$$"
A="Authorization: token $RT_TOKEN"
j() { python3 -c "import sys,json; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
search() { curl -sf -G -H "$A" "$RT_URL/REST/2.0/tickets" --data-urlencode "query='CF.{$RT_CF_NAME}' = '$1'" --data-urlencode 'fields=Subject,Status' --data-urlencode 'orderby=id' --data-urlencode 'order=DESC'; }

echo "== REST2 create"
ID=$(curl -sf -H "$A" -H 'Content-Type: application/json' -X POST "$RT_URL/REST/2.0/ticket" \
  -d "{\"Queue\":\"$RT_QUEUE\",\"Subject\":\"REST alert $K\",\"Content\":\"created by verify-rt.sh\",\"Requestor\":\"alerts@soc.example\",\"Priority\":50,\"CustomFields\":{\"$RT_CF_NAME\":\"$K\"}}" | j "d['id']")
echo "created ticket #$ID"
echo "== REST2 search by correlation key"
search "$K" | j "[(i['id'], i['Status']) for i in d['items']]"
echo "== REST2 correspond"
curl -sf -H "$A" -H 'Content-Type: application/json' -X POST "$RT_URL/REST/2.0/ticket/$ID/correspond" -d '{"Content":"update from verify-rt.sh","ContentType":"text/plain"}'; echo
echo "== REST2 comment"
curl -sf -H "$A" -H 'Content-Type: application/json' -X POST "$RT_URL/REST/2.0/ticket/$ID/comment" -d '{"Content":"internal note","ContentType":"text/plain"}'; echo
echo "== REST2 resolve"
curl -sf -H "$A" -H 'Content-Type: application/json' -X PUT "$RT_URL/REST/2.0/ticket/$ID" -d '{"Status":"resolved"}'; echo

gate() { rt-mailgate --queue "$RT_QUEUE" --action "$1" --url "$RT_URL/"; }
echo "== rt-mailgate: new ticket (correspond)"
gate correspond <<MAIL
From: Incident Gateway <gateway@soc.example>
To: rt@soc.example
Subject: Mail alert $K
Message-ID: <$K.1@soc.example>
Content-Type: text/plain; charset=utf-8

Alert body from mail.
MAIL
echo "rt-mailgate rc=$?"
MID=$(curl -sf -G -H "$A" "$RT_URL/REST/2.0/tickets" --data-urlencode "query=Subject LIKE 'Mail alert $K'" | j "d['items'][0]['id']")
echo "mail created ticket #$MID"
echo "== rt-mailgate: reply with [$RT_NAME #$MID] (correspond)"
gate correspond <<MAIL
From: Incident Gateway <gateway@soc.example>
To: rt@soc.example
Subject: Re: [$RT_NAME #$MID] Mail alert $K
Message-ID: <$K.2@soc.example>
Content-Type: text/plain; charset=utf-8

Second occurrence (correspond).
MAIL
echo "== rt-mailgate: reply with [$RT_NAME #$MID] (comment)"
gate comment <<MAIL
From: Incident Gateway <gateway@soc.example>
To: rt-comment@soc.example
Subject: [$RT_NAME #$MID] Mail alert $K
Message-ID: <$K.3@soc.example>
Content-Type: text/plain; charset=utf-8

Internal comment by mail.
MAIL
echo "== rt-mailgate + CommandByMail: 'Status: resolved' at top of body"
gate correspond <<MAIL
From: Incident Gateway <gateway@soc.example>
To: rt@soc.example
Subject: Re: [$RT_NAME #$MID] Mail alert $K
Message-ID: <$K.4@soc.example>
Content-Type: text/plain; charset=utf-8

Status: resolved

Resolved upstream.
MAIL
curl -sf -H "$A" "$RT_URL/REST/2.0/ticket/$MID" | j "'status now: ' + d['Status']"
curl -sf -H "$A" "$RT_URL/REST/2.0/ticket/$MID/history?fields=Type,Creator&per_page=50" | j "[ (t['Type']) for t in d['items']]"
echo "== autoreply in IMAP INBOX (soc/soc@127.0.0.1:1143)"
sleep 2
python3 - "$RT_NAME" "$MID" <<'PY'
import imaplib, sys
m = imaplib.IMAP4('127.0.0.1', 1143); m.login('soc', 'soc'); m.select('INBOX')
typ, data = m.search(None, 'SUBJECT', '"[%s #%s]"' % (sys.argv[1], sys.argv[2]))
ids = data[0].split()
print("messages for #%s: %d" % (sys.argv[2], len(ids)))
for i in ids[:3]:
    h = m.fetch(i, '(BODY.PEEK[HEADER.FIELDS (SUBJECT TO)])')[1][0][1].decode().strip()
    print("  ", " | ".join(h.splitlines()))
m.logout()
sys.exit(0 if ids else 1)
PY
