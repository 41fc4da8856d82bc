// The op table's CPU forward mode as a child process (forwardInChild in opmodes.ts): every case
// against its float64 reference, outputs NaN-poisoned, on the addon lib/native.ts loads (another
// build when IDFORGE_ADDON names one). A child: the poison switch is read once when the addon
// loads, and tap's coverage instrumentation would slow the references' loops several-fold.
// Prints "isa <variant>" (backends().cpu.isa: IDFORGE_CPU_ISA forces one), then one "ok <check>" /
// "FAIL <check>" line per check (the table, then its LINEAR / CONV2D / EMBEDDING cases with a float16
// weight constant), and exits 1 on any failure.
//   node --import=@tapjs/typescript/import test/helpers/ops-forward.ts [--cpu | --isa] [--max-inputs=N] [filter]
// (--cpu: opCases('cpu'); --isa: those with an op that runs variant kernels (ISA_OPS), errors left
// out; --max-inputs: only cases of at most N input elements in all, for slow machines such as an
// emulator; filter: only the cases whose name contains it)
import { backends } from '../../lib/native.js';
import { caseGraph, opCases } from './opcases.js';
import { checkForward, checkHalfWeight, halfWeightCases, ISA_OPS } from './opmodes.js';

process.env.IDFORGE_POISON ??= '1';  // before the addon loads (on the first program); =0 turns it off
let failed = 0;
const filter = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? '';
const maxInputs = Number(process.argv.find((a) => a.startsWith('--max-inputs='))?.split('=')[1] ?? Infinity);
const inputElements = (c: ReturnType<typeof opCases>[number]) => c.inputs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
const isaOnly = process.argv.includes('--isa');
const runsKernels = (c: ReturnType<typeof opCases>[number]) => !c.error && caseGraph(c).g.ops.some((o) => ISA_OPS.has(o.op));
console.log(`isa ${backends().cpu.isa}`);
const cases = opCases(process.argv.includes('--cpu') || isaOnly ? 'cpu' : 'all').filter((c) => (c.ref || c.refAt || c.error) && c.name.includes(filter) && inputElements(c) <= maxInputs && (!isaOnly || runsKernels(c)));
const report = (r: { ok: boolean; msg: string }) => {
  if (!r.ok) failed++;
  console.log(`${r.ok ? 'ok' : 'FAIL'} ${r.msg}`);
};
for (const c of cases) for (const r of await checkForward(c, { device: 'cpu', dtype: 'float32' })) report(r);
// float16 weights on the CPU (BackendSpec.weights): the weight-reading kernels' half paths.
for (const c of halfWeightCases(cases)) for (const r of await checkHalfWeight(c)) report(r);
process.exit(failed ? 1 : 0);
