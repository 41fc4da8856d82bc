// The op table's CPU modes (test/helpers/opcases.ts): every case's forward output against its
// float64 reference (sampled indices for SD 1.5 sizes; IEEE special values; bad shapes as typed
// errors), with every output and the arena NaN-poisoned so an element no kernel writes fails; and
// every op with a backward rule through lib/graph/autodiff against central finite differences.
// Forward runs on the best CPU kernel variant (the default); on the lower ones: test/ops-isa.test.ts
// (with float16-weight variants of the weight-reading cases, here too); CUDA: test/ops-cuda.test.ts.
import t from 'tap';
import { caseGraph, opCases } from './helpers/opcases.js';
import { forwardInChild, gradCheck, OP_NAMES, tryGrad } from './helpers/opmodes.js';

const all = opCases();
const small = all.filter((c) => !c.stress);

t.test('forward: CPU op vs float64 reference, poisoned outputs (in a child)', async (t) => {
  await forwardInChild(t, { which: 'all' });
});

t.test('grad: autodiff vs finite differences', async (t) => {
  for (const c of small.filter((c) => c.grad)) {
    const r = await gradCheck(c);
    t.ok(r.ok, r.msg);
  }
});

t.test('the table covers every op, and every op with a backward rule has a gradient case', async (t) => {
  const seen = new Set<string>();
  for (const c of all.filter((c) => !c.error)) for (const o of caseGraph(c).g.ops) seen.add(o.op);
  for (const op of OP_NAMES) t.ok(seen.has(op), `a case runs ${op}`);
  // A case without a gradient check must be one grad() refuses (no rule): a new rule needs a case.
  for (const c of small.filter((c) => !c.grad && !c.noGrad && !c.error)) t.throws(() => tryGrad(c), { code: 'E_ARGUMENT' }, `${c.name}: no backward rule`);
});
