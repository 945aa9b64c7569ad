#!/usr/bin/env bash
# Router benchmark: the same operations direct to PostgreSQL, through PgBouncer (transaction
# mode, installed from the OS packages when missing) and through the router, at 1, 8 and 32
# callers. Brings everything up itself, tears it down, writes target/bench/results.json and
# the router section of docs/BENCHMARKS.md.
#
#   scripts/bench.sh [--quick] [--seconds N] [--callers 1,8,32]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
PG_BINDIR="$(pg_bindir)"
export PG_BINDIR
if ! [ -x /usr/sbin/pgbouncer ] && ! command -v pgbouncer >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
fi
cargo build --release -q -p tenant-router -p loadgen
machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $("$PG_BINDIR/postgres" --version), $(/usr/sbin/pgbouncer --version 2>/dev/null | head -1)"
echo "machine: $machine" >&2
out="$(mktemp)"
target/release/loadgen "$@" | tee "$out"
section="$(mktemp)"
{
  echo "<!-- router:begin (written by scripts/bench.sh) -->"
  echo "## Router against direct PostgreSQL and PgBouncer (\`scripts/bench.sh $*\`)"
  echo
  echo "Machine: $machine; load generator, router, PgBouncer and PostgreSQL (fsync=off) on it."
  echo
  cat "$out"
  echo "<!-- router:end -->"
} > "$section"
python3 - "$section" <<'PY'
import re, sys
section = open(sys.argv[1]).read()
path = "docs/BENCHMARKS.md"
doc = open(path).read()
pattern = re.compile(r"<!-- router:begin.*?<!-- router:end -->\n?", re.S)
doc = pattern.sub(section, doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + section
open(path, "w").write(doc)
PY
rm -f "$out" "$section"
