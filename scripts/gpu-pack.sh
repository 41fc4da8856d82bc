#!/usr/bin/env bash
# Prepares what a GPU machine without Node/npm needs for scripts/gpu-all.sh, in .gpu/ (git-ignored):
# a stripped node binary (xz) and the node_modules the build and the tests load (tap with its
# dependencies, sharp, the addon's build headers; tsc's native preview is left out) as one xz tar;
# then builds dist/ (the benchmarks run from it). Carry ".gpu" and "dist".
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu
if [ ! -f .gpu/node.xz ]; then
  strip -o .gpu/node "$(command -v node)"
  xz -T2 -9e .gpu/node
fi
# Every installed package the roots reach through dependencies, optional and required peer ones.
node --input-type=module -e '
import fs from "node:fs";
const seen = new Set(), stack = process.argv.slice(1);
while (stack.length) {
  const n = stack.pop();
  const f = `node_modules/${n}/package.json`;
  if (seen.has(n) || n.startsWith("@typescript/native-preview") || !fs.existsSync(f)) continue;
  seen.add(n);
  const j = JSON.parse(fs.readFileSync(f, "utf8"));
  const peers = Object.keys(j.peerDependencies ?? {}).filter((d) => !j.peerDependenciesMeta?.[d]?.optional);
  stack.push(...Object.keys({ ...j.dependencies, ...j.optionalDependencies }), ...peers);
}
console.log([...seen].map((n) => `node_modules/${n}`).join("\n"));
' tap typescript sharp node-addon-api node-api-headers node-gyp-build > .gpu/modules.list
tar -cf - node_modules/.bin -T .gpu/modules.list | xz -T2 -6 > .gpu/modules.tar.xz
npx tsc -p tsconfig.json
du -sh .gpu/node.xz .gpu/modules.tar.xz dist
