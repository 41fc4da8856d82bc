#!/usr/bin/env node
// Builds this platform's prebuilt package, @idforge/<platform> (see lib/platform.ts): the addon
// as the default build makes it (baseline code plus CPU kernels for every instruction set of the
// architecture, chosen at run time: full speed on any CPU; CUDA kernels for IDFORGE_CUDA_ARCHS,
// default 80;86;89;90; cuBLAS opened at run time, so one binary serves machines with and without a
// GPU) plus a package.json whose os / cpu / libc let npm install it only where it runs.
//   npm run platform-package [-- --out DIR] [-- --reuse] [-- --target linux-arm64]
//   --reuse   package the addon already in build/Release (CI: the build `npm ci` made) instead of
//             compiling one; the default build is portable, but a -march=native one
//             (IDFORGE_NATIVE_ARCH=1) would run on this machine only: never release such a package.
//   --target  cross-compile for another platform (linux-arm64: Debian's g++-aarch64-linux-gnu,
//             CPU only) into build/<target>. The package cannot be loaded here; IDFORGE_TARGET_NODE
//             names a command that runs that platform's node (e.g. "qemu-aarch64 -L /sysroot
//             /sysroot/usr/bin/nodejs") to load it and print its backends() before packaging.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { out: { type: 'string' }, reuse: { type: 'boolean' }, target: { type: 'string' } } });
if (!existsSync(path.join(root, 'dist/platform.js'))) {
  console.error('[idforge] dist/ is missing: run `npm run build` first');
  process.exit(1);
}
const { PLATFORMS, platformKey, platformPackage } = await import(path.join(root, 'dist/platform.js'));

const key = values.target ?? platformKey();
const cross = key !== platformKey();
if (cross && values.reuse) {
  console.error('[idforge] --reuse packages this machine\'s build: not with --target');
  process.exit(1);
}
const platform = PLATFORMS.find((p) => p.key === key);
if (!platform) {
  console.error(`[idforge] no platform package is defined for ${key} (lib/platform.ts PLATFORMS)`);
  process.exit(1);
}
const main = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const name = platformPackage(key);

const built = path.join(root, cross ? `build/${key}/Release/idforge.node` : 'build/Release/idforge.node');
if (!values.reuse) {
  const env = { ...process.env, IDFORGE_NATIVE_ARCH: '0', ...(cross ? { IDFORGE_TARGET: key, IDFORGE_BUILD_DIR: `build/${key}` } : {}) };
  const r = spawnSync(process.execPath, [path.join(root, 'scripts/build-native.mjs')], { cwd: root, stdio: 'inherit', env });
  if (r.status !== 0) process.exit(r.status ?? 1);
} else if (!existsSync(built)) {
  console.error('[idforge] --reuse: build/Release/idforge.node does not exist');
  process.exit(1);
}

const out = path.resolve(values.out ?? path.join(root, 'prebuilt', key));
mkdirSync(out, { recursive: true });
copyFileSync(built, path.join(out, 'idforge.node'));
const pkg = {
  name,
  version: main.version,
  description: `The idforge native addon prebuilt for ${key}${platform.libc ? ` (${platform.libc})` : ''}`,
  license: main.license,
  os: [platform.os],
  cpu: [platform.cpu],
  ...(platform.libc ? { libc: [platform.libc] } : {}),
  main: 'idforge.node',
  files: ['idforge.node'],
  engines: main.engines,
};
writeFileSync(path.join(out, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
writeFileSync(path.join(out, 'README.md'), `# ${name}\n\nThe prebuilt native addon of [idforge](https://www.npmjs.com/package/idforge) for ${key}. ` +
  'Install `idforge`, not this package: it is an optional dependency that npm picks for this platform.\n');

// The package must load: a broken binary is never packaged (a cross-built one where a command can
// run the target's node; otherwise it is said plainly that it was not loaded).
const file = path.join(out, 'idforge.node');
let loaded;
if (!cross) loaded = JSON.stringify(createRequire(import.meta.url)(file).backends());
else if (process.env.IDFORGE_TARGET_NODE) {
  const [cmd, ...pre] = process.env.IDFORGE_TARGET_NODE.split(/\s+/).filter(Boolean);
  const r = spawnSync(cmd, [...pre, '-e', `console.log(JSON.stringify(require(${JSON.stringify(file)}).backends()))`], { encoding: 'utf8' });
  if (r.status !== 0) {
    console.error(`[idforge] the ${key} addon does not load under ${process.env.IDFORGE_TARGET_NODE}: ${r.stderr}`);
    process.exit(1);
  }
  loaded = r.stdout.trim();
}
console.error(`[idforge] ${name}@${main.version} in ${out}${values.reuse ? ' (reused build/Release)' : ''}; ` +
  (loaded ? `backends ${loaded}` : `cross-built for ${key}, NOT loaded here (set IDFORGE_TARGET_NODE to check it under an emulator)`));
