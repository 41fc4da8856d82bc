#!/usr/bin/env bash
# Builds test/native/cuda_ops_test.cu (the CPU backend as the reference, every kernel) and runs it:
# the native-only CUDA checks (kernel paths only a native call can force, bad ids raised at
# synchronisation, the stream stress); `--bench` adds its kernel benchmarks. Every op's own cases
# are the op table's (test/ops-cuda.test.ts). test/cuda-native.test.ts runs it; so does
# scripts/gpu-bench.sh with --bench. Arguments go to the binary:
#   scripts/cuda-ops-test.sh [--json out.json] [--bench] [--only substring]   (ARCH=90 by default)
set -uo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-${IDFORGE_CUDA_ARCHS:-90}}
ARCH=${ARCH##*;}
BUILD=${BUILD:-/tmp/idforge-cuda-ops-test}
mkdir -p "$BUILD"
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || NVCC=/usr/local/cuda/bin/nvcc
CXXFLAGS="-std=c++17 -O3 -fno-math-errno -march=native -fPIC -Inative -Ikernels -DIDFORGE_WITH_CUDA=1"
CUFLAGS="-std=c++17 -O3 --use_fast_math -lineinfo -arch=sm_$ARCH -Inative -Ikernels -DIDFORGE_WITH_CUDA=1"

echo "== build test/native/cuda_ops_test.cu (sm_$ARCH, $(nproc) jobs)"
t0=$(date +%s)
pids=()
objs=()
for f in native/common.cc native/cancel.cc native/cpu/*.cc kernels/*.cc; do
  o="$BUILD/$(echo "$f" | tr / _).o"
  objs+=("$o")
  g++ $CXXFLAGS -c "$f" -o "$o" &
  pids+=($!)
done
for f in kernels/*.cu test/native/cuda_ops_test.cu; do
  o="$BUILD/$(echo "$f" | tr / _).o"
  objs+=("$o")
  "$NVCC" $CUFLAGS -c "$f" -o "$o" &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ $fail = 0 ] || { echo "build failed"; exit 2; }
"$NVCC" -arch=sm_$ARCH "${objs[@]}" -o "$BUILD/cuda_ops_test" -ldl -lpthread || { echo "link failed"; exit 2; }
echo "built in $(( $(date +%s) - t0 )) s"
exec "$BUILD/cuda_ops_test" "$@"
