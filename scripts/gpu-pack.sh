#!/usr/bin/env bash
# Prepares what a GPU machine without Node/npm needs for scripts/gpu-all.sh, in .gpu/ (git-ignored):
# a stripped node binary (xz) and the few node_modules the build and the engine load; then builds
# dist/. Carry ".gpu" and "dist" (the device tool caps a call at 64 MiB, fixtures included).
# sharp is not packed: image I/O loads it on demand and the GPU check feeds tensors.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
if [ ! -f .gpu/node.xz ]; then
  strip -o .gpu/node "$(command -v node)"
  xz -T2 -9e .gpu/node
fi
tar -cf .gpu/modules.tar node_modules/node-addon-api node_modules/node-api-headers node_modules/node-gyp-build
npx tsc -p tsconfig.json
du -sh .gpu dist
