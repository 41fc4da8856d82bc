// Installing idforge runs no script where a prebuilt platform package matches: pack the main
// package and this platform's package (made from the addon `npm ci` already built), install both
// offline from the tarballs into a fresh app with scripts disabled (and under npm's strict script
// policy), then import, backends() and a 2-step generation on the tiny model. Runs when
// IDFORGE_TEST_PREBUILT=1 (.ci/run sets it): it needs npm's cache warm from `npm ci`.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { backends } from '../lib/native.js';
import { PLATFORMS, packedOptionalDependencies, platformKey, platformPackage } from '../lib/platform.js';
import { cpuinfoIsas } from './helpers/cpuinfo.js';
import { TINY_SD } from './helpers/fixtures.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// The installed package must pick this machine's best kernels by itself: no forcing, no other addon.
const cleanEnv = { ...process.env };
delete cleanEnv['IDFORGE_CPU_ISA'];
delete cleanEnv['IDFORGE_ADDON'];
const run = (cmd: string, args: string[], cwd: string, env: Record<string, string> = {}) => {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...cleanEnv, npm_config_loglevel: 'warn', ...env } });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
};
// What the CPU has, read from /proc/cpuinfo where there is one (not from the addon under test).
const cpuHas = cpuinfoIsas() ?? backends().cpu.supported;
const npmSupports = (flag: string) => run('npm', ['config', 'get', flag], root).status === 0;

interface LockEntry { dev?: boolean; [k: string]: unknown }

/**
 * The app's lockfile: idforge and its platform package from the tarballs, every other package at
 * the version and integrity this repository's lockfile pins (so `npm ci --offline` finds them all
 * in the cache `npm ci` filled). Dev-only packages are left out, as a user's install would.
 */
function appLock(main: string, platform: string): object {
  const repo = JSON.parse(readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const me = repo.packages['']!;
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
  const packages: Record<string, unknown> = {
    '': { name: 'app', version: '1.0.0', dependencies: { idforge: `file:${main}` } },
    'node_modules/idforge': {
      version: pkg.version, resolved: `file:${main}`, license: pkg.license, bin: pkg.bin, engines: pkg.engines,
      dependencies: me.dependencies, optionalDependencies: packedOptionalDependencies(me.optionalDependencies as Record<string, string> | undefined, pkg.version),
    },
  };
  // As a lockfile records them once published: each platform package with its os / cpu / libc, so
  // npm skips the others without fetching them; this platform's comes from its tarball.
  for (const p of PLATFORMS) {
    const name = platformPackage(p.key);
    packages[`node_modules/${name}`] = {
      version: pkg.version, optional: true, os: [p.os], cpu: [p.cpu], ...(p.libc ? { libc: [p.libc] } : {}),
      resolved: p.key === platformKey() ? `file:${platform}` : `https://registry.npmjs.org/${name}/-/${name.split('/')[1]}-${pkg.version}.tgz`,
    };
  }
  for (const [k, v] of Object.entries(repo.packages)) if (k.startsWith('node_modules/') && !v.dev) packages[k] = v;
  return { name: 'app', version: '1.0.0', lockfileVersion: 3, requires: true, packages };
}

const APP = `import { Engine, backends } from 'idforge';
const b = backends();
if (process.argv[2] === 'backends') { console.log(JSON.stringify(b)); process.exit(0); }
const engine = await Engine.load(process.argv[2]);
const r = await engine.generate({ prompt: 'a photo of a cat', width: 64, height: 64, steps: 2, seed: 1 });
const img = r.images[0];
console.log(JSON.stringify({ backends: b, width: img.width, height: img.height, bytes: img.data.length, mean: img.data.reduce((a, x) => a + x, 0) / img.data.length }));
engine.dispose();
`;

t.test('the packed packages install and run with scripts disabled', {
  skip: process.env.IDFORGE_TEST_PREBUILT === '1' ? false : 'set IDFORGE_TEST_PREBUILT=1 (needs npm\'s cache from `npm ci`)',
}, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-prebuilt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pp = run(process.execPath, [path.join(root, 'scripts/platform-package.mjs'), '--reuse', '--out', path.join(dir, 'pkg')], root);
  t.equal(pp.status, 0, `platform package: ${pp.out.slice(-1500)}`);
  const packMain = run(process.execPath, [path.join(root, 'scripts/pack.mjs'), '--out', dir], root);
  t.equal(packMain.status, 0, `scripts/pack.mjs: ${packMain.out.slice(-1500)}`);
  const packPlatform = run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir, path.join(dir, 'pkg')], dir);
  t.equal(packPlatform.status, 0, `npm pack: ${packPlatform.out.slice(-1500)}`);
  const main = packMain.out.trim().split('\n').at(-1)!;
  const platform = path.join(dir, packPlatform.out.trim().split('\n').at(-1)!);
  t.ok(existsSync(main) && existsSync(platform), `two tarballs (${main}, ${platform})`);

  const variants: [string, string[]][] = [['--ignore-scripts', ['--ignore-scripts']]];
  if (npmSupports('strict-allow-scripts')) variants.push(['npm\'s strict script policy', ['--strict-allow-scripts']]);
  for (const [what, flags] of variants) {
    const app = path.join(dir, `app${variants.findIndex((v) => v[0] === what)}`);
    mkdirSync(app);
    // sharp's and msgpackr-extract's scripts only check for their own prebuilt binaries: denied here,
    // so that the strict policy judges idforge alone.
    writeFileSync(path.join(app, 'package.json'), JSON.stringify({
      name: 'app', version: '1.0.0', private: true, type: 'module', dependencies: { idforge: `file:${main}` },
      allowScripts: { sharp: false, 'msgpackr-extract': false },
    }));
    writeFileSync(path.join(app, 'package-lock.json'), JSON.stringify(appLock(main!, platform!)));
    writeFileSync(path.join(app, 'app.mjs'), APP);
    const inst = run('npm', ['ci', '--offline', '--no-audit', '--no-fund', ...flags], app);
    t.equal(inst.status, 0, `${what}: npm ci --offline: ${inst.out.slice(-2500)}`);
    // npm lists every package whose install scripts it would run (or refuse) under the policy.
    t.notMatch(inst.out, /idforge@[^\n]*\((pre|post)?install/, `${what}: idforge has no install script (binding.gyp is not one either: gypfile false)`);
    t.ok(existsSync(path.join(app, 'node_modules', platformPackage(), 'idforge.node')), `${what}: ${platformPackage()} installed`);
    t.notOk(existsSync(path.join(app, 'node_modules/idforge/build')), `${what}: no local build in the installed package`);
    const r = run(process.execPath, ['app.mjs', what === '--ignore-scripts' ? TINY_SD : 'backends'], app);
    t.equal(r.status, 0, `${what}: app runs: ${r.out.slice(-2000)}`);
    const res = JSON.parse(r.out.trim().split('\n').at(-1)!);
    if (what === '--ignore-scripts') {
      // The best variant this CPU has, chosen at run time by the installed package (avx512 or avx2
      // on x86-64 machines that have them, not the portable build's baseline).
      t.match(res, { backends: { cpu: { available: true, isa: cpuHas[0] } }, width: 64, height: 64, bytes: 64 * 64 * 3 }, `isa ${res.backends?.cpu?.isa}: this CPU has ${cpuHas.join(', ')}`);
      t.same(res.backends?.cpu?.supported, cpuHas, 'the variants it lists are those /proc/cpuinfo shows');
      t.ok(res.mean > 0 && res.mean < 255, 'an image came out');
      // The README's snippets run as written in this app (a block starting "// continues" extends the one before).
      const blocks: string[] = [];
      for (const m of readFileSync(path.join(root, 'README.md'), 'utf8').matchAll(/```js\n([\s\S]*?)```/g)) {
        if (m[1]!.startsWith('// continues') && blocks.length) blocks[blocks.length - 1] += m[1]!;
        else blocks.push(m[1]!);
      }
      t.ok(blocks.length >= 2, `README has js snippets (${blocks.length})`);
      blocks.forEach((code, i) => {
        writeFileSync(path.join(app, `readme-${i}.mjs`), code);
        const sn = run(process.execPath, [`readme-${i}.mjs`], app);
        t.equal(sn.status, 0, `README snippet ${i} (${code.split('\n')[0]}) runs: ${sn.out.slice(-1500)}`);
      });
      // Without the platform package (and no local build) the error says how to build from source.
      const pkgDir = path.join(app, 'node_modules', platformPackage());
      renameSync(pkgDir, `${pkgDir}.off`);
      const none = run(process.execPath, ['app.mjs', 'backends'], app);
      renameSync(`${pkgDir}.off`, pkgDir);
      t.not(none.status, 0);
      t.match(none.out, /E_BACKEND/);
      t.match(none.out, /npx idforge build/);
      t.match(none.out, new RegExp(platformKey()));
    } else t.match(res, { cpu: { available: true, isa: cpuHas[0] } }, `${what}: isa ${res.cpu?.isa}: this CPU has ${cpuHas.join(', ')}`);
  }
});
