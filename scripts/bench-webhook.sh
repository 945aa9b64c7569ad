#!/usr/bin/env bash
# Message pipeline benchmark: signed Meta deliveries over keep-alive HTTP/1.1 from
# concurrent senders into many tenants (both PostgreSQL servers with fsync on); prints
# acknowledged messages/s, time to the answer and to the event stream, the same with one
# tenant's database stopped, and a baseline of one commit per delivery (docs/BENCHMARKS.md).
#
#   scripts/bench-webhook.sh [--tenants 100] [--senders 32] [--seconds 15] [--per-delivery 1]
#                            [--budget 80] [--outage 30] [--rate 0 (msg/s; 0: unthrottled)]
#                            [--workers N] [--tenant-fsync 1]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
PG_BINDIR="$(pg_bindir)"
export PG_BINDIR
cargo build --release -q --bin tenant-router --example bench_webhook
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $("$PG_BINDIR/postgres" --version)" >&2
target/release/examples/bench_webhook "$@"
