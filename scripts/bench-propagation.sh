#!/usr/bin/env bash
# Propagation benchmark: how long a suspend or a resume takes to reach the gRPC and the
# webhook path of every router (p50/p99; the goal is under one second).
#
#   scripts/bench-propagation.sh [--routers 2] [--rounds 40]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
PG_BINDIR="$(pg_bindir)"
export PG_BINDIR
cargo build --release -q --bin tenant-router --example bench_propagation
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $("$PG_BINDIR/postgres" --version)" >&2
target/release/examples/bench_propagation "$@"
