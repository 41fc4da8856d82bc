#!/usr/bin/env node
// Builds this platform's prebuilt package, @idforge/<platform> (see lib/platform.ts): the addon
// compiled portably (no -march=native; CUDA kernels for IDFORGE_CUDA_ARCHS, default 80;86;89;90;
// cuBLAS opened at run time, so one binary serves machines with and without a GPU) plus a
// package.json whose os / cpu / libc let npm install it only where it runs.
//   npm run platform-package [-- --out DIR] [-- --reuse]
//   --reuse  package the addon already in build/Release (CI: the build `npm ci` made) instead of
//            compiling a portable one; such a package is for this machine only, never for release.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { out: { type: 'string' }, reuse: { type: 'boolean' } } });
if (!existsSync(path.join(root, 'dist/platform.js'))) {
  console.error('[idforge] dist/ is missing: run `npm run build` first');
  process.exit(1);
}
const { PLATFORMS, platformKey, platformPackage } = await import(path.join(root, 'dist/platform.js'));

const key = platformKey();
const platform = PLATFORMS.find((p) => p.key === key);
if (!platform) {
  console.error(`[idforge] no platform package is defined for ${key} (lib/platform.ts PLATFORMS)`);
  process.exit(1);
}
const main = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const name = platformPackage(key);

const built = path.join(root, 'build/Release/idforge.node');
if (!values.reuse) {
  const r = spawnSync(process.execPath, [path.join(root, 'scripts/build-native.mjs')], {
    cwd: root, stdio: 'inherit', env: { ...process.env, IDFORGE_NATIVE_ARCH: '0' },
  });
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

// The package must load here: a broken binary is never packaged.
const addon = createRequire(import.meta.url)(path.join(out, 'idforge.node'));
console.error(`[idforge] ${name}@${main.version} in ${out}${values.reuse ? ' (reused build/Release: this machine only)' : ''}; backends ${JSON.stringify(addon.backends())}`);
