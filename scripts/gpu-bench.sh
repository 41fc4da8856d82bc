#!/usr/bin/env bash
# The GPU benchmarks (no checks: those are `npm test`'s), results to $OUT (default ./gpu-out):
#   1. the native kernel benchmarks of test/native/cuda_ops_test.cu   cuda_ops.json/.txt
#   2. torch's scaled_dot_product_attention on the same shapes       torch_sdpa.json/.txt (when torch has CUDA)
#   3. the SD 1.5 UNet step (random weights, fp16, batch 2) at 512² and 256², CUDA graph off and on,
#      through the bench harness (bench/README.md)                    unet-<size>-graph<0|1>.json/.txt
#   4. the SD 1.5 SeFi-IDE learning step at 512², float32           learn-sd15.json/.txt
# Needs the addon built with CUDA and dist/ (scripts/gpu-all.sh does both).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
rc=0

echo "== native kernel benchmarks"
bash scripts/cuda-ops-test.sh --json "$OUT/cuda_ops.json" --bench 2>&1 | tee "$OUT/cuda_ops.txt"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1

if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
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

# IDFORGE_CUDA_GRAPH is read when a program is compiled; IDFORGE_PROGRAM_LOG prints each program's
# buffer plan (arena vs one buffer per intermediate) to stderr. The per-op profile and the whole
# generate() run once, with the graph on at 512².
for size in 512 256; do
  for graph in 0 1; do
    echo "== SD 1.5 UNet step ${size}², CUDA graph $graph"
    extra=(--no-generate --no-ops)
    [ "$size$graph" = 5121 ] && extra=()
    IDFORGE_CUDA_GRAPH=$graph IDFORGE_PROGRAM_LOG=1 node dist/bench/cli.js --random sd15 --device cuda --dtype float16 \
      --size "$size" --batch 2 --steps 30 --warmup 5 "${extra[@]}" --json "$OUT/unet-$size-graph$graph.json" 2>&1 |
      tee "$OUT/unet-$size-graph$graph.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  done
done

echo "== SD 1.5 learning step"
node scripts/bench-learn-step.mjs --json "$OUT/learn-sd15.json" 2>&1 | tee "$OUT/learn-sd15.txt"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
exit $rc
