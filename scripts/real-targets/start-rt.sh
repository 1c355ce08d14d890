#!/bin/sh
# (Re)start RT5 (Starlet via rt-server) on 127.0.0.1:8080 as www-data. Log: /var/log/request-tracker5/server.log
set -e
PORT=${RT_PORT:-8080}
PIDFILE=/var/log/request-tracker5/rt-server.pid
if [ -f "$PIDFILE" ] && kill -0 "$(cat $PIDFILE)" 2>/dev/null; then
  kill "$(cat $PIDFILE)"; sleep 3
fi
rm -f "$PIDFILE"
su www-data -s /bin/sh -c "cd /tmp && nohup nice /usr/share/request-tracker5/libexec/rt-server --host 127.0.0.1 --port $PORT --max-workers 2 >> /var/log/request-tracker5/server.log 2>&1 & echo \$! > $PIDFILE"
i=0
until curl -s -o /dev/null http://127.0.0.1:$PORT/; do
  i=$((i+1)); [ $i -gt 120 ] && { echo "RT did not come up; see /var/log/request-tracker5/server.log"; exit 1; }
  sleep 1
done
echo "RT up on http://127.0.0.1:$PORT (pid $(cat $PIDFILE))"
