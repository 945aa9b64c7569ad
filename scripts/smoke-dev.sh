#!/usr/bin/env bash
# Smoke test of the README's start command: runs scripts/dev.sh on spare ports (below the
# kernel's ephemeral range, so no outgoing connection can hold them), waits for
# $DEV_DIR/env, creates a tenant with tenantctl, checks it, and stops everything (SIGTERM, as Ctrl-C would).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export DEV_PG_PORT="${DEV_PG_PORT:-25439}" DEV_CONTROL_PORT="${DEV_CONTROL_PORT:-25061}"
export DEV_ROUTER_GRPC_PORT="${DEV_ROUTER_GRPC_PORT:-25062}" DEV_ROUTER_HTTP_PORT="${DEV_ROUTER_HTTP_PORT:-25080}"
export DEV_DIR="$PWD/.dev-smoke"
rm -rf "$DEV_DIR"
log="$(mktemp)"
scripts/dev.sh >"$log" 2>&1 &
dev=$!
# SIGTERM, not SIGINT: a background job of a script starts with SIGINT ignored.
stop() { kill -TERM "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 600); do
  [ -f $DEV_DIR/env ] && break
  if ! kill -0 "$dev" 2>/dev/null; then cat "$log"; echo "smoke: dev.sh exited early" >&2; exit 1; fi
  sleep 0.5
done
[ -f $DEV_DIR/env ] || { cat "$log"; echo "smoke: $DEV_DIR/env never appeared" >&2; exit 1; }
# shellcheck disable=SC1091
source $DEV_DIR/env
for var in TENANTCTL_ENDPOINT ROUTER_GRPC_ENDPOINT ROUTER_HTTP_ENDPOINT CATALOG_DATABASE_URL PG_ADMIN_URL; do
  [ -n "${!var:-}" ] || { echo "smoke: $DEV_DIR/env lacks $var" >&2; exit 1; }
done
slug="smoke-$(date +%s)"
tenantctl create "$slug" --name "Smoke" --sector varejo >/dev/null
tenantctl show "$slug" --json | grep -q '"status": "active"'
db="$(tenantctl show "$slug" --json | sed -n 's/.*"database": "\(.*\)".*/\1/p')"
[ -n "$db" ] && [[ "$db" != *smoke* ]] || { echo "smoke: database name $db" >&2; exit 1; }
psql "$PG_ADMIN_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1
# The dev cluster's maintenance databases and catalog are closed to PUBLIC.
for d in postgres template1 "$(psql "$CATALOG_DATABASE_URL" -tAc 'SELECT current_database()')"; do
  psql "$PG_ADMIN_URL" -tAc "SELECT has_database_privilege('public', '$d', 'CONNECT')" | grep -qx f \
    || { echo "smoke: PUBLIC may connect to $d" >&2; exit 1; }
done
token="$(tenantctl token issue --tenant "$slug" --ttl 5m)"
[ -n "$token" ] || { echo "smoke: no token" >&2; exit 1; }
# The router answers on HTTP and serves metrics.
exec 3<>"/dev/tcp/127.0.0.1/$DEV_ROUTER_HTTP_PORT"
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
grep -q "tenant_router_" <&3 || { echo "smoke: router /metrics did not answer" >&2; exit 1; }
exec 3>&-
# A real signed WhatsApp delivery, sent with curl, lands in the tenant's mensagens.
require_tool curl
require_tool openssl
pnid="$(date +%s%N | cut -c1-15)"
wh_slug="smoke-wh-$(date +%s)"
tenantctl create "$wh_slug" --name "Smoke WA" --sector varejo --phone-number-id "$pnid" >/dev/null
payload='{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"'"$pnid"'"},"contacts":[{"wa_id":"551187654321","profile":{"name":"Ana"}}],"messages":[{"from":"551187654321","id":"wamid.SMOKE1","timestamp":"1763800000","type":"text","text":{"body":"ol\u00e1"}}]}}]}]}'
sig="sha256=$(printf '%s' "$payload" | openssl dgst -sha256 -hmac "$WHATSAPP_APP_SECRET" | sed 's/^.*= //')"
code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$ROUTER_HTTP_ENDPOINT/webhooks/whatsapp" \
  -H 'Content-Type: application/json' -H "X-Hub-Signature-256: $sig" --data-binary "$payload")"
[ "$code" = 200 ] || { echo "smoke: webhook answered $code" >&2; exit 1; }
wh_db="$(tenantctl show "$wh_slug" --json | sed -n 's/.*"database": "\(.*\)".*/\1/p')"
# 200 means durable in the inbox; the workers apply it to the tenant's database right after.
landed=no
for _ in $(seq 1 100); do
  if psql "${PG_ADMIN_URL%/postgres}/$wh_db" -tAc "SELECT count(*) FROM mensagens WHERE wamid = 'wamid.SMOKE1'" | grep -qx 1; then
    landed=yes; break
  fi
  sleep 0.1
done
[ "$landed" = yes ] || { echo "smoke: the webhook message did not land" >&2; exit 1; }
# Every session of the platform's daemons to PostgreSQL is TLS.
plain="$(psql "$PG_ADMIN_URL" -tAc "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name IN ('tenant-router', 'tenant-router-inbox', 'control-plane') AND NOT s.ssl")"
[ "$plain" = 0 ] || { echo "smoke: $plain plaintext sessions to PostgreSQL" >&2; exit 1; }
challenge="$(curl -s "$ROUTER_HTTP_ENDPOINT/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=4242&hub.verify_token=$WHATSAPP_VERIFY_TOKEN")"
[ "$challenge" = 4242 ] || { echo "smoke: handshake answered $challenge" >&2; exit 1; }
stop
trap - EXIT
if pgrep -f "postgres -D $DEV_DIR/pg" >/dev/null; then echo "smoke: postgres still running after stop" >&2; exit 1; fi
rm -rf "$DEV_DIR"
echo "smoke: 1 passed, 0 failed"
