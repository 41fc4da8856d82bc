// What an op case of the op table (test/helpers/opcases.ts) is, and how one runs: its inputs
// (seeded, never zero), its one-op graph, and a run on a backend.
import { Graph, type Value } from '../../lib/graph/graph.js';
import { Program, type BackendSpec } from '../../lib/graph/program.js';
import { Tensor, numel } from '../../lib/tensor.js';

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
  /** values as after GroupNorm + SiLU (mostly positive, mean well above 0): the Winograd
   * transforms cancel less kindly on these than on zero-mean data */
  siluLike?: boolean;
  /** elements set after the random draw: [index, value] (NaN, ±Infinity, ±200) */
  set?: [number, number][];
}

export type Data = Float32Array | Int32Array;

export interface OpCase {
  name: string;
  inputs: InputSpec[];
  build: (g: Graph, x: Value[]) => Value | Value[];
  /** naive float64 reference of every output, from the inputs (the CPU forward check); where the
   * reference is NaN or ±inf the output must be the same non-finite value, elsewhere finite */
  ref?: (x: Data[]) => Float64Array[];
  /** the reference of output `out` at its flat indices `idx` only: cases too big for a full float64
   * reference compare `samples` seeded random indices per output (first and last included) */
  refAt?: (x: Data[], out: number, idx: number[]) => Float64Array;
  samples?: number;
  /** building or running the case must throw IdforgeError with this code (E_SHAPE, E_ARGUMENT) */
  error?: string;
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
  /** SD 1.5 and kernel-path shapes (CPU microkernel edges, Winograd tiles, CUDA kernel choices):
   * checked forward on every backend, left out of the finite-difference mode and of the default
   * perf listing */
  stress?: boolean;
  /** inputs hold NaN / ±inf on purpose: CPU forward mode only (the CUDA kernels are built with
   * fast math and are not held to IEEE special values) */
  special?: boolean;
}

// 2^16 standard normals (Box–Muller on a fixed xorshift stream), made once: inputs draw from them
// at seeded random positions. The table's inputs reach ~30M elements (SD 1.5 weights) and ~400M in
// all, where a normal generator per element (lib/sched/random) would take most of the run.
let normals: Float32Array | undefined;
function normalTable(): Float32Array {
  if (normals) return normals;
  normals = new Float32Array(1 << 16);
  let u = 0x9e3779b9;
  const next = () => {
    u ^= u << 13;
    u ^= u >>> 17;
    u ^= u << 5;
    return ((u >>> 0) + 0.5) / 4294967296;  // (0, 1)
  };
  for (let i = 0; i < normals.length; i += 2) {
    const m = Math.sqrt(-2 * Math.log(next())), th = 2 * Math.PI * next();
    normals[i] = m * Math.cos(th);
    normals[i + 1] = m * Math.sin(th);
  }
  return normals;
}

/** n seeded standard-normal values (drawn from the shared table by an xorshift stream of the seed). */
export function fastRandn(seed: number, n: number): Float32Array {
  const t = normalTable();
  let u = Math.imul(seed | 0, 0x9e3779b1) ^ 0x6d2b79f5 || 1;
  const r = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    u ^= u << 13;
    u ^= u >>> 17;
    u ^= u << 5;
    r[i] = t[(u >>> 8) & 0xffff]!;
  }
  return r;
}

/** Random data that is never zero: |x| ≥ 0.05. */
export function nonZeroRandom(seed: number, n: number, scale = 1): Float32Array {
  const r = fastRandn(seed, n);
  const lo = 0.05 * scale;
  for (let i = 0; i < n; i++) {
    const v = r[i]! * scale;
    r[i] = v > -lo && v < lo ? (v < 0 ? -lo : lo) : v;
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

// The last few big float inputs made (keyed by their spec and seed): the fused-operand variants
// of a shape, and a case's CUDA and CPU runs, share theirs.
const bigInputs = new Map<string, Float32Array>();

export function makeInputs(c: OpCase, seed: number, half = false): Data[] {
  const all = c.inputs.map((s, i) => {
    const key = numel(s.shape) >= 1 << 20 && !s.int && !s.data && !s.f32bits ? JSON.stringify([seed * 31 + i, s]) : '';
    const hit = key ? bigInputs.get(key) : undefined;
    if (hit) return hit;
    const d = makeInput(s, seed * 31 + i);
    if (key) {
      bigInputs.set(key, d as Float32Array);
      if (bigInputs.size > 6) bigInputs.delete(bigInputs.keys().next().value!);
    }
    return d;
  });
  return half ? all.map((d) => (d instanceof Float32Array ? d.map(roundHalf) : d)) : all;
}

/** One input's data (seed: the case's seed mixed with the input's position). */
function makeInput(s: InputSpec, seed: number): Data {
  const n = numel(s.shape);
  if (s.f32bits) return new Int32Array(Float32Array.from(s.f32bits).buffer);
  if (s.int) {
    if (s.data) return Int32Array.from(s.data);
    const [lo, hi] = s.int;
    return Int32Array.from(fastRandn(seed, n), (v) => lo + (Math.floor(Math.abs(v) * 1e6) % (hi - lo)));
  }
  if (s.data) return Float32Array.from(s.data);
  let d = nonZeroRandom(seed, n, s.amp ?? 1);
  if (s.positive) d = d.map((v) => Math.abs(v) * 500);
  if (s.offset) d = d.map((v) => v + s.offset!);
  if (s.siluLike) d = d.map((v) => (2 * v) / (1 + Math.exp(-2 * v)) + 0.3);
  for (const [k, v] of s.set ?? []) d[k] = v;
  return d;
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
export async function runCase(c: OpCase, be: BackendSpec, half = false, data = makeInputs(c, 1, half)): Promise<Float32Array[]> {
  const { g } = caseGraph(c);
  const p = new Program(g, be);
  try {
    return await runOn(p, data, c.inputs, be);
  } finally {
    p.dispose();
  }
}

