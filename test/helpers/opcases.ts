// THE op table (in the spirit of ggml's test-backend-ops): one list of single-op cases (shapes,
// attributes, odd sizes) on random, never-zero inputs, driving every mode:
//   forward  CPU vs a naive float64 reference (test/helpers/opref.ts)    test/ops.test.ts
//   grad     autodiff vs finite differences, every op with a backward rule  test/ops.test.ts
//   cuda     CUDA (fp32, fp16) vs CPU, forward and gradients              test/ops-cuda.test.ts
//   perf     a timing listing of the cases on each backend               test/helpers/ops-perf.ts
// Adding an op: its builder (lib/graph/graph.ts), cases here, the CPU op, the CUDA kernel and the
// autodiff rule. The CPU backend's kernel paths (Winograd tiles, microkernel edges, sampled SD 1.5
// shapes) keep their own C++ stress checks (test/native/cpu_ops_test.cc), and the CUDA kernel
// paths that only a native call can force (and the stream stress) theirs (cuda_ops_test.cu).
import { Graph, type Value } from '../../lib/graph/graph.js';
import { Program, type BackendSpec } from '../../lib/graph/program.js';
import { randn } from '../../lib/sched/random.js';
import { Tensor, numel } from '../../lib/tensor.js';
import * as R from './opref.js';

export interface InputSpec {
  shape: number[];
  /** int inputs: values drawn in [lo, hi) */
  int?: [number, number];
  /** fixed values (ints for int inputs) */
  data?: number[];
  /** keep values positive (e.g. timesteps) */
  positive?: boolean;
  /** an int32 input holding the bits of these float32 values (SAMPLER_STEP's coefficients) */
  f32bits?: number[];
  /** magnitude (default 1) and offset of the random values */
  amp?: number;
  offset?: number;
}

type Data = Float32Array | Int32Array;

export interface OpCase {
  name: string;
  inputs: InputSpec[];
  build: (g: Graph, x: Value[]) => Value | Value[];
  /** naive float64 reference of every output, from the inputs (the CPU forward check) */
  ref?: (x: Data[]) => Float64Array[];
  /** CPU vs reference tolerance (relative L2; default 1e-5) */
  tol?: number;
  /** inputs the gradient check differentiates (absent: no backward rule, or a backward op itself) */
  grad?: number[];
  /** why a case of a differentiable op has no gradient check */
  noGrad?: string;
  /** finite-difference tolerance (|fd − ad| / max|ad|, default 2e-2) */
  gradTol?: number;
  /** fp16 CUDA vs CPU tolerance (default 2e-3) */
  tolF16?: number;
  /** the op computes in float32 only (ADAM_STEP: training runs in float32): no float16 mode */
  float32Only?: boolean;
  /** CUDA modes only: SD 1.5 / kernel-path shapes (the CPU side of those is cpu_ops_test.cc's) */
  gpu?: boolean;
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

/** v rounded to the nearest float16 (the CUDA float16 mode gives the CPU reference the same inputs). */
export function roundHalf(v: number): number {
  const a = Math.abs(v);
  if (!Number.isFinite(v) || a === 0) return v;
  if (a >= 65520) return Math.sign(v) * Infinity;
  const step = a < 2 ** -14 ? 2 ** -24 : 2 ** (Math.floor(Math.log2(a)) - 10);
  return Math.sign(v) * Math.round(a / step) * step;
}

export function makeInputs(c: OpCase, seed: number, half = false): Data[] {
  const all = c.inputs.map((s, i) => {
    const n = numel(s.shape);
    if (s.f32bits) return new Int32Array(Float32Array.from(s.f32bits).buffer);
    if (s.int) {
      if (s.data) return Int32Array.from(s.data);
      const r = randn(seed * 31 + i, n);
      const [lo, hi] = s.int;
      return Int32Array.from(r, (v) => lo + (Math.floor(Math.abs(v) * 1e6) % (hi - lo)));
    }
    if (s.data) return Float32Array.from(s.data);
    const d = nonZeroRandom(seed * 31 + i, n, s.amp ?? 1);
    if (s.positive) return d.map((v) => Math.abs(v) * 500);
    return s.offset ? d.map((v) => v + s.offset!) : d;
  });
  return half ? all.map((d) => (d instanceof Float32Array ? d.map(roundHalf) : d)) : all;
}

export const tensorOf = (d: Data, s: InputSpec, be: BackendSpec): Tensor =>
  d instanceof Int32Array ? Tensor.from(d, s.shape, { device: be.device }) : Tensor.from(d, s.shape, { dtype: be.dtype, device: be.device });

/** Runs a program on host data and returns every output as float32. */
export async function runOn(p: Program, data: Data[], specs: InputSpec[], be: BackendSpec): Promise<Float32Array[]> {
  const ins = data.map((d, i) => tensorOf(d, specs[i]!, be));
  try {
    const outs = await p.run(ins);
    const r = outs.map((o) => o.toFloat32());
    for (const o of outs) o.dispose();
    return r;
  } finally {
    for (const t of ins) t.dispose();
  }
}

/** The case's graph: one input per spec, its outputs marked. */
export function caseGraph(c: OpCase): { g: Graph; ins: Value[]; outs: Value[] } {
  const g = new Graph();
  const ins = c.inputs.map((s) => g.input(s.shape, s.int || s.f32bits ? 'int32' : 'float'));
  const o = c.build(g, ins);
  const outs = Array.isArray(o) ? o : [o];
  for (const v of outs) g.output(v);
  return { g, ins, outs };
}

/** Runs one op case on a backend and returns every output as float32 (half: inputs rounded to float16). */
export async function runCase(c: OpCase, be: BackendSpec, half = false): Promise<Float32Array[]> {
  const { g } = caseGraph(c);
  const p = new Program(g, be);
  try {
    return await runOn(p, makeInputs(c, 1, half), c.inputs, be);
  } finally {
    p.dispose();
  }
}

// ---- case makers: one per op family, each with its reference and differentiable inputs ---------

const S = (s: readonly number[]) => `[${s.join(',')}]`;
const f = (d: Data): Float32Array => d as Float32Array;

function linearCase(xs: number[], n: number, o: { bias?: boolean; res?: boolean; trans?: 'transX' | 'transY'; wAmp?: number; gpu?: boolean } = {}): OpCase {
  const k = o.trans === 'transX' ? xs[1]! : xs[xs.length - 1]!;
  const ys = o.trans === 'transX' ? [xs[0]!, xs[2]!, n] : o.trans === 'transY' ? [xs[0]!, n, xs[1]!] : [...xs.slice(0, -1), n];
  const inputs: InputSpec[] = [{ shape: xs }, { shape: [n, k], amp: o.wAmp }];
  const bi = o.bias ? inputs.push({ shape: [n] }) - 1 : -1;
  const ri = o.res ? inputs.push({ shape: ys }) - 1 : -1;
  return {
    name: `linear x${S(xs)} w[${n},${k}]${o.bias ? ' +b' : ''}${o.res ? ' +res' : ''}${o.trans ? ` ${o.trans}` : ''}`,
    inputs,
    build: (g, x) => g.linear(x[0]!, x[1]!, bi >= 0 ? x[bi] : undefined, { residual: ri >= 0 ? x[ri] : undefined, transX: o.trans === 'transX', transY: o.trans === 'transY' }),
    ref: (x) => [R.linear(f(x[0]!), xs, f(x[1]!), [n, k], bi >= 0 ? f(x[bi]!) : undefined, ri >= 0 ? f(x[ri]!) : undefined, o.trans ?? 'plain')],
    grad: [0, ...(k > 0 ? [1] : []), ...(bi >= 0 ? [bi] : []), ...(ri >= 0 ? [ri] : [])],
    gpu: o.gpu,
  };
}

function matmulCase(as: number[], bs: number[], transB = false, gpu = false): OpCase {
  return {
    name: `matmul a${S(as)}·b${S(bs)}${transB ? 'ᵀ' : ''}`,
    inputs: [{ shape: as }, { shape: bs }],
    build: (g, [a, b]) => (as.length === 3 && bs.length === 3 && as[0] === bs[0] ? g.matmul(a!, b!, { transB }) : g.op('matmul', [a!, b!], [[...as.slice(0, -1), transB ? bs[bs.length - 2]! : bs[bs.length - 1]!]], transB ? { transB } : undefined)[0]!),
    ref: (x) => [R.matmul(f(x[0]!), as, f(x[1]!), bs, transB)],
    ...(as.length === 3 && bs.length === 3 && bs[0] === as[0] ? { grad: [0, 1] } : { noGrad: 'a form only the backward of linear emits' }),
    gpu,
  };
}

/** bias: 0 none, 1 per channel [O], 2 per image [B, O]. */
function convCase(xs: number[], ws: number[], stride: number, pad: number, bias: 0 | 1 | 2, res = false, gpu = false): OpCase {
  const [B, , H, W] = xs as [number, number, number, number];
  const [O, C, kh, kw] = ws as [number, number, number, number];
  const ys = [B, O, Math.floor((H + 2 * pad - kh) / stride) + 1, Math.floor((W + 2 * pad - kw) / stride) + 1];
  const inputs: InputSpec[] = [{ shape: xs }, { shape: ws, amp: 1 / Math.sqrt(C * kh * kw) }];
  const bi = bias ? inputs.push({ shape: bias === 2 ? [B, O] : [O] }) - 1 : -1;
  const ri = res ? inputs.push({ shape: ys }) - 1 : -1;
  return {
    name: `conv2d x${S(xs)} w${S(ws)} s${stride} p${pad}${bias === 1 ? ' +b' : bias === 2 ? ' +b[B,O]' : ''}${res ? ' +res' : ''}`,
    inputs,
    build: (g, x) => g.conv2d(x[0]!, x[1]!, bi >= 0 ? x[bi] : undefined, { stride, pad, residual: ri >= 0 ? x[ri] : undefined }),
    ref: (x) => [R.conv2d(f(x[0]!), xs, f(x[1]!), ws, stride, pad, bi >= 0 ? f(x[bi]!) : undefined, bias === 2, ri >= 0 ? f(x[ri]!) : undefined)],
    // The weight's gradient exists for non-overlapping kernels (the ViT patch embedding, 1x1).
    grad: [0, ...(kh === stride && kw === stride && pad === 0 ? [1] : []), ...(bi >= 0 ? [bi] : []), ...(ri >= 0 ? [ri] : [])],
    gpu,
  };
}

function groupNormCase(xs: number[], groups: number, eps: number, silu: boolean, offset = 0, gpu = false): OpCase {
  return {
    name: `group_norm x${S(xs)} G${groups} eps ${eps}${silu ? ' +silu' : ''}${offset ? ` offset ${offset}` : ''}`,
    inputs: [{ shape: xs, offset }, { shape: [xs[1]!] }, { shape: [xs[1]!] }],
    build: (g, [x, w, b]) => g.groupNorm(x!, w!, b!, { groups, eps, silu }),
    ref: (x) => [R.groupNorm(f(x[0]!), xs, f(x[1]!), f(x[2]!), groups, eps, silu)],
    grad: [0],
    gpu,
  };
}

function layerNormCase(xs: number[], offset = 0, gpu = false): OpCase {
  const c = xs[xs.length - 1]!;
  return {
    name: `layer_norm x${S(xs)}${offset ? ` offset ${offset}` : ''}`,
    inputs: [{ shape: xs, offset }, { shape: [c] }, { shape: [c] }],
    build: (g, [x, w, b]) => g.layerNorm(x!, w!, b!, { eps: 1e-5 }),
    ref: (x) => [R.layerNorm(f(x[0]!), xs, f(x[1]!), f(x[2]!), 1e-5)],
    grad: [0, 1, 2],
    gpu,
  };
}

function attentionCase(b: number, heads: number, nq: number, nk: number, d: number, dv: number, o: { causal?: boolean; capture?: boolean; gpu?: boolean; tolF16?: number; probsOnly?: boolean } = {}): OpCase {
  const qs = [b, nq, heads * d], ks = [b, nk, heads * d], vs = [b, nk, heads * dv];
  const causal = !!o.causal, capture = !!o.capture || !!o.probsOnly;
  return {
    name: `attention q${S(qs)} k${S(ks)} v${S(vs)} H${heads}${causal ? ' causal' : ''}${capture ? ' capture' : ''}${o.probsOnly ? ' (probabilities only)' : ''}`,
    inputs: [{ shape: qs }, { shape: ks }, { shape: vs }],
    build: (g, [q, k, v]) => {
      if (!capture) return g.attention(q!, k!, v!, { heads, causal });
      const r = g.attention(q!, k!, v!, { heads, causal, capture: true });
      return o.probsOnly ? r[1] : r;
    },
    ref: (x) => {
      const r = R.attention(f(x[0]!), qs, f(x[1]!), ks, f(x[2]!), vs, heads, undefined, causal, capture);
      return o.probsOnly ? [r[1]!] : r;
    },
    grad: o.probsOnly ? [0, 1] : [0, 1, 2],
    gpu: o.gpu,
    tolF16: o.tolF16,
  };
}

function unaryCase(op: 'gelu' | 'quick_gelu' | 'silu', s: number[], amp = 1, gpu = false): OpCase {
  const build = { gelu: (g: Graph, x: Value) => g.gelu(x), quick_gelu: (g: Graph, x: Value) => g.quickGelu(x), silu: (g: Graph, x: Value) => g.silu(x) }[op];
  return { name: `${op} x${S(s)}${amp !== 1 ? ` ·${amp}` : ''}`, inputs: [{ shape: s, amp }], build: (g, [x]) => build(g, x!), ref: (x) => [R.map(x[0]!, R.unary[op])], grad: [0], gpu };
}

function gegluCase(s: number[], amp = 1, gpu = false): OpCase {
  return { name: `geglu x${S(s)}`, inputs: [{ shape: s, amp }], build: (g, [x]) => g.geglu(x!), ref: (x) => [R.geglu(x[0]!, s)], grad: [0], gpu };
}

function binaryCase(op: 'add' | 'mul', as: number[], bs: number[], gpu = false): OpCase {
  return {
    name: `${op} ${S(as)}, ${S(bs)}`,
    inputs: [{ shape: as }, { shape: bs }],
    build: (g, [a, b]) => (op === 'add' ? g.add(a!, b!) : g.mul(a!, b!)),
    ref: (x) => [R.broadcast(x[0]!, as, x[1]!, bs, op === 'add' ? (p, q) => p + q : (p, q) => p * q)],
    grad: [0, 1],
    gpu,
  };
}

/** A backend op by name with explicit output shapes (the backward ops): CUDA vs CPU only. */
function rawCase(name: string, op: string, inputs: InputSpec[], outs: number[][], attrs?: Record<string, number | boolean>): OpCase {
  return { name, inputs, build: (g, x) => g.op(op, x, outs, attrs), gpu: true };
}

const ids = (shape: number[], gen: (k: number) => number): InputSpec => ({ shape, int: [-1, 1 << 30], data: Array.from({ length: numel(shape) }, (_, k) => gen(k)) });

/** Every case; modes filter (`gpu` ones run in the CUDA modes only). */
export function opCases(): OpCase[] {
  const cases: OpCase[] = [
    // ---- GEMM family
    linearCase([3, 5, 7], 9, { bias: true }),
    linearCase([13, 33], 17),
    linearCase([2, 3, 6], 5, { bias: true, res: true }),
    linearCase([1, 1, 9], 5, { res: true }),  // one row: a bias-sized residual, explicit since #11
    linearCase([2, 24, 35], 17, { bias: true, res: true, trans: 'transX' }),
    linearCase([1, 8, 5], 3, { trans: 'transX' }),
    linearCase([2, 35, 24], 17, { bias: true, res: true, trans: 'transY' }),
    linearCase([2, 4, 6], 9, { res: true, trans: 'transY' }),
    linearCase([2, 3, 0], 4, { bias: true, res: true }),  // K = 0: the epilogue alone
    matmulCase([2, 5, 7], [2, 7, 3]),
    matmulCase([2, 5, 7], [2, 3, 7], true),
    matmulCase([2, 3, 4], [2, 4, 5]),
    matmulCase([3, 9, 6], [4, 6], true),
    convCase([2, 5, 7, 9], [6, 5, 3, 3], 1, 1, 1),
    convCase([1, 4, 8, 10], [3, 4, 3, 3], 2, 1, 1),
    convCase([1, 4, 9, 9], [3, 4, 3, 3], 2, 0, 0),
    convCase([2, 6, 5, 3], [4, 6, 1, 1], 1, 0, 1),
    convCase([1, 3, 32, 48], [8, 3, 16, 16], 16, 0, 0),
    convCase([2, 3, 5, 6], [4, 3, 3, 3], 1, 1, 2, true),
    convCase([1, 4, 1, 1], [6, 4, 1, 1], 1, 0, 0, true),  // one-pixel output: a bias-sized residual
    // ---- norms
    groupNormCase([2, 12, 5, 3], 6, 1e-5, false),
    groupNormCase([2, 8, 7, 7], 4, 1e-6, true),
    groupNormCase([2, 4, 3, 3], 2, 1e-5, true, 3),
    groupNormCase([2, 6, 5, 3], 3, 1e-5, false),
    layerNormCase([3, 7, 33]),
    layerNormCase([2, 3, 8], 0.5),
    layerNormCase([3, 5, 7], 0.5),
    // ---- attention
    attentionCase(2, 4, 37, 37, 8, 8),
    attentionCase(2, 4, 77, 77, 8, 8, { causal: true }),
    attentionCase(2, 8, 50, 77, 4, 4, { capture: true }),
    attentionCase(1, 3, 9, 11, 4, 2),
    attentionCase(1, 2, 70, 9, 4, 2, { capture: true }),
    attentionCase(1, 2, 4, 9, 4, 4, { probsOnly: true }),
    // ---- elementwise
    gegluCase([2, 5, 14]),
    unaryCase('gelu', [3, 17], 3),
    unaryCase('quick_gelu', [3, 17], 3),
    unaryCase('silu', [3, 17], 3),
    binaryCase('add', [2, 3, 4, 5], [2, 3, 1, 1]),
    binaryCase('add', [2, 7, 5], [7, 5]),
    binaryCase('add', [2, 3, 4], [4]),
    binaryCase('mul', [4, 9], [4, 9]),
    binaryCase('mul', [2, 3, 4], [1, 3, 1]),
    { name: 'scale ·−0.7 + 0.3', inputs: [{ shape: [5, 6] }], build: (g, [x]) => g.scale(x!, -0.7, 0.3), ref: (x) => [R.map(x[0]!, (v) => v * -0.7 + 0.3)], grad: [0] },
    // ---- layout
    { name: 'upsample2x [2,3,5,7]', inputs: [{ shape: [2, 3, 5, 7] }], build: (g, [x]) => g.upsample2x(x!), ref: (x) => [R.upsample2x(x[0]!, [2, 3, 5, 7])], grad: [0] },
    { name: 'concat axis 1', inputs: [{ shape: [2, 3, 4, 5] }, { shape: [2, 6, 4, 5] }], build: (g, [a, b]) => g.concat([a!, b!], 1), ref: (x) => [R.concat(x, [[2, 3, 4, 5], [2, 6, 4, 5]], 1)], grad: [0, 1] },
    { name: 'concat axis 0', inputs: [{ shape: [1, 3, 4] }, { shape: [2, 3, 4] }], build: (g, [a, b]) => g.concat([a!, b!], 0), ref: (x) => [R.concat(x, [[1, 3, 4], [2, 3, 4]], 0)], grad: [0, 1] },
    { name: 'permute 0231', inputs: [{ shape: [2, 3, 4, 5] }], build: (g, [x]) => g.permute(x!, [0, 2, 3, 1]), ref: (x) => [R.permute(x[0]!, [2, 3, 4, 5], [0, 2, 3, 1])], grad: [0] },
    { name: 'permute 201 + reshape', inputs: [{ shape: [2, 3, 4] }], build: (g, [x]) => g.reshape(g.permute(x!, [2, 0, 1]), [4, 6]), ref: (x) => [R.permute(x[0]!, [2, 3, 4], [2, 0, 1])], grad: [0] },
    { name: 'reshape [2,3,4]→[6,4]', inputs: [{ shape: [2, 3, 4] }], build: (g, [x]) => g.reshape(x!, [6, 4]), ref: (x) => [R.map(x[0]!, (v) => v)], grad: [0] },
    { name: 'slice axis 1 2:7', inputs: [{ shape: [2, 8, 3] }], build: (g, [x]) => g.slice(x!, 1, 2, 7), ref: (x) => [R.slice(x[0]!, [2, 8, 3], 1, 2, 7)], grad: [0] },
    { name: 'reduce_sum [2,3,4]→[3,1]', inputs: [{ shape: [2, 3, 4] }], build: (g, [x]) => g.reduceSum(x!, [3, 1]), ref: (x) => [R.reduceSum(x[0]!, [2, 3, 4], [3, 1])], grad: [0] },
    // ---- misc (no backward rule except inject)
    { name: 'timestep_emb dim 32 flip', inputs: [{ shape: [3], positive: true }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 32, flip: true, shift: 0 }), ref: (x) => [R.timestepEmb(x[0]!, 32, true, 0)] },
    { name: 'timestep_emb dim 9 shift 1 (odd)', inputs: [{ shape: [2], positive: true }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 9, flip: false, shift: 1 }), ref: (x) => [R.timestepEmb(x[0]!, 9, false, 1)] },
    { name: 'embedding ids[2,7] table[50,6]', inputs: [{ shape: [2, 7], int: [0, 50] }, { shape: [50, 6] }], build: (g, [i, tb]) => g.embedding(i!, tb!), ref: (x) => [R.embedding(x[0]!, x[1]!, 6)] },
    { name: 'inject x[2,7,6] vectors[3,6]', inputs: [{ shape: [2, 7, 6] }, { shape: [2, 7], int: [-1, 3] }, { shape: [3, 6] }], build: (g, [x, s, v]) => g.inject(x!, s!, v!), ref: (x) => [R.inject(x[0]!, x[1]!, x[2]!, 6)], grad: [0, 2] },
    { name: 'cfg [4,3,5] 7.5', inputs: [{ shape: [4, 3, 5] }], build: (g, [e]) => g.cfg(e!, 7.5), ref: (x) => [R.cfg(x[0]!, 7.5)] },
    { name: 'sampler_step state noise clip', inputs: [{ shape: [2, 4, 5, 6] }, { shape: [2, 4, 5, 6] }, { shape: [2, 4, 5, 6] }, { shape: [9], f32bits: [0.8, 1.3, -0.4, 0.9, 0.7, 0.2, 0.3, -0.15, 0.5] }, { shape: [2, 4, 5, 6] }], build: (g, [x, m, st, c, z]) => g.samplerStep(x!, m!, st!, c!, z), ref: (x) => R.samplerStep(x[0]!, x[1]!, x[2]!, x[3] as Int32Array, x[4]) },
    { name: 'sampler_step no noise, no clip', inputs: [{ shape: [1, 4, 5, 6] }, { shape: [1, 4, 5, 6] }, { shape: [1, 4, 5, 6] }, { shape: [9], f32bits: [1, 1.2, -0.5, 0, 0.6, 0.3, 0.2, 0, 0] }], build: (g, [x, m, st, c]) => g.samplerStep(x!, m!, st!, c!), ref: (x) => R.samplerStep(x[0]!, x[1]!, x[2]!, x[3] as Int32Array, undefined) },
    // ---- optimizer update (float32 only)
    { name: 'adam_step clipped by the global norm', inputs: [{ shape: [3, 5, 7] }, { shape: [3, 5, 7] }, { shape: [3, 5, 7], amp: 0.1 }, { shape: [3, 5, 7], positive: true, amp: 2e-5 }, { shape: [8], f32bits: [1e-3, 0.9, 0.999, 1e-8, 1 - 0.9 ** 3, 1 - 0.999 ** 3, 1, 0] }, { shape: [1], data: [37.5] }], build: (g, [p, gr, m, v, c, q]) => g.adamStep(p!, gr!, m!, v!, c!, q), ref: (x) => R.adamStep(x[0]!, x[1]!, x[2]!, x[3]!, x[4] as Int32Array, x[5]), float32Only: true },
    { name: 'adam_step unclipped, first step', inputs: [{ shape: [257] }, { shape: [257], amp: 0.01 }, { shape: [257], data: new Array(257).fill(0) }, { shape: [257], data: new Array(257).fill(0) }, { shape: [8], f32bits: [0.05, 0.8, 0.99, 1e-6, 0.2, 0.01, 0, 0] }], build: (g, [p, gr, m, v, c]) => g.adamStep(p!, gr!, m!, v!, c!), ref: (x) => R.adamStep(x[0]!, x[1]!, x[2]!, x[3]!, x[4] as Int32Array, undefined), float32Only: true },
    { name: 'adam_step non-finite norm: nothing changes', inputs: [{ shape: [4, 9] }, { shape: [4, 9] }, { shape: [4, 9] }, { shape: [4, 9], positive: true, amp: 2e-5 }, { shape: [8], f32bits: [1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 1, 0] }, { shape: [1], data: [NaN] }], build: (g, [p, gr, m, v, c, q]) => g.adamStep(p!, gr!, m!, v!, c!, q), ref: (x) => R.adamStep(x[0]!, x[1]!, x[2]!, x[3]!, x[4] as Int32Array, x[5]), float32Only: true },
  ];
  return [...cases, ...gpuCases()];
}

/** SD 1.5 shapes and the shapes that pick each CUDA kernel path (was cuda_ops_test.cu's list). */
function gpuCases(): OpCase[] {
  const cs: OpCase[] = [
    linearCase([2, 77, 768], 320, { bias: true, wAmp: 0.05, gpu: true }),
    linearCase([1, 256, 640], 5120, { bias: true, wAmp: 0.05, gpu: true }),
    linearCase([2, 4096, 320], 2560, { bias: true, wAmp: 0.05, gpu: true }),
    linearCase([2, 77, 768], 320, { bias: true, res: true, wAmp: 0.05, gpu: true }),
    linearCase([3, 7, 13], 5, { res: true, gpu: true }),
    linearCase([1, 256, 640], 5120, { bias: true, res: true, wAmp: 0.05, gpu: true }),
    linearCase([2, 320, 4096], 320, { bias: true, trans: 'transX', wAmp: 0.05, gpu: true }),
    linearCase([3, 13, 7], 5, { trans: 'transX', gpu: true }),
    linearCase([2, 1024, 640], 640, { bias: true, res: true, trans: 'transY', wAmp: 0.05, gpu: true }),
    linearCase([2, 7, 13], 5, { res: true, trans: 'transY', gpu: true }),
    linearCase([1, 1, 8], 6, { bias: true, trans: 'transY', gpu: true }),
    linearCase([2, 96, 200], 40, { bias: true, res: true, trans: 'transX', wAmp: 0.1, gpu: true }),
    linearCase([2, 200, 96], 40, { bias: true, trans: 'transY', wAmp: 0.1, gpu: true }),
    linearCase([2, 3, 0], 4, { bias: true, gpu: true }),  // K = 0: the epilogue alone
    linearCase([2, 3, 0], 4, { res: true, trans: 'transY', gpu: true }),
    matmulCase([4, 33, 17], [4, 17, 29], false, true),
    matmulCase([2, 64, 40], [2, 50, 40], true, true),
    matmulCase([3, 16, 8], [1, 8, 12], false, true),
    matmulCase([2, 77, 320], [320, 768], false, true),
    matmulCase([5, 7], [7, 3], false, true),
    convCase([1, 320, 32, 32], [320, 320, 3, 3], 1, 1, 1, false, true),
    convCase([2, 64, 17, 17], [64, 64, 3, 3], 2, 1, 0, false, true),
    convCase([2, 640, 16, 16], [320, 640, 1, 1], 1, 0, 1, false, true),
    convCase([2, 4, 64, 64], [320, 4, 3, 3], 1, 1, 1, false, true),
    convCase([2, 4, 8, 8], [8, 4, 3, 3], 1, 1, 1, false, true),
    convCase([1, 3, 224, 224], [64, 3, 16, 16], 16, 0, 1, false, true),
    convCase([2, 320, 64, 64], [320, 320, 3, 3], 1, 1, 1, false, true),
    convCase([2, 640, 16, 16], [320, 640, 1, 1], 1, 0, 2, true, true),
    convCase([2, 320, 16, 16], [320, 320, 1, 1], 1, 0, 0, true, true),
    convCase([1, 320, 32, 32], [320, 320, 3, 3], 1, 1, 0, true, true),
    convCase([2, 320, 16, 16], [320, 320, 3, 3], 1, 1, 2, false, true),
    convCase([2, 320, 16, 16], [320, 320, 3, 3], 1, 1, 2, true, true),
    convCase([2, 64, 16, 16], [64, 64, 3, 3], 1, 1, 1, true, true),
    convCase([2, 64, 17, 17], [64, 64, 3, 3], 2, 1, 1, true, true),
    convCase([2, 8, 3, 3], [16, 8, 3, 3], 1, 0, 2, true, true),
    // The im2col scratch budget (256 MiB) split into pixel ranges of one image, and into images.
    convCase([1, 128, 256, 256], [32, 128, 3, 3], 1, 1, 1, true, true),
    convCase([3, 128, 192, 192], [16, 128, 3, 3], 1, 1, 2, true, true),
    groupNormCase([2, 320, 32, 32], 32, 1e-5, true, 0, true),
    groupNormCase([2, 640, 16, 16], 32, 1e-6, false, 0, true),
    groupNormCase([1, 128, 64, 64], 32, 1e-6, true, 3, true),
    groupNormCase([2, 640, 32, 32], 32, 1e-5, true, 0, true),
    groupNormCase([2, 1280], 32, 1e-5, true, 0, true),
    layerNormCase([2, 1024, 320], 0.5, true),
    layerNormCase([2, 77, 768], 0.5, true),
    attentionCase(1, 8, 4096, 4096, 40, 40, { gpu: true }),
    attentionCase(2, 8, 1024, 1024, 80, 80, { gpu: true }),
    attentionCase(2, 8, 256, 256, 160, 160, { gpu: true }),
    attentionCase(2, 8, 64, 64, 160, 160, { gpu: true }),
    attentionCase(2, 12, 77, 77, 64, 64, { causal: true, gpu: true }),
    attentionCase(1, 8, 4096, 77, 40, 40, { capture: true, gpu: true }),
    attentionCase(2, 8, 1024, 77, 80, 80, { capture: true, gpu: true }),
    attentionCase(2, 8, 64, 77, 160, 160, { capture: true, gpu: true }),
    attentionCase(1, 2, 1000, 1000, 64, 64, { causal: true, capture: true, gpu: true }),
    attentionCase(2, 12, 1000, 1000, 40, 40, { causal: true, gpu: true }),
    attentionCase(2, 8, 2048, 2048, 160, 160, { gpu: true }),
    attentionCase(2, 8, 2000, 2000, 40, 40, { capture: true, gpu: true }),
    attentionCase(2, 8, 2000, 2000, 80, 80, { capture: true, gpu: true }),
    attentionCase(2, 2, 64, 77, 4, 4, { gpu: true }),
    attentionCase(2, 2, 64, 64, 8, 8, { capture: true, gpu: true }),
    attentionCase(2, 4, 197, 197, 16, 16, { capture: true, gpu: true }),
    attentionCase(2, 3, 100, 33, 40, 40, { causal: true, gpu: true }),
    attentionCase(1, 2, 50, 70, 24, 40, { gpu: true }),
    attentionCase(1, 1, 1024, 1024, 512, 512, { gpu: true }),
    gegluCase([2, 256, 2560], 3, true),
    gegluCase([3, 5, 6], 3, true),
    unaryCase('gelu', [1001], 4, true),
    unaryCase('gelu', [2, 77, 3072], 4, true),
    unaryCase('quick_gelu', [2, 77, 3072], 4, true),
    unaryCase('silu', [2, 320, 64, 64], 4, true),
    unaryCase('silu', [7, 3], 4, true),
    binaryCase('add', [2, 320, 32, 32], [2, 320, 32, 32], true),
    binaryCase('add', [2, 320, 32, 32], [2, 320, 1, 1], true),
    binaryCase('add', [2, 1024, 320], [320], true),
    binaryCase('mul', [3, 1, 5], [4, 1], true),
    binaryCase('mul', [2, 3, 1, 5], [1, 3, 4, 1], true),
    binaryCase('add', [4, 6], [1], true),
    { name: 'cfg [4,4,64,64] 7.5', inputs: [{ shape: [4, 4, 64, 64] }], build: (g, [e]) => g.cfg(e!, 7.5), gpu: true },
    { name: 'sampler_step [2,4,64,64] noise', inputs: [{ shape: [2, 4, 64, 64] }, { shape: [2, 4, 64, 64] }, { shape: [2, 4, 64, 64] }, { shape: [9], f32bits: [0.8, 1.3, -0.4, 0.9, 0.7, 0.2, 0.3, -0.15, 0.5] }, { shape: [2, 4, 64, 64] }], build: (g, [x, m, st, c, z]) => g.samplerStep(x!, m!, st!, c!, z), gpu: true },
    { name: 'sampler_step [1,4,9,7] no noise', inputs: [{ shape: [1, 4, 9, 7] }, { shape: [1, 4, 9, 7] }, { shape: [1, 4, 9, 7] }, { shape: [9], f32bits: [1, 1.2, -0.5, 0, 0.6, 0.3, 0.2, 0, 0] }], build: (g, [x, m, st, c]) => g.samplerStep(x!, m!, st!, c!), gpu: true },
    { name: 'scale [5,9] ·0.18215 + 0.5', inputs: [{ shape: [5, 9] }], build: (g, [x]) => g.scale(x!, 0.18215, 0.5), gpu: true },
    { name: 'reshape [2,77,768]→[154,768]', inputs: [{ shape: [2, 77, 768] }], build: (g, [x]) => g.reshape(x!, [154, 768]), gpu: true },
    { name: 'upsample2x [2,640,16,16]', inputs: [{ shape: [2, 640, 16, 16] }], build: (g, [x]) => g.upsample2x(x!), gpu: true },
    { name: 'concat axis 1 [2,640,16,16]+[2,320,16,16]', inputs: [{ shape: [2, 640, 16, 16] }, { shape: [2, 320, 16, 16] }], build: (g, [a, b]) => g.concat([a!, b!], 1), gpu: true },
    { name: 'concat axis -1 [3,5]+[3,2]+[3,1]', inputs: [{ shape: [3, 5] }, { shape: [3, 2] }, { shape: [3, 1] }], build: (g, [a, b, c]) => g.concat([a!, b!, c!], -1), gpu: true },
    { name: 'permute 0231 [2,320,32,32]', inputs: [{ shape: [2, 320, 32, 32] }], build: (g, [x]) => g.permute(x!, [0, 2, 3, 1]), gpu: true },
    { name: 'permute 0312 [2,32,32,320]', inputs: [{ shape: [2, 32, 32, 320] }], build: (g, [x]) => g.permute(x!, [0, 3, 1, 2]), gpu: true },
    { name: 'permute 2031 [3,4,5,6]', inputs: [{ shape: [3, 4, 5, 6] }], build: (g, [x]) => g.permute(x!, [2, 0, 3, 1]), gpu: true },
    { name: 'slice axis -1 [2,77,1536] 768:1536', inputs: [{ shape: [2, 77, 1536] }], build: (g, [x]) => g.slice(x!, -1, 768, 1536), gpu: true },
    { name: 'slice axis 0 [4,3,5] 1:3', inputs: [{ shape: [4, 3, 5] }], build: (g, [x]) => g.slice(x!, 0, 1, 3), gpu: true },
    { name: 'timestep_emb dim 320 flip shift 1', inputs: [{ shape: [4], data: [999, 981, 1, 500] }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 320, flip: true, shift: 1 }), gpu: true },
    { name: 'timestep_emb dim 7 (odd)', inputs: [{ shape: [4], data: [999, 981, 1, 500] }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 7, flip: false, shift: 0 }), gpu: true },
    { name: 'embedding ids[2,77] table[1000,768]', inputs: [ids([2, 77], (k) => (k * 7919) % 1000), { shape: [1000, 768] }], build: (g, [i, tb]) => g.embedding(i!, tb!), gpu: true },
    { name: 'inject x[2,77,768] vectors[3,768]', inputs: [{ shape: [2, 77, 768] }, ids([2, 77], (k) => (k % 77 === 5 ? 0 : k % 77 === 6 ? 2 : k % 77 === 7 ? 1 : -1)), { shape: [3, 768] }], build: (g, [x, s, v]) => g.inject(x!, s!, v!), gpu: true },
  ];
  // SD 1.5's attention layers at batch 2 that the kernel-path shapes above leave out.
  cs.push(attentionCase(2, 8, 4096, 4096, 40, 40, { gpu: true, tolF16: 5e-3 }));
  cs.push(attentionCase(2, 8, 4096, 77, 40, 40, { capture: true, gpu: true }));
  cs.push(attentionCase(2, 8, 256, 77, 160, 160, { capture: true, gpu: true }));
  cs.push({ name: 'linear + geglu SD1.5 proj x[2,4096,320]→2560→1280', inputs: [{ shape: [2, 4096, 320] }, { shape: [2560, 320], amp: 0.05 }, { shape: [2560] }], build: (g, [x, w, b]) => g.geglu(g.linear(x!, w!, b)), gpu: true });
  // Backward ops at SD 1.5 and odd shapes (their CPU side is checked by the grad mode).
  for (const [op, s] of [['gelu', [2, 77, 3072]], ['gelu', [1001]], ['quick_gelu', [2, 77, 3072]], ['quick_gelu', [7, 3]], ['silu', [2, 320, 64, 64]], ['silu', [5, 3, 1]]] as const)
    cs.push(rawCase(`${op}_backward ${S(s)}`, `${op}_backward`, [{ shape: [...s], amp: 4 }, { shape: [...s] }], [[...s]]));
  cs.push(rawCase('geglu_backward [2,256,2560]', 'geglu_backward', [{ shape: [2, 256, 2560], amp: 3 }, { shape: [2, 256, 1280] }], [[2, 256, 2560]]));
  cs.push(rawCase('geglu_backward [3,5,6]', 'geglu_backward', [{ shape: [3, 5, 6], amp: 3 }, { shape: [3, 5, 3] }], [[3, 5, 6]]));
  cs.push(rawCase('upsample2x_backward [2,640,32,32]', 'upsample2x_backward', [{ shape: [2, 640, 32, 32] }], [[2, 640, 16, 16]]));
  cs.push(rawCase('upsample2x_backward [1,3,10,6]', 'upsample2x_backward', [{ shape: [1, 3, 10, 6] }], [[1, 3, 5, 3]]));
  for (const [x, o] of [[[2, 320, 32, 32], [2, 320, 1, 1]], [[2, 320, 32, 32], [320, 1, 1]], [[2, 1024, 320], [320]], [[2, 77, 768], [1, 77, 768]], [[2, 3, 4, 5], [3, 1, 5]], [[2, 4, 64, 64], [1]], [[3, 5], []], [[4, 6], [4, 6]], [[3, 40, 1, 7], [3, 1, 1, 7]]])
    cs.push(rawCase(`reduce_sum ${S(x!)}→${S(o!)}`, 'reduce_sum', [{ shape: x! }], [o!]));
  for (const [x, groups, silu, offset, eps] of [[[2, 320, 32, 32], 32, true, 0, 1e-5], [[2, 640, 16, 16], 32, false, 0, 1e-6], [[1, 256, 64, 64], 32, true, 3, 1e-6], [[2, 6, 5, 3], 3, false, 0, 1e-5], [[2, 1280], 32, true, 0, 1e-5]] as const)
    cs.push(rawCase(`group_norm_backward ${S(x)} G${groups}${silu ? ' +silu' : ''}`, 'group_norm_backward', [{ shape: [...x] }, { shape: [...x], offset }, { shape: [x[1]] }, { shape: [x[1]] }], [[...x]], { groups, silu, eps }));
  for (const x of [[2, 1024, 320], [2, 77, 768], [3, 5, 7]])
    cs.push(rawCase(`layer_norm_backward ${S(x)}`, 'layer_norm_backward', [{ shape: x }, { shape: x, offset: 0.5 }, { shape: [x[x.length - 1]!] }], [x]));
  for (const [x, w, stride, pad] of [[[1, 320, 32, 32], [320, 320, 3, 3], 1, 1], [[2, 64, 17, 17], [64, 64, 3, 3], 2, 1], [[2, 8, 16, 16], [8, 8, 3, 3], 2, 1], [[2, 640, 16, 16], [320, 640, 1, 1], 1, 0], [[2, 4, 64, 64], [320, 4, 3, 3], 1, 1], [[1, 5, 9, 7], [6, 5, 3, 2], 1, 0], [[1, 3, 224, 224], [64, 3, 16, 16], 16, 0]] as const) {
    const ho = Math.floor((x[2] + 2 * pad - w[2]) / stride) + 1, wo = Math.floor((x[3] + 2 * pad - w[3]) / stride) + 1;
    cs.push(rawCase(`conv2d_backward_input ${S(x)}←${w[0]} k${w[2]}x${w[3]} s${stride} p${pad}`, 'conv2d_backward_input', [{ shape: [x[0], w[0], ho, wo] }, { shape: [...w], amp: 1 / Math.sqrt(w[0] * w[2] * w[3]) }], [[...x]], { stride, pad }));
  }
  for (const [b, h, nq, nk, d, dv, causal, dp] of [[2, 2, 64, 64, 8, 8, false, false], [2, 8, 1024, 77, 80, 80, false, true], [2, 12, 77, 77, 64, 64, true, false], [2, 3, 100, 33, 24, 40, true, true], [2, 8, 1024, 1024, 40, 40, false, false], [1, 8, 4096, 4096, 40, 40, false, false]] as const) {
    const ins: InputSpec[] = [{ shape: [b, nq, h * d] }, { shape: [b, nk, h * d] }, { shape: [b, nk, h * dv] }, { shape: [b, nq, h * dv] }];
    if (dp) ins.push({ shape: [b * h, nq, nk] });
    cs.push(rawCase(`attention_backward q[${b},${nq},${h * d}] k/v ${nk} H${h}${causal ? ' causal' : ''}${dp ? ' +dp' : ''}`, 'attention_backward', ins, [[b, nq, h * d], [b, nk, h * d], [b, nk, h * dv]], { heads: h, scale: 1 / Math.sqrt(d), causal }));
  }
  cs.push(rawCase('inject_backward dy[2,77,768] → [3,768]', 'inject_backward', [{ shape: [2, 77, 768] }, ids([2, 77], (k) => (k % 77 === 5 ? 0 : k % 77 === 6 ? 2 : k % 77 === 7 ? 1 : k % 77 === 9 ? 2 : -1))], [[3, 768]]));
  cs.push(rawCase('inject_backward dy[1,5,3] → [4,3] (unused slot)', 'inject_backward', [{ shape: [1, 5, 3] }, ids([1, 5], (k) => (k === 0 ? 1 : k === 3 ? 0 : k === 4 ? 1 : -1))], [[4, 3]]));
  return cs;
}
