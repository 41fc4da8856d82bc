#!/usr/bin/env bash
# Builds test/native/cuda_ops_test.cu with the CPU backend (the reference) and every kernel, runs
# its native checks (kernel paths only a native call can force, bad ids, the stream stress; every
# op's own cases are the op table's, test/ops-cuda.test.ts) and the benchmarks, and benchmarks
# torch's scaled_dot_product_attention on the same shapes. Results go to $OUT (default
# ./gpu-check-out): cuda_ops.json/.txt, torch_sdpa.json. test/cuda-native.test.ts runs it with --no-bench.
#   scripts/gpu-check.sh [--no-bench] [--arch 90]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
ARCH=90
BENCH=--bench
while [ $# -gt 0 ]; do
  case "$1" in
    --no-bench) BENCH= ;;
    --arch) ARCH=$2; shift ;;
  esac
  shift
done
mkdir -p "$OUT"
BUILD=${BUILD:-/tmp/idforge-gpu-check}
mkdir -p "$BUILD"
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || NVCC=/usr/local/cuda/bin/nvcc
CXXFLAGS="-std=c++17 -O3 -fno-math-errno -march=native -fPIC -Inative -Ikernels -DIDFORGE_WITH_CUDA=1"
CUFLAGS="-std=c++17 -O3 --use_fast_math -lineinfo -arch=sm_$ARCH -Inative -Ikernels -DIDFORGE_WITH_CUDA=1"

echo "== build (sm_$ARCH, $(nproc) jobs)"
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

echo "== cuBLAS copies on this machine"
find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libcublas.so*' -print 2>/dev/null | head -5

echo "== op checks ${BENCH:+and benchmarks}"
"$BUILD/cuda_ops_test" --json "$OUT/cuda_ops.json" $BENCH 2>&1 | tee "$OUT/cuda_ops.txt"
rc=${PIPESTATUS[0]}

if [ -n "$BENCH" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  echo "== torch scaled_dot_product_attention"
  PYTHONUNBUFFERED=1 python3 - "$OUT/torch_sdpa.json" <<'PY' 2>&1 | tee "$OUT/torch_sdpa.txt"
import json, sys, torch
import torch.nn.functional as F
B, H = 2, 8
rows = []
shapes = [(n, n, d) for n in (4096, 1024, 256, 64) for d in (40, 80, 160)] + [(4096, 77, 40), (1024, 77, 80)]
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
for nq, nk, d in shapes:
    q = torch.randn(B, H, nq, d, device="cuda", dtype=torch.half)
    k = torch.randn(B, H, nk, d, device="cuda", dtype=torch.half)
    v = torch.randn(B, H, nk, d, device="cuda", dtype=torch.half)
    f = lambda: F.scaled_dot_product_attention(q, k, v)
    for _ in range(3): f()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); f(); e.record(); torch.cuda.synchronize()
    iters = max(3, min(200, int(100 / max(s.elapsed_time(e), 1e-3))))
    s.record()
    for _ in range(iters): f()
    e.record(); torch.cuda.synchronize()
    ms = s.elapsed_time(e) / iters
    tf = 4 * B * H * nq * nk * d / ms * 1e-9
    print(f"Nq{nq} Nk{nk} d{d}: {ms:.4f} ms {tf:.1f} TFLOP/s")
    rows.append(dict(B=B, H=H, Nq=nq, Nk=nk, d=d, ms=ms, tflops=tf))
json.dump(dict(torch=torch.__version__, device=torch.cuda.get_device_name(), rows=rows), open(sys.argv[1], "w"), indent=1)
PY
fi
exit $rc
