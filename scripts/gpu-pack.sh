#!/usr/bin/env bash
# Prepares what a GPU machine without Node/npm needs for scripts/gpu-all.sh, in .gpu/ (git-ignored):
# the node binary (xz) and the few node_modules the build and the engine load; then `npm run build`
# makes dist/. Carry ".gpu" and "dist" to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
[ -f .gpu/node.xz ] || xz -T2 -6 -c "$(command -v node)" > .gpu/node.xz
tar -cf .gpu/modules.tar node_modules/node-addon-api node_modules/node-api-headers node_modules/node-gyp-build \
  node_modules/sharp node_modules/@img node_modules/detect-libc node_modules/semver
npx tsc -p tsconfig.json
du -sh .gpu dist
