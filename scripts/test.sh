#!/usr/bin/env bash
# Runs every test of the workspace. The tests start their own throwaway PostgreSQL
# servers from the machine's server binaries (installed here when missing) and, for the
# backup tests, s3s-fs as an S3-compatible object store (installed from crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
require_s3s_fs
PG_BINDIR="$(pg_bindir)"
export PG_BINDIR
# The edge tests hold over a thousand connections open at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --workspace --all-targets "$@"
