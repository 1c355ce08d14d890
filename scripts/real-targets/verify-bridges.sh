#!/bin/sh
# Send one alert by SMTP to each bridge and find the resulting ticket.
set -e
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/redmine.env"; . "$HERE/rt.env"
K="bridge-$(date +%s)-$$"
python3 - "$K" <<'PY'
import smtplib, sys
from email.message import EmailMessage
k = sys.argv[1]
for port, to in ((2525, "redmine@soc.example"), (2527, "rt@soc.example")):
    m = EmailMessage(); m["From"] = "Incident Gateway <gateway@soc.example>"; m["To"] = to
    m["Subject"] = "Bridge alert %s" % k; m.set_content("via mail-bridge.py\n\nCorrelation key: %s\n" % k)
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        print(port, s.send_message(m) or "accepted")
PY
curl -sf -H "X-Redmine-API-Key: $REDMINE_API_KEY" "$REDMINE_URL/issues.json?project_id=soc&status_id=*&cf_$REDMINE_CF_ID=$K" | python3 -c 'import json,sys; print("redmine:", [(i["id"], i["subject"]) for i in json.load(sys.stdin)["issues"]])'
curl -sf -G -H "Authorization: token $RT_TOKEN" "$RT_URL/REST/2.0/tickets" --data-urlencode "query=Subject LIKE '$K'" --data-urlencode fields=Subject | python3 -c 'import json,sys; print("rt:", [(i["id"], i["Subject"]) for i in json.load(sys.stdin)["items"]])'
