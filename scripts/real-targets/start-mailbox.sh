#!/bin/sh
# (Re)start dovecot (IMAP 127.0.0.1:1143, soc/soc) and the SMTP->Maildir sink on 127.0.0.1:2526.
set -e
PIDFILE=/var/lib/soc-mail/sink.pid
if [ -f /run/dovecot-soc/master.pid ] && kill -0 "$(cat /run/dovecot-soc/master.pid)" 2>/dev/null; then
  doveadm -c /etc/dovecot/soc-imap.conf reload 2>/dev/null || true
else
  dovecot -c /etc/dovecot/soc-imap.conf
fi
if [ -f "$PIDFILE" ] && kill -0 "$(cat $PIDFILE)" 2>/dev/null; then
  kill "$(cat $PIDFILE)"; sleep 1
fi
su soc -s /bin/sh -c "cd /var/lib/soc-mail && nohup /usr/bin/python3 /usr/local/bin/mail-bridge.py --target maildir --listen 127.0.0.1:2526 --maildir /var/lib/soc-mail/Maildir >> /var/lib/soc-mail/sink.log 2>&1 & echo \$! > $PIDFILE"
sleep 2
python3 - <<'PY'
import imaplib, smtplib
smtplib.SMTP('127.0.0.1', 2526, timeout=5).quit()
m = imaplib.IMAP4('127.0.0.1', 1143); m.login('soc', 'soc'); print('IMAP INBOX messages:', m.select('INBOX')[1][0].decode()); m.logout()
PY
echo "mailbox up: IMAP 127.0.0.1:1143 (soc/soc), SMTP sink 127.0.0.1:2526 (pid $(cat $PIDFILE))"
