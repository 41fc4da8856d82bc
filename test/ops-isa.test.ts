// The op table's forward mode on every lower kernel variant this CPU has (IDFORGE_CPU_ISA forces
// it: sse2 and avx2 on an AVX-512 machine, sse2 on an AVX2 one), against the float64 reference with
// NaN-poisoned outputs, each in a child process (test/helpers/ops-forward.ts). test/ops.test.ts runs
// the whole table on the best variant (the default); here only the cases whose ops run variant
// kernels (ISA_OPS: GEMM, convolution and Winograd, attention, vector math, norms), which are nearly
// all of the table's time anyway, plus their float16-weight variants. The children run at once:
// much of a run is single-threaded float64 references in JS, so two overlap well on two cores.
import t from 'tap';
import { backends } from '../lib/native.js';
import { forwardChild, reportForward, type ForwardChild } from './helpers/opmodes.js';

const { isa, supported } = backends().cpu;
const lower = supported.filter((s) => s !== isa);

t.test('kernel variants to check', async (t) => {
  t.ok(supported.includes(isa), `the chosen variant ${isa} is one this CPU supports (${supported.join(', ')})`);
  if (!lower.length) t.comment(`only ${isa} here: nothing lower to force`);
});

const runs = lower.map((v) => {
  const o: ForwardChild = { which: 'isa', isa: v, minChecks: 150 };
  return { v, o, done: forwardChild(o) };
});
for (const { v, o, done } of runs)
  t.test(`forward: the ${v} kernels vs float64 reference, poisoned outputs (in a child)`, async (t) => {
    reportForward(t, o, await done);
  });
