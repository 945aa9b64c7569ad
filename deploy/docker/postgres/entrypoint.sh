#!/bin/bash
# Initialises the cluster on first start, then runs PostgreSQL as user postgres.
set -euo pipefail
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
# The key must belong to the server's user with no access for others.
install -o postgres -g postgres -m 600 "$SSL_KEY_FILE" /var/run/postgresql/server.key
install -o postgres -g postgres -m 644 "$SSL_CERT_FILE" /var/run/postgresql/server.crt
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  install -o postgres -m 600 "$POSTGRES_PASSWORD_FILE" /tmp/pwfile
  as_pg initdb -D "$PGDATA" -U postgres --auth=scram-sha-256 --pwfile=/tmp/pwfile -E UTF8 --locale=C >/dev/null
  rm -f /tmp/pwfile
  echo "hostssl all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  for db in ${CREATE_DATABASES:-}; do
    echo "CREATE DATABASE \"$db\"" | as_pg postgres --single -D "$PGDATA" postgres >/dev/null
  done
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" \
  -c listen_addresses='*' -c max_connections="${MAX_CONNECTIONS:-200}" \
  -c ssl=on -c ssl_cert_file=/var/run/postgresql/server.crt -c ssl_key_file=/var/run/postgresql/server.key
