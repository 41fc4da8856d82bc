// The op table's forward mode on a portable build of the addon: CPU only, no -march=native (the
// flags of the prebuilt platform packages, IDFORGE_NATIVE_ARCH=0), so the generic microkernels and
// scalar paths that a -march=native build never runs are checked too. The build goes to
// build/portable (CMake, scripts/build-native.mjs) and is reused while the native sources are
// unchanged (a hash of them sits next to it); the table runs in a child process that loads it
// through IDFORGE_ADDON, with NaN-poisoned outputs (test/helpers/ops-forward.ts).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { forwardInChild } from './helpers/opmodes.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'build/portable');
const addon = path.join(dir, 'Release/idforge.node');
const has = (cmd: string) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
const skip = !has(process.env.CXX ?? 'c++') ? 'no C++ compiler' : !has('cmake') ? 'cmake not found (the portable build goes through CMake)' : false;

/** The sources and build files the addon is made from. */
function sourceHash(): string {
  const h = createHash('sha256');
  const files = ['CMakeLists.txt', 'scripts/build-native.mjs'];
  for (const d of ['native', 'native/cpu']) for (const f of readdirSync(path.join(root, d)).sort()) if (/\.(cc|h)$/.test(f)) files.push(`${d}/${f}`);
  for (const f of files) h.update(f).update(readFileSync(path.join(root, f)));
  return h.digest('hex');
}

t.test('forward: portable CPU build vs float64 reference', { skip }, async (t) => {
  const hash = sourceHash();
  const stamp = path.join(dir, 'source-hash');
  if (!existsSync(addon) || !existsSync(stamp) || readFileSync(stamp, 'utf8') !== hash) {
    const env = { ...process.env, IDFORGE_BUILD_DIR: 'build/portable', IDFORGE_NATIVE_ARCH: '0', IDFORGE_CUDA: '0' };
    const b = spawnSync(process.execPath, ['scripts/build-native.mjs'], { cwd: root, env, encoding: 'utf8' });
    if (b.status !== 0) return t.fail(`portable build failed:\n${`${b.stdout}${b.stderr}`.slice(-3000)}`);
    writeFileSync(stamp, hash);
  }
  forwardInChild(t, { addon, which: 'cpu' });
});
