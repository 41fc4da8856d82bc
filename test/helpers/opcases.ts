// Single-op graphs on random, never-zero inputs, shared by the CPU op tests and the CUDA-vs-CPU
// comparison (test/ops-cuda.test.ts), in the spirit of ggml's test-backend-ops.
import { Graph, type Value } from '../../lib/graph/graph.js';
import { Program, type BackendSpec } from '../../lib/graph/program.js';
import { randn } from '../../lib/sched/random.js';
import { Tensor, numel } from '../../lib/tensor.js';

export interface InputSpec {
  shape: number[];
  /** int inputs: values drawn in [lo, hi) */
  int?: [number, number];
  /** keep values positive (e.g. timesteps) */
  positive?: boolean;
  /** an int32 input holding the bits of these float32 values (SAMPLER_STEP's coefficients) */
  f32bits?: number[];
}

export interface OpCase {
  name: string;
  inputs: InputSpec[];
  build: (g: Graph, x: Value[]) => Value | Value[];
  /** a per-case tolerance override (fp16 attention over long sequences accumulates more error) */
  tolF16?: number;
}

/** Random data that is never zero: |x| ≥ 0.05. */
export function nonZeroRandom(seed: number, n: number, scale = 1): Float32Array {
  const r = randn(seed, n);
  for (let i = 0; i < n; i++) {
    const v = r[i]! * scale;
    r[i] = Math.abs(v) < 0.05 * scale ? (v < 0 ? -0.05 : 0.05) * scale : v;
  }
  return r;
}

export function makeInputs(c: OpCase, seed: number): { data: (Float32Array | Int32Array)[]; specs: InputSpec[] } {
  const data = c.inputs.map((s, i) => {
    const n = numel(s.shape);
    if (s.f32bits) return new Int32Array(Float32Array.from(s.f32bits).buffer);
    if (s.int) {
      const r = randn(seed * 31 + i, n);
      const [lo, hi] = s.int;
      return Int32Array.from(r, (v) => lo + (Math.floor(Math.abs(v) * 1e6) % (hi - lo)));
    }
    const d = nonZeroRandom(seed * 31 + i, n);
    return s.positive ? d.map((v) => Math.abs(v) * 500) : d;
  });
  return { data, specs: c.inputs };
}

/** Runs one op case on a backend and returns every output as float32. */
export async function runCase(c: OpCase, be: BackendSpec, seed = 1): Promise<Float32Array[]> {
  const { data, specs } = makeInputs(c, seed);
  const g = new Graph();
  const vals = specs.map((s) => g.input(s.shape, s.int || s.f32bits ? 'int32' : 'float'));
  const out = c.build(g, vals);
  for (const o of Array.isArray(out) ? out : [out]) g.output(o);
  const p = new Program(g, be);
  const ins = data.map((d, i) =>
    d instanceof Int32Array
      ? Tensor.from(d, specs[i]!.shape, { device: be.device })
      : Tensor.from(d, specs[i]!.shape, { dtype: be.dtype, device: be.device }),
  );
  try {
    const outs = await p.run(ins);
    const r = outs.map((o) => o.toFloat32());
    for (const o of outs) o.dispose();
    return r;
  } finally {
    for (const t of ins) t.dispose();
    p.dispose();
  }
}

const w = (n: number, k: number): InputSpec => ({ shape: [n, k] });

/** Odd shapes and SD 1.5 shapes for every op. `big` adds the SD 1.5-sized cases (slow on a CPU). */
export function opCases(big: boolean): OpCase[] {
  const cases: OpCase[] = [
    { name: 'linear 3x5x7→9 +bias', inputs: [{ shape: [3, 5, 7] }, w(9, 7), { shape: [9] }], build: (g, [x, a, b]) => g.linear(x!, a!, b) },
    { name: 'linear no bias 13x33→17', inputs: [{ shape: [13, 33] }, w(17, 33)], build: (g, [x, a]) => g.linear(x!, a!) },
    { name: 'matmul 2x5x7·7x3', inputs: [{ shape: [2, 5, 7] }, { shape: [2, 7, 3] }], build: (g, [a, b]) => g.matmul(a!, b!) },
    { name: 'matmul transB 2x5x7·3x7', inputs: [{ shape: [2, 5, 7] }, { shape: [2, 3, 7] }], build: (g, [a, b]) => g.matmul(a!, b!, { transB: true }) },
    { name: 'conv2d 3x3 s1 p1 odd', inputs: [{ shape: [2, 5, 7, 9] }, { shape: [6, 5, 3, 3] }, { shape: [6] }], build: (g, [x, k, b]) => g.conv2d(x!, k!, b, { stride: 1, pad: 1 }) },
    { name: 'conv2d 3x3 s2 p1', inputs: [{ shape: [1, 4, 8, 10] }, { shape: [3, 4, 3, 3] }, { shape: [3] }], build: (g, [x, k, b]) => g.conv2d(x!, k!, b, { stride: 2, pad: 1 }) },
    { name: 'conv2d 3x3 s2 p0', inputs: [{ shape: [1, 4, 9, 9] }, { shape: [3, 4, 3, 3] }], build: (g, [x, k]) => g.conv2d(x!, k!, undefined, { stride: 2, pad: 0 }) },
    { name: 'conv2d 1x1', inputs: [{ shape: [2, 6, 5, 3] }, { shape: [4, 6, 1, 1] }, { shape: [4] }], build: (g, [x, k, b]) => g.conv2d(x!, k!, b) },
    { name: 'conv2d 16x16 s16 patch', inputs: [{ shape: [1, 3, 32, 48] }, { shape: [8, 3, 16, 16] }], build: (g, [x, k]) => g.conv2d(x!, k!, undefined, { stride: 16 }) },
    { name: 'group_norm 6 groups', inputs: [{ shape: [2, 12, 5, 3] }, { shape: [12] }, { shape: [12] }], build: (g, [x, a, b]) => g.groupNorm(x!, a!, b!, { groups: 6, eps: 1e-5 }) },
    { name: 'group_norm + silu', inputs: [{ shape: [2, 8, 7, 7] }, { shape: [8] }, { shape: [8] }], build: (g, [x, a, b]) => g.groupNorm(x!, a!, b!, { groups: 4, eps: 1e-6, silu: true }) },
    { name: 'layer_norm', inputs: [{ shape: [3, 7, 33] }, { shape: [33] }, { shape: [33] }], build: (g, [x, a, b]) => g.layerNorm(x!, a!, b!, { eps: 1e-5 }) },
    { name: 'attention self d=8 h=4', inputs: [{ shape: [2, 37, 32] }, { shape: [2, 37, 32] }, { shape: [2, 37, 32] }], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads: 4 }) },
    { name: 'attention causal d=8', inputs: [{ shape: [2, 77, 32] }, { shape: [2, 77, 32] }, { shape: [2, 77, 32] }], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads: 4, causal: true }) },
    { name: 'attention cross 77 keys d=4 + capture', inputs: [{ shape: [2, 50, 32] }, { shape: [2, 77, 32] }, { shape: [2, 77, 32] }], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads: 8, capture: true }) },
    { name: 'attention dv≠d', inputs: [{ shape: [1, 9, 12] }, { shape: [1, 11, 12] }, { shape: [1, 11, 6] }], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads: 3 }) },
    { name: 'geglu', inputs: [{ shape: [2, 5, 14] }], build: (g, [x]) => g.geglu(x!) },
    { name: 'gelu', inputs: [{ shape: [3, 17] }], build: (g, [x]) => g.gelu(x!) },
    { name: 'quick_gelu', inputs: [{ shape: [3, 17] }], build: (g, [x]) => g.quickGelu(x!) },
    { name: 'silu', inputs: [{ shape: [3, 17] }], build: (g, [x]) => g.silu(x!) },
    { name: 'add broadcast [2,3,4,5]+[2,3,1,1]', inputs: [{ shape: [2, 3, 4, 5] }, { shape: [2, 3, 1, 1] }], build: (g, [a, b]) => g.add(a!, b!) },
    { name: 'add broadcast [2,7,5]+[7,5]', inputs: [{ shape: [2, 7, 5] }, { shape: [7, 5] }], build: (g, [a, b]) => g.add(a!, b!) },
    { name: 'mul same shape', inputs: [{ shape: [4, 9] }, { shape: [4, 9] }], build: (g, [a, b]) => g.mul(a!, b!) },
    { name: 'scale', inputs: [{ shape: [5, 6] }], build: (g, [x]) => g.scale(x!, -0.7, 0.3) },
    { name: 'upsample2x', inputs: [{ shape: [2, 3, 5, 7] }], build: (g, [x]) => g.upsample2x(x!) },
    { name: 'concat axis 1', inputs: [{ shape: [2, 3, 4, 5] }, { shape: [2, 6, 4, 5] }], build: (g, [a, b]) => g.concat([a!, b!], 1) },
    { name: 'concat axis 0', inputs: [{ shape: [1, 3, 4] }, { shape: [2, 3, 4] }], build: (g, [a, b]) => g.concat([a!, b!], 0) },
    { name: 'permute 0231', inputs: [{ shape: [2, 3, 4, 5] }], build: (g, [x]) => g.permute(x!, [0, 2, 3, 1]) },
    { name: 'reshape', inputs: [{ shape: [2, 3, 4] }], build: (g, [x]) => g.reshape(x!, [6, 4]) },
    { name: 'slice axis 1', inputs: [{ shape: [2, 8, 3] }], build: (g, [x]) => g.slice(x!, 1, 2, 7) },
    { name: 'timestep_emb flip', inputs: [{ shape: [3], positive: true }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 32, flip: true, shift: 0 }) },
    { name: 'timestep_emb noflip shift 1 odd', inputs: [{ shape: [2], positive: true }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 9, flip: false, shift: 1 }) },
    { name: 'embedding', inputs: [{ shape: [2, 7], int: [0, 50] }, { shape: [50, 6] }], build: (g, [i, tb]) => g.embedding(i!, tb!) },
    { name: 'inject', inputs: [{ shape: [2, 7, 6] }, { shape: [2, 7], int: [-1, 3] }, { shape: [3, 6] }], build: (g, [x, s, v]) => g.inject(x!, s!, v!) },
    { name: 'cfg', inputs: [{ shape: [4, 3, 5] }], build: (g, [e]) => g.cfg(e!, 7.5) },
    { name: 'sampler_step state noise', inputs: [{ shape: [2, 4, 5, 6] }, { shape: [2, 4, 5, 6] }, { shape: [2, 4, 5, 6] }, { shape: [9], f32bits: [0.8, 1.3, -0.4, 0.9, 0.7, 0.2, 0.3, -0.15, 0.5] }, { shape: [2, 4, 5, 6] }], build: (g, [x, m, s, c, z]) => g.samplerStep(x!, m!, s!, c!, z) },
  ];
  if (big) {
    for (const [n, c, heads] of [[4096, 320, 8], [1024, 640, 8], [256, 1280, 8], [64, 1280, 8]] as const) {
      cases.push({ name: `attention self SD1.5 n=${n} d=${c / heads}`, inputs: [{ shape: [2, n, c] }, { shape: [2, n, c] }, { shape: [2, n, c] }], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads }), tolF16: 5e-3 });
      cases.push({ name: `attention cross SD1.5 n=${n} 77 keys capture`, inputs: [{ shape: [2, n, c] }, { shape: [2, 77, c] }, { shape: [2, 77, c] }], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads, capture: true }) });
    }
    cases.push({ name: 'conv2d SD1.5 3x3 320→320 64x64', inputs: [{ shape: [2, 320, 64, 64] }, { shape: [320, 320, 3, 3] }, { shape: [320] }], build: (g, [x, k, b]) => g.conv2d(x!, k!, b, { pad: 1 }) });
    cases.push({ name: 'group_norm SD1.5 32 groups + silu', inputs: [{ shape: [2, 640, 32, 32] }, { shape: [640] }, { shape: [640] }], build: (g, [x, a, b]) => g.groupNorm(x!, a!, b!, { groups: 32, eps: 1e-5, silu: true }) });
    cases.push({ name: 'linear SD1.5 geglu proj 4096x320→2560', inputs: [{ shape: [2, 4096, 320] }, w(2560, 320), { shape: [2560] }], build: (g, [x, a, b]) => g.geglu(g.linear(x!, a!, b)) });
  }
  return cases;
}
