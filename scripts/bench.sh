#!/usr/bin/env bash
# Router benchmark: the same operations direct to PostgreSQL, through PgBouncer (transaction
# mode, installed from the OS packages when missing) and through the router, in four
# scenarios: one hot tenant at 1/8/32 callers, 2,000 tenants over two servers with Zipf
# traffic, cold start, router memory with 10,000 routes and 1,000 warm pools; then the hot
# tenant again with PostgreSQL on half the CPUs and everything else on the other half. Brings
# everything up itself (two PostgreSQL servers, control plane, routers, PgBouncer), tears it
# down, writes target/bench/results.json and the router section of docs/BENCHMARKS.md.
#
#   scripts/bench.sh [--quick] [--seconds N] [--many-seconds N] [--callers 1,8,32] [--tenants N] [--cold N]
#                    [--routes N] [--warm-pools N] [--only hot,many,cold,memory] [--pin-postgres]
#   scripts/bench.sh --only backup [--backup-tenants 1000] [--backup-traffic 100]
#     (router traffic while the whole fleet is backed up, against plain pg_dump; asked for
#     by name only)
#
# --quick runs every scenario small and short (200 tenants, 2 s cells): a smoke check in
# under three minutes once built. Its figures are not for docs/BENCHMARKS.md.
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
cargo build --release -q -p tenant-router -p loadgen -p control-plane --bins
cpu="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
machine="$(nproc) cores ($cpu), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $("$PG_BINDIR/postgres" --version), $(/usr/sbin/pgbouncer --version 2>/dev/null | head -1)"
echo "machine: $machine" >&2
out="$(mktemp)"
started=$(date +%s)
target/release/loadgen --machine "$machine" "$@" | tee "$out"
# A full run measures the hot tenant once more with PostgreSQL on CPUs of its own (as
# deployed, where the router and its callers run on other hosts than the database).
case " $* " in
  *" --quick "*|*" --only "*|*" --pin-postgres "*) ;;
  *)
    if [ "$(nproc)" -ge 2 ]; then
      target/release/loadgen --machine "$machine" "$@" --only hot --pin-postgres \
        --out target/bench/results-pinned.json | tee -a "$out"
    fi ;;
esac
echo "bench: $(( $(date +%s) - started )) s" >&2
case " $* " in
  *" --quick "*|*" --only "*)
    echo "bench: a partial run; docs/BENCHMARKS.md left as it is (results in target/bench/results.json)" >&2
    rm -f "$out"; exit 0 ;;
esac
section="$(mktemp)"
{
  echo "<!-- router:begin (written by scripts/bench.sh) -->"
  echo "## Router against direct PostgreSQL and PgBouncer (\`scripts/bench.sh${*:+ $*}\`)"
  echo
  echo "Command: \`scripts/bench.sh${*:+ $*}\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(( $(date +%s) - started )) s)."
  echo "Machine: $machine; load generator, control plane, routers, PgBouncer and both PostgreSQL"
  echo "servers (fsync=off) all on it."
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
