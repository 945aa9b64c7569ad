#!/usr/bin/env bash
# The cargo-fuzz targets in fuzz/ (libFuzzer): the Meta and Evolution payload parsers,
# caller tokens, phone canonicalisation, page tokens and tenant keys.
#
#   scripts/fuzz.sh build                 build every target (CI does this)
#   scripts/fuzz.sh run RUNS [TARGET...]  run each target RUNS executions from its seeds
#                                         (fuzz/seeds/<target>) and print a table
#
# The machine's toolchain is stable: targets build with `--sanitizer none` (libFuzzer's
# coverage instrumentation needs no sanitizer, and no nightly flag). Assertions inside the
# targets are the oracle; a failure leaves its input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_cargo
require_tool g++ g++
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz not found; installing it from crates.io" >&2
  cargo install cargo-fuzz --locked --version 0.13.2 >&2
fi
TARGETS=(meta_payload evolution_payload caller_token phone page_token tenant_key)
FLAGS=(--sanitizer none --release)

case "${1:-build}" in
  build)
    cargo fuzz build "${FLAGS[@]}"
    ;;
  run)
    runs="${2:?how many executions per target}"
    shift 2
    [ "$#" -gt 0 ] && TARGETS=("$@")
    cargo fuzz build "${FLAGS[@]}"
    printf '%-18s %14s %10s %8s %s\n' TARGET EXECUTIONS SECONDS CRASHES CORPUS
    status=0
    for t in "${TARGETS[@]}"; do
      mkdir -p "fuzz/corpus/$t"
      log="fuzz/artifacts/$t.log"
      mkdir -p fuzz/artifacts
      started=$(date +%s)
      if cargo fuzz run "${FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
          -runs="$runs" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        crashes=0
      else
        crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | grep -c -E '^(crash|leak|timeout|oom)-' || true)
        [ "$crashes" -gt 0 ] || crashes=1
        status=1
      fi
      done_runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
      printf '%-18s %14s %10s %8s %s\n' "$t" "${done_runs:-?}" "$(( $(date +%s) - started ))" \
        "$crashes" "$(ls "fuzz/corpus/$t" | wc -l)"
    done
    exit "$status"
    ;;
  *)
    echo "usage: scripts/fuzz.sh build | run RUNS [TARGET...]" >&2
    exit 2
    ;;
esac
