#!/usr/bin/env bash
# Runs every test of the workspace. The tests start their own throwaway PostgreSQL
# servers from the machine's server binaries (installed here when missing), for the
# backup tests s3s-fs as an S3-compatible object store (installed from crates.io), and
# Python tools from PyPI in .venv-tools (scripts/lib.sh require_py_tools).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
require_s3s_fs
PG_BINDIR="$(pg_bindir)"
export PG_BINDIR
# grpcio's reflection client (tests/reflection.rs), the Kubernetes manifest validator.
TOOLS_PYTHON="$(require_py_tools)"
export TOOLS_PYTHON
# The edge tests hold over a thousand connections open at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --workspace --all-targets "$@"
# What deploy/ ships: alerting rules, dashboards, Kubernetes manifests (offline).
scripts/check-deploy.sh
