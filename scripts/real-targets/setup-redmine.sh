#!/bin/sh
# Idempotent: install Debian's Redmine 5 (PostgreSQL backend), configure it for
# incident-gateway tests, start it on 127.0.0.1:3000 and write redmine.env.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
export REDMINE_URL=${REDMINE_URL:-http://127.0.0.1:3000}
export REDMINE_API_KEY=${REDMINE_API_KEY:-a11ce0000000000000000000000000000000a9e1}
export REDMINE_GATEWAY_API_KEY=${REDMINE_GATEWAY_API_KEY:-9a7e3a900000000000000000000000000000a9e1}
export REDMINE_MAIL_KEY=${REDMINE_MAIL_KEY:-soc-redmine-mail-key}
export REDMINE_ADMIN_PASSWORD=${REDMINE_ADMIN_PASSWORD:-admin-soc-pw}
export REDMINE_GATEWAY_PASSWORD=${REDMINE_GATEWAY_PASSWORD:-gateway-soc-pw}
export REDMINE_ENV_OUT=$HERE/redmine.env

# 1. packages (PostgreSQL at 127.0.0.1:5432, trust auth; dbconfig-common via unix socket)
if ! dpkg -s redmine redmine-pgsql >/dev/null 2>&1; then
  debconf-set-selections <<'PRESEED'
redmine redmine/current-instances string default
redmine redmine/instances/default/dbconfig-install boolean true
redmine redmine/instances/default/database-type select pgsql
redmine redmine/instances/default/pgsql/method select Unix socket
redmine redmine/instances/default/pgsql/authmethod-admin select ident
redmine redmine/instances/default/pgsql/authmethod-user select password
redmine redmine/instances/default/pgsql/admin-user string postgres
redmine redmine/instances/default/pgsql/admin-pass password
redmine redmine/instances/default/pgsql/app-pass password redmine
redmine redmine/instances/default/app-password password redmine
redmine redmine/instances/default/app-password-confirm password redmine
redmine redmine/instances/default/db/dbname string redmine_default
redmine redmine/instances/default/default-language string en
PRESEED
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q redmine redmine-pgsql
fi

# 1b. Debian's bundle has no app server; add WEBrick (ruby-webrick is installed as a dependency)
if ! grep -qs webrick /usr/share/redmine/Gemfile.local; then
  echo 'gem "webrick"' >> /usr/share/redmine/Gemfile.local
  rm -f /var/lib/redmine/Gemfile.lock
  (cd /usr/share/redmine && bundle install --local --quiet)
  chown www-data:www-data /var/lib/redmine/Gemfile.lock
fi

# 2. outgoing mail -> SMTP 127.0.0.1:2526 (no auth, no TLS)
cat > /etc/redmine/default/configuration.yml <<'YML'
production:
  email_delivery:
    delivery_method: :smtp
    smtp_settings:
      address: 127.0.0.1
      port: 2526
      domain: soc.example
      enable_starttls_auto: false
      openssl_verify_mode: none
YML
chown root:www-data /etc/redmine/default/configuration.yml; chmod 0640 /etc/redmine/default/configuration.yml

# 3. settings, users, project, custom field (rails runner, idempotent)
touch "$REDMINE_ENV_OUT"; chmod 0666 "$REDMINE_ENV_OUT"
cd /usr/share/redmine
su www-data -s /bin/sh -c "REDMINE_INSTANCE=default nice bundle exec rails runner -e production $HERE/redmine-configure.rb" </dev/null
chmod 0644 "$REDMINE_ENV_OUT"

# 4. (re)start the server so configuration.yml is picked up
"$HERE/start-redmine.sh"
