// The op table's CPU forward mode as a child process (forwardInChild in opmodes.ts): every case
// against its float64 reference, outputs NaN-poisoned, on the addon lib/native.ts loads (another
// build when IDFORGE_ADDON names one). A child: the poison switch is read once when the addon
// loads, and tap's coverage instrumentation would slow the references' loops several-fold.
// Prints one "ok <check>" / "FAIL <check>" line per check and exits 1 on any failure.
//   node --import=@tapjs/typescript/import test/helpers/ops-forward.ts [--cpu] [filter]
// (--cpu: opCases('cpu'); filter: only the cases whose name contains it)
import { opCases } from './opcases.js';
import { checkForward } from './opmodes.js';

process.env.IDFORGE_POISON ??= '1';  // before the addon loads (on the first program); =0 turns it off
let failed = 0;
const filter = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? '';
for (const c of opCases(process.argv.includes('--cpu') ? 'cpu' : 'all').filter((c) => (c.ref || c.refAt || c.error) && c.name.includes(filter))) {
  for (const r of await checkForward(c, { device: 'cpu', dtype: 'float32' })) {
    if (!r.ok) failed++;
    console.log(`${r.ok ? 'ok' : 'FAIL'} ${r.msg}`);
  }
}
process.exit(failed ? 1 : 0);
