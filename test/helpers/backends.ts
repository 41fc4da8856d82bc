/**
 * The backends the model tests run on, and their tolerances: one test body per golden, run once per
 * entry. By default the CPU in float32 (always) and CUDA in float32 and float16 (skipped, with the
 * reason, where CUDA is not usable), so on a GPU machine `npm test` runs the CUDA variants of the
 * very code CI runs on the CPU. `cpu:float16` is the CPU with float16 weights (computing in float32):
 * the forward goldens (test/golden-models.test.ts, test/id-encoder.test.ts) add it to their list. IDFORGE_TEST_BACKENDS names the list instead: `device[:dtype]`
 * entries, comma-separated (dtype defaults to float32), e.g. `cuda:float16` for one variant, or
 * `cpu,cpu` to see every variant of a parametrised test run on a machine without a GPU.
 */
import { backends } from '../../lib/native.js';

export type Device = 'cpu' | 'cuda';
export type DType = 'float32' | 'float16';

/** Relative errors a backend is held to. */
export interface Tolerances {
  /** relative L2 of a forward golden tensor (the reference is float32 diffusers / transformers) */
  readonly golden: number;
  /** relative L2 of a gradient golden (a backward pass rounds twice as often) */
  readonly grad: number;
  /** relative error of a scalar loss golden */
  readonly loss: number;
  /** relative L2 between two runs of the same computation on this backend (streams, batches) */
  readonly repeat: number;
}

/**
 * One table of tolerances, per compute dtype. float32 is the project's bar (1e-4; a scalar loss
 * 1e-5, as the CPU holds today; CUDA float32 measured ~1e-6 on an H100). float16 is what its
 * rounding allows on the tiny model (measured ≤ 4e-3 on an H100: bench/results/
 * h100-2026-11-22-final-engine.txt and -final-learn.txt).
 */
const TOLERANCES: Record<DType, Tolerances> = {
  float32: { golden: 1e-4, grad: 1e-4, loss: 1e-5, repeat: 1e-4 },
  float16: { golden: 2e-2, grad: 3e-2, loss: 3e-2, repeat: 1e-2 },
};

export interface TestBackend {
  readonly device: Device;
  readonly dtype: DType;
  /** what test titles say: "cpu float32", "cuda float16", "cpu float32 (2)" */
  readonly name: string;
  readonly tol: Tolerances;
  /** false, or why this variant cannot run here */
  readonly skip: false | string;
}

const DEFAULT = 'cpu:float32,cuda:float32,cuda:float16';
/** The forward goldens' default: also the CPU with float16 weights. */
export const FORWARD_DEFAULT = 'cpu:float32,cpu:float16,cuda:float32,cuda:float16';

/** The backends of this run (IDFORGE_TEST_BACKENDS or the default list). */
export function testBackends(spec = process.env.IDFORGE_TEST_BACKENDS || DEFAULT): TestBackend[] {
  const cuda = backends().cuda;
  const seen = new Map<string, number>();
  return spec.split(',').map((raw) => {
    const [device, dtype = 'float32', ...rest] = raw.trim().split(':');
    const key = `${device}:${dtype}`;
    if (rest.length || !['cpu:float32', 'cpu:float16', 'cuda:float32', 'cuda:float16'].includes(key))
      throw new Error(`IDFORGE_TEST_BACKENDS: bad entry "${raw}" (cpu, cpu:float32, cpu:float16, cuda:float32 or cuda:float16)`);
    const n = (seen.get(key) ?? 0) + 1;
    seen.set(key, n);
    return {
      device: device as Device,
      dtype: dtype as DType,
      name: `${device} ${dtype}${n > 1 ? ` (${n})` : ''}`,
      tol: TOLERANCES[dtype as DType],
      skip: device === 'cuda' && !cuda.available ? `CUDA not available: ${cuda.reason ?? 'not compiled'}` : false,
    };
  });
}
