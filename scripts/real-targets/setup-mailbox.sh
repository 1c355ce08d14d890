#!/bin/sh
# Idempotent: IMAP mailbox soc/soc on 127.0.0.1:1143 (dovecot, plain login, no TLS)
# fed by an SMTP sink on 127.0.0.1:2526 (mail-bridge.py --target maildir) that
# collects Redmine's and RT's outgoing notifications.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
MAILHOME=/var/lib/soc-mail

if ! dpkg -s dovecot-imapd python3-aiosmtpd >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dovecot-imapd python3-aiosmtpd
fi
id soc >/dev/null 2>&1 || useradd --system --home-dir $MAILHOME --create-home --shell /usr/sbin/nologin soc
mkdir -p $MAILHOME/Maildir/cur $MAILHOME/Maildir/new $MAILHOME/Maildir/tmp
chown -R soc:soc $MAILHOME
UID_SOC=$(id -u soc); GID_SOC=$(id -g soc)

echo "soc:{PLAIN}soc:$UID_SOC:$GID_SOC::$MAILHOME::" > /etc/dovecot/soc-users
chown root:dovecot /etc/dovecot/soc-users; chmod 0640 /etc/dovecot/soc-users

# standalone dovecot config (does not use Debian's conf.d, so no TLS/port 143)
cat > /etc/dovecot/soc-imap.conf <<CONF
# written by scripts/real-targets/setup-mailbox.sh
protocols = imap
listen = 127.0.0.1
base_dir = /run/dovecot-soc/
instance_name = dovecot-soc
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 100
log_path = /var/log/dovecot-soc.log
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n /etc/dovecot/soc-users
}
userdb {
  driver = passwd-file
  args = username_format=%n /etc/dovecot/soc-users
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = 1143
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 0
  }
}
CONF
cp "$HERE/mail-bridge.py" /usr/local/bin/mail-bridge.py   # readable by user soc
chmod 0755 /usr/local/bin/mail-bridge.py
"$HERE/start-mailbox.sh"
