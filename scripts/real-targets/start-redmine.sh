#!/bin/sh
# (Re)start Redmine (WEBrick) on 127.0.0.1:3000 as www-data. Log: /var/log/redmine/default/server.log
set -e
PORT=${REDMINE_PORT:-3000}
PIDFILE=/var/cache/redmine/default/tmp/server.pid
if [ -f "$PIDFILE" ] && kill -0 "$(cat $PIDFILE)" 2>/dev/null; then
  kill "$(cat $PIDFILE)"; sleep 3
fi
rm -f "$PIDFILE" /var/cache/redmine/default/tmp/pids/server.pid
mkdir -p /var/cache/redmine/default/tmp/pids /usr/share/redmine/tmp; chown -R www-data:www-data /var/cache/redmine/default/tmp /usr/share/redmine/tmp  # rails server mkdirs Rails.root/tmp
cd /usr/share/redmine
su www-data -s /bin/sh -c "cd /usr/share/redmine && REDMINE_INSTANCE=default nohup nice bundle exec rails server -u webrick -e production -b 127.0.0.1 -p $PORT -P $PIDFILE >> /var/log/redmine/default/server.log 2>&1 &"
i=0
until curl -s -o /dev/null http://127.0.0.1:$PORT/; do
  i=$((i+1)); [ $i -gt 120 ] && { echo "redmine did not come up; see /var/log/redmine/default/server.log"; exit 1; }
  sleep 1
done
echo "redmine up on http://127.0.0.1:$PORT (pid $(cat $PIDFILE))"
