#!/usr/bin/env bash
# The whole GPU check in one command, for a GPU machine with the CUDA toolkit, CMake and Python but
# possibly no Node or npm: unpacks a carried node binary (.gpu/node.xz) when node is missing, builds
# the addon with CUDA (sm_90 unless IDFORGE_CUDA_ARCHS says otherwise) straight through CMake
# (node-addon-api and node-api-headers come from the carried node_modules), then runs
#   0. with tap installed (npm's dev dependencies): the CUDA tests of `npm test` themselves
#      (test/ops-cuda.test.ts: the op table on CUDA; cuda-streams.test.ts; cuda-native.test.ts and
#      gpu-goldens.test.ts: 1-3 below without benchmarks). Without tap, the op table's CUDA mode cannot run: say so.
#   1. scripts/gpu-check.sh          native checks (forced kernel paths, stream stress) + kernel benchmarks + torch SDPA
#   2. scripts/gpu-engine-check.mjs  the tiny model on CUDA fp32/fp16 vs the goldens + SD 1.5 UNet bench
# Results land in $OUT (default ./gpu-out); copy them into bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export OUT
if ! command -v node >/dev/null; then
  mkdir -p /tmp/idforge-node
  xz -dc .gpu/node.xz > /tmp/idforge-node/node && chmod +x /tmp/idforge-node/node
  export PATH=/tmp/idforge-node:$PATH
fi
# Carried node_modules subset (scripts/gpu-pack.sh makes it) when there is no npm here.
if [ ! -d node_modules/node-addon-api ] && [ -f .gpu/modules.tar ]; then tar -xf .gpu/modules.tar; fi
CUBLAS=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libcublas.so.*' -print 2>/dev/null | head -1)
[ -n "$CUBLAS" ] && export LD_LIBRARY_PATH="$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}"
echo "== node $(node --version), cuBLAS ${CUBLAS:-not found}"

echo "== build the addon (CMake, CUDA)"
t0=$(date +%s)
cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release -DIDFORGE_CUDA_ARCHS="${IDFORGE_CUDA_ARCHS:-90}" \
  -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" > "$OUT/build.log" 2>&1 &&
  cmake --build build/gpu -j "$(nproc)" >> "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 2; }
echo "built in $(( $(date +%s) - t0 )) s"

rc=0
if [ -x node_modules/.bin/tap ]; then
  node_modules/.bin/tap --disable-coverage test/ops-cuda.test.ts test/cuda-streams.test.ts test/cuda-native.test.ts test/gpu-goldens.test.ts 2>&1 | tee "$OUT/tests.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
else
  echo "== tap not installed: the op table's CUDA mode (test/ops-cuda.test.ts) is NOT run" | tee "$OUT/tests.txt"
fi
if [ "${SKIP_OPS:-0}" != 1 ]; then
  bash scripts/gpu-check.sh "$@" || rc=1
fi
if [ "${SKIP_ENGINE:-0}" != 1 ]; then
  node scripts/gpu-engine-check.mjs "${ENGINE_ARGS:-}" 2>&1 | tee "$OUT/engine-log.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
if [ "${SKIP_LEARN:-0}" != 1 ]; then
  node scripts/gpu-learn-check.mjs "${LEARN_ARGS:-}" 2>&1 | tee "$OUT/learn-log.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
exit $rc
