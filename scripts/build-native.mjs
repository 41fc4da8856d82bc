#!/usr/bin/env node
// Builds build/Release/idforge.node. cmake-js + CMakeLists.txt is the main build (CUDA when nvcc is
// found); when CMake is missing the same CPU sources build through node-gyp + binding.gyp, so a
// plain `npm install` never fails for a missing GPU toolkit or CMake.
//   IDFORGE_CUDA=0          CPU-only build
//   IDFORGE_CUDA_ARCHS=90   CUDA architecture list (default "80;86;89;90")
//   IDFORGE_NATIVE_ARCH=0   portable CPU code (no -march=native): prebuilt platform packages
//   IDFORGE_BUILD=gyp       force the node-gyp path
//   IDFORGE_BUILD_DIR=dir   CMake's build folder (default build; the addon lands in dir/Release):
//                           test/ops-portable.test.ts builds a portable CPU-only addon apart this way
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
let status;
if (!forceGyp && has('cmake')) {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  // configure on every install so that changed options (IDFORGE_CUDA, archs) reach CMake's cache.
  const args = ['--out', process.env.IDFORGE_BUILD_DIR || 'build'];
  // Always pass every option: CMake caches them, and a stale cache must not keep an earlier choice.
  const off = (v) => ['0', 'off', 'false', 'no'].includes(v.toLowerCase());
  const nativeArch = process.env.IDFORGE_NATIVE_ARCH;
  args.push(`--CDIDFORGE_NATIVE_ARCH=${nativeArch && off(nativeArch) ? 'OFF' : 'ON'}`);
  const cuda = process.env.IDFORGE_CUDA;
  args.push(`--CDIDFORGE_CUDA=${cuda && off(cuda) ? 'OFF' : 'ON'}`);
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
