// The CPU kernel variants (native/cpu/isa/): which one this CPU gets, IDFORGE_CPU_ISA forcing each
// one it supports, typed errors for one it lacks or one that does not exist (in child processes:
// the choice is made once per process), and the variants' object files holding no symbol the
// linker could share with baseline code (a shared inline function compiled with AVX-512 that
// baseline code then calls would crash an older CPU with SIGILL, never on this one).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { backends } from '../lib/native.js';
import { cpuinfoIsas } from './helpers/cpuinfo.js';
import { TINY_SD } from './helpers/fixtures.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { cpu } = backends();

/**
 * Runs `code` (an ES module importing dist/, which `npm test` builds first: plain node starts in a
 * fraction of the time the TypeScript loader takes) with IDFORGE_CPU_ISA=isa; its last stdout line as JSON.
 */
function child(isa: string, code: string): { status: number | null; out: unknown; err: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    cwd: root, encoding: 'utf8', env: { ...process.env, IDFORGE_CPU_ISA: isa },
  });
  const last = (r.stdout ?? '').trim().split('\n').at(-1) ?? '';
  let out: unknown = last;
  try {
    out = JSON.parse(last);
  } catch {
    // left as text
  }
  return { status: r.status, out, err: r.stderr ?? '' };
}

t.test('the best variant this CPU supports is chosen', async (t) => {
  t.equal(cpu.available, true);
  t.equal(cpu.isa, cpu.supported[0], `isa ${cpu.isa} of ${cpu.supported.join(', ')}`);
  const want = cpuinfoIsas();
  if (want && !process.env.IDFORGE_CPU_ISA) t.same(cpu.supported, want, '/proc/cpuinfo agrees');
});

t.test('IDFORGE_CPU_ISA forces each supported variant', async (t) => {
  for (const v of cpu.supported) {
    const r = child(v, "import { backends } from './dist/native.js'; console.log(JSON.stringify(backends().cpu));");
    t.equal(r.status, 0, `${v}: ${r.err.slice(-500)}`);
    t.match(r.out, { isa: v, supported: cpu.supported }, `IDFORGE_CPU_ISA=${v}`);
  }
});

t.test('an unknown or unsupported IDFORGE_CPU_ISA is E_BACKEND naming what the CPU has', async (t) => {
  const lacking = process.arch === 'arm64' ? 'avx2' : 'neon';
  const code = `import { backends } from './dist/native.js';
import { Engine } from './dist/index.js';
import { Tensor } from './dist/tensor.js';
const res = {};
const grab = (k, f) => { try { f(); res[k] = 'no error'; } catch (e) { res[k] = { code: e.code, message: e.message }; } };
grab('backends', () => backends());
grab('tensor', () => Tensor.from(new Float32Array(4), [4]));
try { await Engine.load(${JSON.stringify(TINY_SD)}, { device: 'cpu' }); res.load = 'no error'; } catch (e) { res.load = { code: e.code, message: e.message }; }
console.log(JSON.stringify(res));`;
  for (const bad of ['bogus', 'AVX2', lacking]) {
    const r = child(bad, code);
    t.equal(r.status, 0, `${bad}: the process ends normally (${r.err.slice(-500)})`);
    const has = new RegExp(`IDFORGE_CPU_ISA=${bad}.*this CPU has ${cpu.supported.join(', ')}`);
    for (const k of ['backends', 'tensor', 'load']) t.match((r.out as Record<string, unknown>)[k], { code: 'E_BACKEND', message: has }, `${bad}: ${k}`);
  }
});

t.test('variant objects define no symbol outside their own namespace, and no static constructor', async (t) => {
  const dir = path.join(root, 'build/CMakeFiles/idforge.dir/native/cpu/isa');
  const nm = spawnSync('nm', ['--version']).status === 0;
  const variants = ['avx512', 'avx2', 'sse2', 'neon'].filter((v) => existsSync(path.join(dir, `${v}.cc.o`)));
  if (!nm || !variants.length) return t.skip(!nm ? 'nm not found' : `no CMake objects in ${dir} (a node-gyp build)`);
  for (const v of variants) {
    const obj = path.join(dir, `${v}.cc.o`);
    const syms = spawnSync('nm', ['-C', '--defined-only', obj], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    // Upper-case types are global (T text, W/V weak, u unique, D/B/R data); the exception-handling
    // personality reference is the same pointer in every object.
    const stray = syms.filter((l) => / [A-Zu] /.test(l) && !l.includes(`idforge::cpu::${v}::`) && !l.includes('DW.ref.__gxx_personality_v0'));
    t.same(stray, [], `${v}: every global symbol is idforge::cpu::${v}::…`);
    const sections = spawnSync('readelf', ['-S', '-W', obj], { encoding: 'utf8' }).stdout;
    t.notMatch(sections, /\.init_array|\.ctors/, `${v}: no code runs at load`);
  }
});
