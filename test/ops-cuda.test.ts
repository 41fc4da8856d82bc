// Every CUDA op against the CPU op on random, never-zero inputs (odd shapes and, with
// IDFORGE_TEST_BIG=1, SD 1.5 shapes): float32 within 1e-5 relative L2, float16 within 2e-3.
// Skips with the reason on machines without a usable GPU.
import t from 'tap';
import { backends } from '../lib/native.js';
import { opCases, runCase } from './helpers/opcases.js';
import { relL2 } from './helpers/metrics.js';

const cuda = backends().cuda;
const skip = cuda.available ? false : `CUDA not available: ${cuda.reason}`;
const big = process.env.IDFORGE_TEST_BIG === '1';

t.test('CUDA ops vs CPU ops', { skip }, async (t) => {
  for (const c of opCases(big)) {
    const ref = await runCase(c, { device: 'cpu', dtype: 'float32' });
    for (const dtype of ['float32', 'float16'] as const) {
      const out = await runCase(c, { device: 'cuda', dtype });
      const tol = dtype === 'float32' ? 1e-5 : (c.tolF16 ?? 2e-3);
      out.forEach((o, i) => {
        const e = relL2(o, ref[i]!);
        t.ok(e <= tol && Number.isFinite(e), `${c.name} [${dtype}] output ${i}: rel L2 ${e.toExponential(2)} (≤ ${tol})`);
      });
    }
  }
});
