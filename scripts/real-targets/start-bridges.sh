#!/bin/sh
# (Re)start the inbound mail bridges: 127.0.0.1:2525 -> Redmine /mail_handler, 127.0.0.1:2527 -> RT (rt-mailgate).
HERE=$(cd "$(dirname "$0")" && pwd)
for spec in redmine:2525 rt:2527; do
  t=${spec%%:*}; p=${spec##*:}; pidf=/run/mail-bridge-$t.pid
  [ -f $pidf ] && kill "$(cat $pidf)" 2>/dev/null && sleep 1
  nohup /usr/bin/python3 "$HERE/mail-bridge.py" --target $t --listen 127.0.0.1:$p >> /var/log/mail-bridge-$t.log 2>&1 &
  echo $! > $pidf
  echo "mail-bridge --target $t on 127.0.0.1:$p (pid $!, log /var/log/mail-bridge-$t.log)"
done
