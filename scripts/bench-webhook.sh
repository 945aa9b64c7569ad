#!/usr/bin/env bash
# Webhook ingest benchmark: signed Meta deliveries over keep-alive HTTP/1.1 from concurrent
# senders into many tenants; prints messages/s and time-to-answer percentiles.
#
#   scripts/bench-webhook.sh [--tenants 100] [--senders 32] [--seconds 15] [--per-delivery 1] [--budget 80]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
PG_BINDIR="$(pg_bindir)"
export PG_BINDIR
cargo build --release -q --bin tenant-router --example bench_webhook
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $("$PG_BINDIR/postgres" --version)" >&2
target/release/examples/bench_webhook "$@"
