// The fallback build: with CMake missing from PATH, scripts/build-native.mjs builds the CPU-only
// addon through node-gyp + binding.gyp from the same native sources (`npx idforge build` in an
// installed package, whose binding.gyp sits in scripts/). Compiling takes a minute or
// two on 2 cores, so it runs when IDFORGE_TEST_GYP=1 (.ci/run sets it).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

t.test('node-gyp fallback build without cmake', { skip: process.env.IDFORGE_TEST_GYP === '1' ? false : 'set IDFORGE_TEST_GYP=1 to run the 1-2 minute node-gyp build' }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-gyp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const p of ['native', 'scripts', 'package.json']) cpSync(path.join(root, p), path.join(dir, p), { recursive: true });
  // Laid out as scripts/pack.mjs packs it: binding.gyp under scripts/, put back by the build script.
  cpSync(path.join(root, 'binding.gyp'), path.join(dir, 'scripts/binding.gyp'));
  symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
  // A cmake that fails stands in for "not installed" (g++ lives next to the real one in /usr/bin).
  const bin = path.join(dir, 'fakebin');
  mkdirSync(bin);
  writeFileSync(path.join(bin, 'cmake'), '#!/bin/sh\nexit 127\n');
  chmodSync(path.join(bin, 'cmake'), 0o755);
  const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, npm_config_node_gyp: path.join(root, 'node_modules/node-gyp/bin/node-gyp.js'), JOBS: '2' };
  const r = spawnSync(process.execPath, ['scripts/build-native.mjs'], { cwd: dir, env, encoding: 'utf8' });
  t.equal(r.status, 0, `build exit status (stderr tail: ${(r.stderr ?? '').slice(-2000)})`);
  t.match(r.stderr, /cmake not found/, 'took the node-gyp path');
  const require = createRequire(import.meta.url);
  const file = path.join(dir, 'build/Release/idforge.node');
  const addon = require(file) as { backends(): { cpu: { available: boolean; isa: string; supported: string[] }; cuda: { compiled: boolean; available: boolean; reason?: string } } };
  const b = addon.backends();
  t.match(b.cpu, { available: true, isa: b.cpu.supported[0] });
  // Every kernel variant is in the node-gyp build too (its per-variant static libraries).
  for (const v of b.cpu.supported) {
    const r = spawnSync(process.execPath, ['-e', `console.log(require(${JSON.stringify(file)}).backends().cpu.isa)`], { encoding: 'utf8', env: { ...process.env, IDFORGE_CPU_ISA: v } });
    t.equal(r.stdout.trim(), v, `IDFORGE_CPU_ISA=${v} on the node-gyp build`);
  }
  t.equal(b.cuda.compiled, false, 'the node-gyp build is CPU-only');
  t.match(b.cuda.reason, /without CUDA/);
});
