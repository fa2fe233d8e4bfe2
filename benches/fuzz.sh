#!/usr/bin/env bash
# The fuzz targets for an hour in all (FUZZ_TOTAL_SECONDS, default 3600, shared among the
# targets), keeping the grown corpus in ~/.cache/warren-fuzz-corpus between runs. Prints
# executions/s and coverage per target; a crash stops it with the input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
total="${FUZZ_TOTAL_SECONDS:-3600}"
n=$(RUSTC_BOOTSTRAP=1 cargo fuzz list --fuzz-dir fuzz 2>/dev/null | wc -l || echo 5)
[ "$n" -gt 0 ] || n=5
FUZZ_SECONDS=$((total / n)) exec .ci/fuzz
