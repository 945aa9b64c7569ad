#!/usr/bin/env bash
# Starts the whole system locally, in the foreground, on an embedded default:
#   - a PostgreSQL cluster under .dev/pg (created on first run with the machine's
#     PostgreSQL binaries, installed through apt-get when missing),
#   - the control plane, with the local cluster registered as server "local",
#   - the tenant router (gRPC domain API, /metrics).
# When ready it writes .dev/env (source it to drive the system with tenantctl).
# Ctrl-C (or SIGTERM) stops everything.
#
# Ports: DEV_PG_PORT (default 54329), DEV_CONTROL_PORT (50051). State lives in DEV_DIR
# (default .dev); delete it to start from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/lib.sh
require_cargo

DEV="${DEV_DIR:-$ROOT/.dev}"
mkdir -p "$DEV"
DEV="$(cd "$DEV" && pwd)"
# The catalog remembers the cluster's port (server "local"): keep the one it was made with.
if [ -f "$DEV/pg-port" ]; then
  PG_PORT="$(cat "$DEV/pg-port")"
  if [ -n "${DEV_PG_PORT:-}" ] && [ "$DEV_PG_PORT" != "$PG_PORT" ]; then
    echo "$DEV was created for PostgreSQL port $PG_PORT; unset DEV_PG_PORT or delete $DEV" >&2
    exit 2
  fi
else
  PG_PORT="${DEV_PG_PORT:-54329}"
fi
CONTROL_PORT="${DEV_CONTROL_PORT:-50051}"
ROUTER_GRPC_PORT="${DEV_ROUTER_GRPC_PORT:-50052}"
ROUTER_HTTP_PORT="${DEV_ROUTER_HTTP_PORT:-8080}"
BINDIR="$(pg_bindir)"
mkdir -p "$DEV"
rm -f "$DEV/env"

# PostgreSQL refuses to run as root: run it as "nobody" then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; else "$@"; fi
}

echo "==> building"
cargo build --bins -q
CP="$ROOT/target/debug/control-plane"
ROUTER="$ROOT/target/debug/tenant-router"
CTL="$ROOT/target/debug/tenantctl"

# Secrets persist across runs: the catalog's encrypted credentials need the same key.
if [ ! -f "$DEV/secrets" ]; then
  umask 077
  {
    echo "PG_PASSWORD=$(random_secret)"
    echo "MASTER_KEY=$("$CP" --generate-key)"
    echo "WHATSAPP_APP_SECRET=$(random_secret)"
    echo "WHATSAPP_VERIFY_TOKEN=$(random_secret)"
  } > "$DEV/secrets"
  umask 022
fi
# shellcheck disable=SC1091
source "$DEV/secrets"
# The token signing key (Ed25519 seed); a .dev made before it existed gets one now.
if [ -z "${TOKEN_SIGNING_KEY:-}" ]; then
  umask 077
  echo "TOKEN_SIGNING_KEY=$("$CP" --generate-signing-key)" >> "$DEV/secrets"
  umask 022
  # shellcheck disable=SC1091
  source "$DEV/secrets"
fi

if [ ! -f "$DEV/pg/PG_VERSION" ]; then
  echo "==> creating the PostgreSQL cluster in .dev/pg"
  mkdir -p "$DEV/pg" "$DEV/run"
  printf '%s' "$PG_PASSWORD" > "$DEV/pgpass"
  [ "$(id -u)" = 0 ] && chown -R nobody:nogroup "$DEV/pg" "$DEV/run" "$DEV/pgpass"
  as_pg "$BINDIR/initdb" -D "$DEV/pg" -U postgres --auth=scram-sha-256 --pwfile="$DEV/pgpass" -E UTF8 --locale=C >/dev/null
  rm -f "$DEV/pgpass"
  echo "$PG_PORT" > "$DEV/pg-port"
fi
mkdir -p "$DEV/run"
[ "$(id -u)" = 0 ] && chown nobody:nogroup "$DEV/run"

PIDS=()
cleanup() {
  trap "" INT TERM
  trap - EXIT
  echo "==> stopping"
  rm -f "$DEV/env"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_pg "$BINDIR/pg_ctl" -D "$DEV/pg" stop -m fast >/dev/null 2>&1 || true
}
trap cleanup INT TERM EXIT

# A local CA, made once under .dev/tls: PostgreSQL, the control plane and the router
# present certificates it signed; every client verifies them against it.
TLS="$DEV/tls"
if [ ! -f "$TLS/ca.crt" ]; then
  echo "==> creating a local certificate authority in $TLS"
  require_tool openssl
  mkdir -p "$TLS"
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=tenancy dev CA" -keyout "$TLS/ca.key" -out "$TLS/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > "$TLS/ext.cnf"
  for name in postgres control-plane router; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$TLS/$name.key" -out "$TLS/$name.csr" 2>/dev/null
    openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial \
      -days 825 -extfile "$TLS/ext.cnf" -out "$TLS/$name.crt" 2>/dev/null
  done
  umask 022
  chmod 755 "$TLS"; chmod 644 "$TLS/ca.crt"
  [ "$(id -u)" = 0 ] && chown nobody:nogroup "$TLS/postgres.key" "$TLS/postgres.crt"
fi

echo "==> starting PostgreSQL on 127.0.0.1:$PG_PORT (TLS on)"
as_pg "$BINDIR/pg_ctl" -D "$DEV/pg" -l "$DEV/run/postgres.log" -w \
  -o "-p $PG_PORT -k $DEV/run -c listen_addresses=127.0.0.1 -c max_connections=300 -c ssl=on -c ssl_cert_file=$TLS/postgres.crt -c ssl_key_file=$TLS/postgres.key" start >/dev/null
PG_URL="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT"
export PGPASSWORD="$PG_PASSWORD"
if ! psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'tenancy_catalog'" | grep -q 1; then
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE tenancy_catalog" >/dev/null
fi
unset PGPASSWORD

cat > "$DEV/control-plane.toml" <<TOML
listen = "127.0.0.1:$CONTROL_PORT"
catalog_url = "$PG_URL/tenancy_catalog"
master_key = "$MASTER_KEY"
token_signing_key = "$TOKEN_SIGNING_KEY"

[tls]
cert_file = "$TLS/control-plane.crt"
key_file = "$TLS/control-plane.key"

[database_tls]
ca_file = "$TLS/ca.crt"

[backup.store]
location = "$DEV/backups"
TOML
chmod 600 "$DEV/control-plane.toml"
TOKEN_VERIFYING_KEY="$("$CP" --config "$DEV/control-plane.toml" --print-verifying-key)"

# The dev operator (role admin), made the way a fresh deployment makes its first admin.
OPERATOR_TOKEN="$("$CP" --config "$DEV/control-plane.toml" operator-token --name dev --role admin --ttl-secs 2592000)"

echo "==> starting the control plane on 127.0.0.1:$CONTROL_PORT"
RUST_LOG="${RUST_LOG:-info}" "$CP" --config "$DEV/control-plane.toml" &
PIDS+=($!)

export TENANTCTL_ENDPOINT="https://127.0.0.1:$CONTROL_PORT" TENANTCTL_TOKEN="$OPERATOR_TOKEN" TENANTCTL_CA_FILE="$TLS/ca.crt"
for _ in $(seq 1 100); do
  if "$CTL" server list >/dev/null 2>&1; then break; fi
  if ! kill -0 "${PIDS[0]}" 2>/dev/null; then echo "control plane exited" >&2; exit 1; fi
  sleep 0.1
done
if ! "$CTL" server list --json | grep -q '"name": "local"'; then
  TENANTCTL_ADMIN_PASSWORD="$PG_PASSWORD" "$CTL" server add local --host 127.0.0.1 --port "$PG_PORT" \
    --admin-user postgres --connection-budget 80 --capacity 1000 >/dev/null
fi

# The dev router's own directory credential (a registered router, every server).
if "$CTL" router list --json | grep -q '"name": "dev-router"'; then
  ROUTER_TOKEN="$("$CTL" router token dev-router)"
else
  ROUTER_TOKEN="$("$CTL" router add dev-router --all-servers)"
fi
umask 077
cat > "$DEV/tenant-router.toml" <<TOML
grpc_listen = "127.0.0.1:$ROUTER_GRPC_PORT"
http_listen = "127.0.0.1:$ROUTER_HTTP_PORT"
control_plane_endpoint = "https://127.0.0.1:$CONTROL_PORT"
directory_token = "$ROUTER_TOKEN"
token_verifying_key = "$TOKEN_VERIFYING_KEY"

[tls]
cert_file = "$TLS/router.crt"
key_file = "$TLS/router.key"

[control_plane_tls]
ca_file = "$TLS/ca.crt"

[database_tls]
ca_file = "$TLS/ca.crt"

[webhook]
app_secret = "$WHATSAPP_APP_SECRET"
verify_token = "$WHATSAPP_VERIFY_TOKEN"
TOML
umask 022

echo "==> starting the tenant router on 127.0.0.1:$ROUTER_GRPC_PORT (gRPC) and :$ROUTER_HTTP_PORT (HTTP)"
RUST_LOG="${RUST_LOG:-info}" "$ROUTER" --config "$DEV/tenant-router.toml" &
PIDS+=($!)
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$ROUTER_HTTP_PORT") 2>/dev/null; then break; fi
  if ! kill -0 "${PIDS[1]}" 2>/dev/null; then echo "tenant router exited" >&2; exit 1; fi
  sleep 0.1
done

umask 077
cat > "$DEV/env" <<ENV
export TENANTCTL_ENDPOINT=https://127.0.0.1:$CONTROL_PORT
export TENANTCTL_CA_FILE=$TLS/ca.crt
export TENANTCTL_TOKEN=$OPERATOR_TOKEN
export ROUTER_GRPC_ENDPOINT=https://127.0.0.1:$ROUTER_GRPC_PORT
export ROUTER_HTTP_ENDPOINT=http://127.0.0.1:$ROUTER_HTTP_PORT
export CATALOG_DATABASE_URL=$PG_URL/tenancy_catalog
export PG_ADMIN_URL=$PG_URL/postgres
export WHATSAPP_APP_SECRET=$WHATSAPP_APP_SECRET
export WHATSAPP_VERIFY_TOKEN=$WHATSAPP_VERIFY_TOKEN
export PATH=$ROOT/target/debug:\$PATH
ENV
umask 022

echo "==> ready. In another shell:  source $DEV/env && tenantctl create acme --name 'ACME Veículos' --sector veiculos"
echo "    caller token for the router:  tenantctl token issue --tenant acme"
echo "    (Ctrl-C here stops everything)"
wait -n "${PIDS[@]}"
