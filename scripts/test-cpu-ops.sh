#!/usr/bin/env bash
# Builds and runs the CPU backend op tests (test/native/cpu_ops_test.cc) twice:
#   1. portable: exactly the flags a plain build without -march uses (g++ -O2), so the generic
#      microkernels and scalar paths are checked too;
#   2. native:   -O3 -march=native (what CMake builds), checked again and benchmarked.
# Usage: scripts/test-cpu-ops.sh [--no-bench] [--portable-only|--native-only]
# Env: CXX (default g++), IDFORGE_THREADS (thread pool size).
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
OUT=${TMPDIR:-/tmp}/idforge-cpu-ops-$$
mkdir -p "$OUT"
trap 'rm -rf "$OUT"' EXIT

bench=""
which=both
for a in "$@"; do
  case "$a" in
    --no-bench) bench="--no-bench" ;;
    --portable-only) which=portable ;;
    --native-only) which=native ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done

status=0
if [ "$which" != native ]; then
  echo "== portable build: $CXX -O2 -std=c++17 =="
  $CXX -O2 -std=c++17 -Inative native/common.cc native/cancel.cc native/cpu/*.cc test/native/cpu_ops_test.cc -lpthread -o "$OUT/portable"
  # The portable kernels are slow: correctness only.
  "$OUT/portable" --no-bench || status=1
fi
if [ "$which" != portable ]; then
  echo "== native build: $CXX -O3 -march=native -std=c++17 =="
  $CXX -O3 -march=native -std=c++17 -Inative native/common.cc native/cancel.cc native/cpu/*.cc test/native/cpu_ops_test.cc -lpthread -o "$OUT/native"
  "$OUT/native" $bench || status=1
fi
exit $status
