// The op table's CPU modes (test/helpers/opcases.ts): every case's forward output against its
// naive float64 reference, and every op with a backward rule through lib/graph/autodiff against
// central finite differences. The CUDA modes of the same table: test/ops-cuda.test.ts.
import t from 'tap';
import { caseGraph, opCases } from './helpers/opcases.js';
import { checkForward, gradCheck, OP_NAMES, tryGrad } from './helpers/opmodes.js';

const CPU = { device: 'cpu', dtype: 'float32' } as const;
const cases = opCases().filter((c) => !c.gpu);

t.test('forward: CPU op vs float64 reference', async (t) => {
  for (const c of cases.filter((c) => c.ref)) {
    for (const r of await checkForward(c, CPU)) t.ok(r.ok, r.msg);
  }
});

t.test('grad: autodiff vs finite differences', async (t) => {
  for (const c of cases.filter((c) => c.grad)) {
    const r = await gradCheck(c);
    t.ok(r.ok, r.msg);
  }
});

t.test('the table covers every op, and every op with a backward rule has a gradient case', async (t) => {
  const seen = new Set<string>();
  for (const c of opCases()) for (const o of caseGraph(c).g.ops) seen.add(o.op);
  for (const op of OP_NAMES) t.ok(seen.has(op), `a case runs ${op}`);
  // A case without a gradient check must be one grad() refuses (no rule): a new rule needs a case.
  for (const c of cases.filter((c) => !c.grad && !c.noGrad)) t.throws(() => tryGrad(c), { code: 'E_ARGUMENT' }, `${c.name}: no backward rule`);
});
