#!/usr/bin/env bash
# Control-plane benchmark: provisioning p50/p95 with and without the template, a no-op
# fleet run and a run applying one additive migration. Starts its own PostgreSQL server
# and control plane (release builds), prints a Markdown table, tears everything down.
#
#   scripts/bench-control-plane.sh [--provision 100] [--fleet 1000] [--concurrency 8]
#   scripts/bench-control-plane.sh --backups [--large-mb 1000] [--fleet 200]
#     (backup and restore MB/s for a ~10 MB and a large tenant; a fleet backup)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
PG_BINDIR="$(pg_bindir)"
export PG_BINDIR
cargo build --release -q --bin control-plane --example bench_control_plane
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $("$PG_BINDIR/postgres" --version)" >&2
target/release/examples/bench_control_plane "$@"
