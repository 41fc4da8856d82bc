// The op table's perf mode: a listing of every case (or those whose name contains a filter) with
// the milliseconds of one run per backend (best of a few, after a warm-up), CPU always and CUDA
// (float32, float16) where a GPU is usable, and GFLOP/s for the compute-bound ops (linear,
// matmul, conv2d, attention: lib/bench/flops.ts counts them). --stress adds the SD 1.5 and
// kernel-path shapes (the old C++ benchmark's: `npm run ops:perf -- --stress sgemm`, `conv2d x[2,`).
// A listing, not a test: A/B performance claims go through the bench harness (npm run bench) as
// alternating runs.
//   node --import=@tapjs/typescript/import test/helpers/ops-perf.ts [--stress] [--reps N] [filter]
import { Program, type BackendSpec } from '../../lib/graph/program.js';
import { programFlops } from '../../lib/bench/flops.js';
import { backends } from '../../lib/native.js';
import { caseGraph, makeInputs, opCases, tensorOf } from './opcases.js';

const args = process.argv.slice(2);
const withStress = args.includes('--stress');
const ri = args.indexOf('--reps');
const reps = ri >= 0 ? Number(args[ri + 1]) : 3;
const filter = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--reps')[0] ?? '';

const bes: BackendSpec[] = [{ device: 'cpu', dtype: 'float32' }];
if (backends().cuda.available) bes.push({ device: 'cuda', dtype: 'float32' }, { device: 'cuda', dtype: 'float16' });

console.log(['case', ...bes.flatMap((b) => [`${b.device} ${b.dtype} ms`, 'GFLOP/s'])].join('\t'));
// The compute-bound ops: the others' FLOP counts are nominal (their GB/s is what to read).
const COMPUTE = new Set(['linear', 'matmul', 'conv2d', 'attention']);
for (const c of opCases()) {
  if ((c.stress && !withStress) || c.error || !c.name.includes(filter)) continue;
  const row: string[] = [c.name];
  for (const be of bes) {
    const { g } = caseGraph(c);
    const p = new Program(g, be);
    const ins = makeInputs(c, 1).map((d, i) => tensorOf(d, c.inputs[i]!, be));
    let best = Infinity;
    for (let r = 0; r <= reps; r++) {
      const t0 = performance.now();
      const outs = await p.run(ins);  // resolves once the backend has finished
      const ms = performance.now() - t0;
      outs.forEach((o) => o.dispose());
      if (r > 0) best = Math.min(best, ms);  // run 0 warms up
    }
    ins.forEach((x) => x.dispose());
    const heavy = p.opNames.map((op, i) => (COMPUTE.has(op) ? i : -1)).filter((i) => i >= 0);
    const flops = programFlops(heavy.map((i) => p.opNames[i]!), heavy.map((i) => p.opShapes[i]!));
    p.dispose();
    row.push(best.toFixed(3), flops ? (flops / best / 1e6).toFixed(1) : '-');
  }
  console.log(row.join('\t'));
}
