#!/usr/bin/env node
// Builds build/Release/idforge.node. cmake-js + CMakeLists.txt is the main build (CUDA when nvcc is
// found); when CMake is missing the same CPU sources build through node-gyp + binding.gyp, so a
// plain `npm install` never fails for a missing GPU toolkit or CMake.
//   IDFORGE_CUDA=0          CPU-only build
//   IDFORGE_CUDA_ARCHS=90   CUDA architecture list (default "80;86;89;90")
//   IDFORGE_NATIVE_ARCH=1   compile everything with -march=native (CMake only): for A/B benchmarks
//                           on the build machine. The default build is what platform packages ship:
//                           baseline code plus kernels per instruction set chosen at run time
//                           (native/cpu/isa/), as fast as -march=native on any x86-64 or arm64 CPU
//   IDFORGE_TARGET=linux-arm64  cross-compile the CPU-only addon for arm64 Linux (CMake and Debian's
//                           aarch64-linux-gnu-g++: scripts/toolchain-linux-arm64.cmake); default
//                           folder build/linux-arm64
//   IDFORGE_BUILD=gyp       force the node-gyp path
//   IDFORGE_BUILD_DIR=dir   CMake's build folder (default build; the addon lands in dir/Release): a
//                           second build beside the first (bench/README.md: a -march=native one)
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function has(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.status === 0;
}

function run(cmd, args) {
  console.error(`[idforge] ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

const forceGyp = process.env.IDFORGE_BUILD === 'gyp';
const TARGETS = { 'linux-arm64': 'scripts/toolchain-linux-arm64.cmake' };
const target = process.env.IDFORGE_TARGET;
if (target && !TARGETS[target]) {
  console.error(`[idforge] IDFORGE_TARGET=${target}: cross builds exist for ${Object.keys(TARGETS).join(', ')} only`);
  process.exit(1);
}
let status;
if (target && (forceGyp || !has('cmake'))) {
  console.error('[idforge] IDFORGE_TARGET (a cross build) needs CMake');
  status = 1;
} else if (!forceGyp && has('cmake')) {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  // configure on every install so that changed options (IDFORGE_CUDA, archs) reach CMake's cache.
  const args = ['--out', process.env.IDFORGE_BUILD_DIR || (target ? `build/${target}` : 'build')];
  if (target) args.push(`--CDCMAKE_TOOLCHAIN_FILE=${path.join(root, TARGETS[target])}`);
  // Always pass every option: CMake caches them, and a stale cache must not keep an earlier choice.
  const off = (v) => ['0', 'off', 'false', 'no'].includes(v.toLowerCase());
  const nativeArch = process.env.IDFORGE_NATIVE_ARCH;
  args.push(`--CDIDFORGE_NATIVE_ARCH=${nativeArch && !off(nativeArch) ? 'ON' : 'OFF'}`);
  const cuda = process.env.IDFORGE_CUDA;
  args.push(`--CDIDFORGE_CUDA=${target || (cuda && off(cuda)) ? 'OFF' : 'ON'}`);
  args.push(`--CDIDFORGE_CUDA_ARCHS=${process.env.IDFORGE_CUDA_ARCHS || '80;86;89;90'}`);
  if (process.env.IDFORGE_PARALLEL) args.push('--parallel', process.env.IDFORGE_PARALLEL);
  status = run(process.execPath, [cmakeJs, 'configure', ...args]);
  if (status === 0) status = run(process.execPath, [cmakeJs, 'build', ...args.filter((a) => !a.startsWith('--CD'))]);
} else if (process.env.IDFORGE_BUILD_DIR) {
  console.error('[idforge] IDFORGE_BUILD_DIR needs CMake (node-gyp builds into build/ only)');
  status = 1;
} else {
  console.error('[idforge] cmake not found (or IDFORGE_BUILD=gyp): building the CPU-only addon with node-gyp');
  // A packed idforge carries binding.gyp as scripts/binding.gyp (scripts/pack.mjs says why).
  const gyp = path.join(root, 'binding.gyp');
  if (!existsSync(gyp) && existsSync(path.join(root, 'scripts/binding.gyp'))) copyFileSync(path.join(root, 'scripts/binding.gyp'), gyp);
  const nodeGyp = process.env.npm_config_node_gyp;
  status = nodeGyp ? run(process.execPath, [nodeGyp, 'rebuild']) : run('npx', ['--no-install', 'node-gyp', 'rebuild']);
}
process.exit(status);
