// The op table's CUDA modes (test/helpers/opcases.ts): every case (odd shapes, SD 1.5 shapes and
// the shapes that pick each kernel path) on CUDA against the CPU op, in float32 (1e-5 relative L2)
// and float16 (2e-3 unless the case says otherwise); and every case with a backward rule through
// autodiff on CUDA against the same gradient graph on the CPU (the backward kernels). Skips with
// the reason on machines without a usable GPU.
import t from 'tap';
import { backends } from '../lib/native.js';
import { opCases, runCase } from './helpers/opcases.js';
import { runGrad } from './helpers/opmodes.js';
import { relL2 } from './helpers/metrics.js';

const cuda = backends().cuda;
const skip = cuda.available ? false : `CUDA not available: ${cuda.reason}`;
const CPU = { device: 'cpu', dtype: 'float32' } as const;
const DTYPES = ['float32', 'float16'] as const;

const compare = (t: { ok: (ok: boolean, msg: string) => unknown }, name: string, dtype: string, out: Float32Array[], ref: Float32Array[], tol: number) =>
  out.forEach((o, i) => {
    const e = relL2(o, ref[i]!);
    t.ok(e <= tol && Number.isFinite(e), `${name} [${dtype}] output ${i}: rel L2 ${e.toExponential(2)} (≤ ${tol})`);
  });

t.test('forward: CUDA ops vs CPU ops', { skip }, async (t) => {
  // Not the bad-shape cases (CPU-side checks) nor the IEEE special values (the kernels use fast math).
  for (const c of opCases().filter((c) => !c.error && !c.special)) {
    // float16: the CPU reference sees the same float16-rounded inputs.
    for (const dtype of c.float32Only ? (['float32'] as const) : DTYPES) {
      const half = dtype === 'float16';
      compare(t, c.name, dtype, await runCase(c, { device: 'cuda', dtype }), await runCase(c, CPU, half), half ? (c.tolF16 ?? 2e-3) : 1e-5);
    }
  }
});

t.test('grad: the gradient graph on CUDA vs on the CPU', { skip }, async (t) => {
  // Outputs: the loss, then each gradient. float16 differences grow through the chained ops. (The
  // backward kernels at SD 1.5 shapes are forward cases of the table: its backward-op cases.)
  for (const c of opCases().filter((c) => c.grad && !c.stress)) {
    for (const dtype of DTYPES) {
      const half = dtype === 'float16';
      compare(t, `${c.name} (loss, gradients)`, dtype, await runGrad(c, { device: 'cuda', dtype }), await runGrad(c, CPU, half), half ? 2e-2 : 1e-4);
    }
  }
});
