#!/usr/bin/env bash
# The whole GPU run in one command (`npm run test:gpu`), for a machine with an NVIDIA GPU, the CUDA
# toolkit and CMake; Node and npm optional (scripts/gpu-pack.sh carries what is needed):
#   1. node from .gpu/node.xz when none is installed; node_modules from .gpu/modules.tar.xz when
#      tap is not installed (the test runner, the addon's build headers);
#   2. the addon with CUDA (sm_90 unless IDFORGE_CUDA_ARCHS says otherwise) straight through CMake;
#   3. the tests: tap on every test file that runs something on CUDA (those using
#      test/helpers/backends.ts or backends().cuda): the same test bodies CI runs on the CPU, here
#      also on CUDA in float32 and float16, plus the op table's CUDA modes and the native checks.
#      Not the whole `npm test`: the rest runs on the CPU only (and needs Redis, sharp, the face
#      models, which a carried pack cannot hold); where npm is installed, `npm test` runs it all.
#      `scripts/gpu-all.sh test/a.test.ts …` runs the files named instead;
#   4. the benchmarks, scripts/gpu-bench.sh (SKIP_BENCH=1 skips them).
# Results land in $OUT (default ./gpu-out): tests.txt, build.log and the benchmarks' files.
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
if [ ! -x node_modules/.bin/tap ] && [ -f .gpu/modules.tar.xz ]; then tar -xJf .gpu/modules.tar.xz; fi
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
  files=("$@")
  [ ${#files[@]} -gt 0 ] || mapfile -t files < <(grep -l -e 'helpers/backends\.js' -e 'backends()\.cuda' test/*.test.ts)
  echo "== tap ${files[*]}"
  node_modules/.bin/tap --disable-coverage -j 4 "${files[@]}" 2>&1 | tee "$OUT/tests.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
else
  echo "== FAIL: tap is not installed (npm ci, or carry .gpu/modules.tar.xz from scripts/gpu-pack.sh): no test ran" | tee "$OUT/tests.txt"
  rc=1
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  [ -f dist/bench/cli.js ] || node node_modules/typescript/bin/tsc -p tsconfig.json
  bash scripts/gpu-bench.sh || rc=1
fi
exit $rc
