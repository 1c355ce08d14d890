#!/bin/sh
# Idempotent: install Debian's Request Tracker 5 (SQLite backend), configure it for
# incident-gateway tests, start it on 127.0.0.1:8080 and write rt.env.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
export RT_URL=${RT_URL:-http://127.0.0.1:8080}
export RT_ROOT_PASSWORD=${RT_ROOT_PASSWORD:-password}
export RT_GATEWAY_PASSWORD=${RT_GATEWAY_PASSWORD:-gateway-soc-pw}
export RT_TOKEN_HEX=${RT_TOKEN_HEX:-5ca1ab1e00000000000000000000c0de}
export RT_GATEWAY_TOKEN_HEX=${RT_GATEWAY_TOKEN_HEX:-9a7e3a9000000000000000000000c0de}
export RT_ENV_OUT=$HERE/rt.env

# 1. packages
if ! dpkg -s request-tracker5 rt5-db-sqlite rt5-clients rt5-standalone >/dev/null 2>&1; then
  debconf-set-selections <<'PRESEED'
request-tracker5 request-tracker5/rtname string soc.example
request-tracker5 request-tracker5/organization string soc.example
request-tracker5 request-tracker5/correspondaddress string rt@soc.example
request-tracker5 request-tracker5/commentaddress string rt-comment@soc.example
request-tracker5 request-tracker5/webbaseurl string http://127.0.0.1:8080
request-tracker5 request-tracker5/webpath string
request-tracker5 request-tracker5/handle-siteconfig-permissions boolean true
request-tracker5 request-tracker5/install-cronjobs boolean false
request-tracker5 request-tracker5/initial-root-password password password
request-tracker5 request-tracker5/dbconfig-install boolean true
request-tracker5 request-tracker5/database-type select sqlite3
PRESEED
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q request-tracker5 rt5-db-sqlite rt5-clients rt5-standalone
fi

# 1b. RT::Extension::CommandByMail ("Status: resolved" lines in mail). Debian packages it only
#     for RT4 (librt-extension-commandbymail-perl depends on request-tracker4), but the code
#     (3.00, RT 4.4 mail-plugin API) works with RT 5.0: unpack the .deb into RT5's local plugin dir.
CBM=/usr/local/share/request-tracker5/plugins/RT-Extension-CommandByMail
if [ "${RT_COMMANDBYMAIL:-1}" = 1 ] && [ ! -f $CBM/lib/RT/Extension/CommandByMail.pm ]; then
  T=$(mktemp -d); chmod 755 $T; (cd $T && apt-get download -q librt-extension-commandbymail-perl && dpkg-deb -x librt-extension-commandbymail-perl_*.deb x)
  mkdir -p $(dirname $CBM); cp -r $T/x/usr/share/request-tracker4/plugins/RT-Extension-CommandByMail $CBM
  rm -rf $T
fi

# 2. site config overrides (served at /, outgoing mail by SMTP to 127.0.0.1:2526)
cat > /etc/request-tracker5/RT_SiteConfig.d/90-incident-gateway.pm <<'PM'
# written by scripts/real-targets/setup-rt.sh
Set($WebPath, '');
Set($WebDomain, '127.0.0.1');
Set($WebPort, 8080);
Set($WebBaseURL, 'http://127.0.0.1:8080');
Set(@ReferrerWhitelist, qw(127.0.0.1:8080 localhost:8080));
# RT5 rejects $MailCommand='smtp' ("Unknown value"), but accepts a CODE ref:
# send every outgoing mail by SMTP to 127.0.0.1:2526 (recipients = To/Cc/Bcc).
Set($MailCommand, sub {
    my $entity = shift;
    require Net::SMTP; require Email::Address;
    my $head = $entity->head;
    my @rcpt = map { $_->address } map { Email::Address->parse($_) }
               map { $head->get($_) } qw(To Cc Bcc);
    $head->delete('Bcc');
    return 1 unless @rcpt;
    my ($from) = map { $_->address } Email::Address->parse(scalar($head->get('From')) // '');
    $from ||= 'rt@soc.example';
    my $smtp = Net::SMTP->new('127.0.0.1', Port => 2526, Timeout => 30)
        or do { RT->Logger->crit("SMTP 127.0.0.1:2526 unreachable: $@"); return 0 };
    my $ok = $smtp->mail($from) && $smtp->to(@rcpt, { SkipBad => 1 }) && $smtp->data($entity->stringify);
    RT->Logger->crit("SMTP send failed: " . $smtp->message) unless $ok;
    $smtp->quit;
    RT->Logger->info("sent mail to @rcpt via 127.0.0.1:2526") if $ok;
    return $ok ? 1 : 0;
});
Set($CorrespondAddress, 'rt@soc.example');
Set($CommentAddress, 'rt-comment@soc.example');
Set($LogToFile, 'info');
if (-f '/usr/local/share/request-tracker5/plugins/RT-Extension-CommandByMail/lib/RT/Extension/CommandByMail.pm') {
    Plugin('RT::Extension::CommandByMail');
    Set(@MailPlugins, qw(Auth::MailFrom Action::CommandByMail));
}
Set($LogDir, '/var/log/request-tracker5');
Set($LogToFileNamed, 'rt.log');
Set($LogToSTDERR, 'warning');
1;
PM
chown root:www-data /etc/request-tracker5/RT_SiteConfig.d/*.pm /etc/request-tracker5/RT_SiteConfig.pm
chmod 0640 /etc/request-tracker5/RT_SiteConfig.d/*.pm /etc/request-tracker5/RT_SiteConfig.pm
# the CLI (/usr/bin/rt) reads /etc/request-tracker5/rt.conf
echo "server $RT_URL" > /etc/request-tracker5/rt.conf

# 3. root password, queue, custom field, rights, gateway user, auth tokens
touch "$RT_ENV_OUT"; chmod 0666 "$RT_ENV_OUT"
su www-data -s /bin/sh -c "cd /tmp && nice perl $HERE/rt-configure.pl"
chmod 0644 "$RT_ENV_OUT"

# 4. (re)start
"$HERE/start-rt.sh"
