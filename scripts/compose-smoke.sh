#!/usr/bin/env bash
# The compose deployment end to end (deploy/compose.yaml): builds the images from host
# binaries, generates secrets (a CA and certificates, passwords, keys) under .compose/,
# brings up the catalog, two tenant servers and two control-plane replicas, registers the
# two tenant servers and two routers (each its own identity), starts the routers, then:
# creates tenants on both servers, routes calls to each through both routers, lands a
# signed webhook, checks both control planes serve, and tears everything down (volumes
# too). Fails if Docker cannot run. Test traffic stays on published loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/lib.sh
scripts/docker-build.sh
BIN="target/${DOCKER_PROFILE:-release}"
PY="$(require_py_tools)"
require_tool openssl
DOCKER=/usr/bin/docker
export COMPOSE_PROJECT_NAME=tenancy-smoke
STATE="$ROOT/.compose"
export SECRETS_DIR="$STATE/secrets"
compose() { docker-compose -f deploy/compose.yaml "$@"; }
fail() { echo "compose-smoke: $*" >&2; compose logs --no-color --tail 40 >&2 || true; exit 1; }
teardown() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
teardown
trap teardown EXIT

echo "==> secrets in $SECRETS_DIR"
rm -rf "$STATE" && mkdir -p "$SECRETS_DIR" && chmod 700 "$STATE"
S="$SECRETS_DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=tenancy compose CA" -keyout "$S/ca.key" -out "$S/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
cert() { # name, SAN list
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' "$2" > "$S/$1.ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$S/$1.key" -out "$S/$1.csr" 2>/dev/null
  openssl x509 -req -in "$S/$1.csr" -CA "$S/ca.crt" -CAkey "$S/ca.key" -CAcreateserial \
    -days 30 -extfile "$S/$1.ext" -out "$S/$1.crt" 2>/dev/null
  rm -f "$S/$1.csr" "$S/$1.ext"
}
for db in catalog-db tenant-db-1 tenant-db-2; do cert "$db" "DNS:$db,DNS:localhost,IP:127.0.0.1"; done
cert control-plane "DNS:control-plane,DNS:control-plane-1,DNS:control-plane-2,DNS:localhost,IP:127.0.0.1"
cert router "DNS:router-1,DNS:router-2,DNS:localhost,IP:127.0.0.1"
rm -f "$S/ca.key"
random_secret > "$S/catalog_pg_password"
random_secret > "$S/tenant_pg_password"
echo "postgres://postgres:$(cat "$S/catalog_pg_password")@catalog-db:5432/tenancy_catalog" > "$S/catalog_url"
"$BIN/control-plane" --generate-key > "$S/master_key"
"$BIN/control-plane" --generate-signing-key > "$S/token_signing_key"
random_secret > "$S/whatsapp_app_secret"
random_secret > "$S/whatsapp_verify_token"
# Filled in once the routers are registered (compose wants every secret file to exist).
for f in token_verifying_key router_1_token router_2_token; do : > "$S/$f"; done
# The containers' user (uid 10001) reads them; the directory keeps other host users out.
chmod 644 "$S"/*

wait_healthy() {
  for svc in "$@"; do
    local id; id=$(compose ps -q "$svc")
    for _ in $(seq 1 150); do
      [ "$($DOCKER inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null)" = healthy ] && continue 2
      sleep 0.4
    done
    fail "$svc did not become healthy"
  done
}

echo "==> catalog, tenant servers, two control planes"
compose up -d catalog-db tenant-db-1 tenant-db-2 control-plane-1 control-plane-2 >/dev/null 2>&1 \
  || fail "compose up failed"
wait_healthy catalog-db tenant-db-1 tenant-db-2 control-plane-1 control-plane-2
compose exec -T control-plane-1 control-plane --print-verifying-key | tr -d '\r' > "$S/token_verifying_key"
OPERATOR="$(compose exec -T control-plane-1 control-plane operator-token --name smoke --role admin --ttl-secs 3600 | tr -d '\r')"
[ -n "$OPERATOR" ] || fail "no operator token"
export TENANTCTL_TOKEN="$OPERATOR" TENANTCTL_CA_FILE="$S/ca.crt"
export TENANTCTL_ENDPOINT="https://127.0.0.1:${CONTROL_PLANE_1_PORT:-25051}"
CTL="$BIN/tenantctl"
TENANTCTL_ADMIN_PASSWORD="$(cat "$S/tenant_pg_password")" $CTL server add tenant-1 --host tenant-db-1 \
  --port 5432 --admin-user postgres --connection-budget 40 --capacity 100 >/dev/null || fail "server add tenant-1"
TENANTCTL_ADMIN_PASSWORD="$(cat "$S/tenant_pg_password")" $CTL server add tenant-2 --host tenant-db-2 \
  --port 5432 --admin-user postgres --connection-budget 40 --capacity 100 >/dev/null || fail "server add tenant-2"
$CTL router add router-1 --all-servers > "$S/router_1_token" || fail "router add router-1"
$CTL router add router-2 --all-servers > "$S/router_2_token" || fail "router add router-2"

echo "==> two routers"
compose up -d router-1 router-2 >/dev/null 2>&1 || fail "compose up routers failed"
wait_healthy router-1 router-2

echo "==> tenants on both servers, calls through both routers"
pnid="$(date +%s%N | cut -c1-15)"
$CTL create cs-alfa --name "Alfa" --sector varejo --server tenant-1 --phone-number-id "$pnid" >/dev/null || fail "create cs-alfa"
$CTL create cs-beta --name "Beta" --sector varejo --server tenant-2 >/dev/null || fail "create cs-beta"
for t in cs-alfa:tenant-1 cs-beta:tenant-2; do
  $CTL show "${t%%:*}" --json | grep -q "\"server\": \"${t##*:}\"" || fail "${t%%:*} is not on ${t##*:}"
done
TOKEN="$($CTL token issue --tenant cs-alfa --tenant cs-beta --ttl 10m)"
call() { # router grpc port, tenant, phone
  "$PY" scripts/py/grpc_call.py "127.0.0.1:$1" "$S/ca.crt" /tenancy.domain.v1.Leads/UpsertLead \
    "{\"phone\": \"$3\", \"name\": \"Cliente\"}" "authorization=Bearer $TOKEN" "x-tenant=$2"
}
n=0
for port in "${ROUTER_1_GRPC_PORT:-25061}" "${ROUTER_2_GRPC_PORT:-25062}"; do
  for tenant in cs-alfa cs-beta; do
    n=$((n + 1))
    out="$(call "$port" "$tenant" "55119000000$n")" || fail "UpsertLead on $tenant through port $port"
    echo "$out" | grep -q '"id"' || fail "UpsertLead answered $out"
  done
done
# A caller without a grant is refused.
OTHER="$($CTL token issue --tenant cs-beta --ttl 10m)"
if "$PY" scripts/py/grpc_call.py "127.0.0.1:${ROUTER_1_GRPC_PORT:-25061}" "$S/ca.crt" /tenancy.domain.v1.Leads/UpsertLead \
  '{"phone": "5511900000099", "name": "X"}' "authorization=Bearer $OTHER" "x-tenant=cs-alfa" 2>/dev/null; then
  fail "a token for cs-beta reached cs-alfa"
fi

echo "==> a signed webhook lands"
payload='{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"'"$pnid"'"},"contacts":[{"wa_id":"551187654321","profile":{"name":"Ana"}}],"messages":[{"from":"551187654321","id":"wamid.COMPOSE1","timestamp":"1763800000","type":"text","text":{"body":"oi"}}]}}]}]}'
sig="sha256=$(printf '%s' "$payload" | openssl dgst -sha256 -hmac "$(cat "$S/whatsapp_app_secret")" | sed 's/^.*= //')"
code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:${ROUTER_2_HTTP_PORT:-25082}/webhooks/whatsapp" \
  -H 'Content-Type: application/json' -H "X-Hub-Signature-256: $sig" --data-binary "$payload")"
[ "$code" = 200 ] || fail "webhook answered $code"
db="$($CTL show cs-alfa --json | sed -n 's/.*"database": "\(.*\)".*/\1/p')"
landed=no
for _ in $(seq 1 100); do
  got="$(compose exec -T -e PGPASSWORD="$(cat "$S/tenant_pg_password")" tenant-db-1 \
    psql -h 127.0.0.1 -U postgres -d "$db" -tAc "SELECT count(*) FROM mensagens WHERE wamid = 'wamid.COMPOSE1'" | tr -d '\r')"
  [ "$got" = 1 ] && { landed=yes; break; }
  sleep 0.2
done
[ "$landed" = yes ] || fail "the webhook message did not reach the tenant database"

echo "==> both control planes serve"
TENANTCTL_ENDPOINT="https://127.0.0.1:${CONTROL_PLANE_2_PORT:-25052}" $CTL list --json | grep -q '"cs-beta"' \
  || fail "control-plane-2 does not list the tenants"
curl -s "http://127.0.0.1:${CONTROL_PLANE_2_METRICS_PORT:-25092}/metrics" | grep -q '^control_plane_tenants{status="active"} 2' \
  || fail "control-plane-2 metrics do not show two active tenants"
# Every session of the daemons to the tenant servers is TLS.
for svc in tenant-db-1 tenant-db-2; do
  plain="$(compose exec -T -e PGPASSWORD="$(cat "$S/tenant_pg_password")" "$svc" psql -h 127.0.0.1 -U postgres -d postgres -tAc \
    "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.backend_type = 'client backend' AND NOT s.ssl AND a.pid <> pg_backend_pid()" | tr -d '\r')"
  [ "$plain" = 0 ] || fail "$plain plaintext sessions on $svc"
done
echo "compose-smoke: 1 passed, 0 failed"
