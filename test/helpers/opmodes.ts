// The modes that run the op table (test/helpers/opcases.ts): forward against the float64
// reference, gradients against finite differences, and the gradient graph on any backend (the
// CUDA mode compares it with the CPU's).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { IdforgeError } from '../../lib/errors.js';
import { grad } from '../../lib/graph/autodiff.js';
import { Graph, type Value } from '../../lib/graph/graph.js';
import { Program, type BackendSpec } from '../../lib/graph/program.js';
import { numel, Tensor } from '../../lib/tensor.js';
import { caseGraph, makeInputs, roundHalf, runCase, runOn, tensorOf, type InputSpec, type OpCase } from './opcase.js';
import { rand, rng } from './random.js';

export interface Check {
  ok: boolean;
  msg: string;
}

/** Every op of native/backend.h (lower case), read from its op list. */
export const OP_NAMES: string[] = [...fs.readFileSync(new URL('../../native/backend.h', import.meta.url), 'utf8').matchAll(/^\s+X\((\w+)\)/gm)].map((m) => m[1]!.toLowerCase());

/**
 * Ops whose CPU op runs kernels of the instruction-set variant (native/cpu/isa/kernels.h: GEMM,
 * Winograd, vector math, norms, attention): what the forced lower variants are checked on.
 */
export const ISA_OPS = new Set(['linear', 'matmul', 'conv2d', 'conv2d_backward_input', 'attention', 'attention_backward', 'group_norm', 'layer_norm', 'gelu', 'quick_gelu', 'silu', 'geglu', 'embedding']);

export interface ForwardChild {
  /** the default addon, or this .node file */
  addon?: string;
  /** 'isa': only the cases with an ISA_OPS op (opCases('cpu')) */
  which: 'all' | 'cpu' | 'isa';
  /** IDFORGE_CPU_ISA for the child (default: the best this CPU has) */
  isa?: string;
  /** fewer checks than this is a failure (default 250) */
  minChecks?: number;
}

/**
 * The forward mode in a child process (test/helpers/ops-forward.ts), asynchronously (two variants'
 * children overlap: much of a run is single-threaded JS references): its stdout, stderr, status.
 */
export function forwardChild(o: ForwardChild): Promise<{ stdout: string; stderr: string; status: number | null }> {
  const env: NodeJS.ProcessEnv = { ...process.env, IDFORGE_POISON: '1' };
  delete env['NODE_V8_COVERAGE'];  // the child's loops run uninstrumented
  if (o.addon) env['IDFORGE_ADDON'] = o.addon;
  if (o.isa) env['IDFORGE_CPU_ISA'] = o.isa;
  const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
  const c = spawn(process.execPath, ['--import=@tapjs/typescript/import', 'test/helpers/ops-forward.ts', ...(o.which === 'all' ? [] : [`--${o.which}`])], { cwd: root, env });
  let stdout = '', stderr = '';
  c.stdout.on('data', (d) => (stdout += d));
  c.stderr.on('data', (d) => (stderr += d));
  return new Promise((resolve) => c.on('close', (status) => resolve({ stdout, stderr, status })));
}

/** One assertion per check of a forwardChild run, the variant it ran on, and its exit status. */
export function reportForward(t: { ok(ok: boolean, msg: string): unknown; equal(a: unknown, b: unknown, msg: string): unknown }, o: ForwardChild, r: { stdout: string; stderr: string; status: number | null }): void {
  const lines = r.stdout.split('\n').filter((l) => /^(ok|FAIL) /.test(l));
  for (const l of lines) t.ok(l.startsWith('ok '), l.replace(/^(ok|FAIL) /, ''));
  t.ok(lines.length > (o.minChecks ?? 250), `${lines.length} checks ran`);
  if (o.isa) t.equal(/^isa (\w+)$/m.exec(r.stdout)?.[1], o.isa, `the child ran the ${o.isa} kernels`);
  t.equal(r.status, 0, `child exit status (stderr tail: ${r.stderr.slice(-2000)})`);
}

/** forwardChild, then reportForward. */
export async function forwardInChild(t: Parameters<typeof reportForward>[0], o: ForwardChild): Promise<void> {
  reportForward(t, o, await forwardChild(o));
}

/** Seeded distinct-enough indices of an output of n elements: the first, the last and count − 2 random ones. */
export function sampleIndices(n: number, count: number, seed: number): number[] {
  const r = rng(seed);
  return n <= count ? Array.from({ length: n }, (_, i) => i) : [0, n - 1, ...Array.from({ length: count - 2 }, () => Math.floor(r() * n))];
}

/** Ops that read a float16 weight constant as stored on the CPU (native/cpu backend.cc readsHalfWeight). */
const HALF_WEIGHT_OPS = new Set(['linear', 'conv2d', 'embedding']);

/**
 * The cases whose weight (input 1 of a LINEAR, CONV2D or EMBEDDING) can run as a float16 constant,
 * the way float16 weights on the CPU reach those ops (BackendSpec.weights): inputs of at most 2^20
 * elements in all (the kernel paths are the small cases' too; the SD-sized ones would double the
 * table's time). checkHalfWeight runs them.
 */
export function halfWeightCases(cases: OpCase[]): OpCase[] {
  return cases.filter((c) => {
    if (c.error || c.special || !(c.ref || c.refAt) || c.inputs.length < 2 || c.inputs[1]!.int) return false;
    if (c.inputs.reduce((n, s) => n + numel(s.shape), 0) > 1 << 20) return false;
    const { g, ins } = caseGraph(c);
    return g.ops.some((o) => HALF_WEIGHT_OPS.has(o.op) && o.in[1] === ins[1]!.id);
  });
}

/**
 * The case with its weight (input 1) rounded to float16 and made a float16 constant on the CPU:
 * converted to float32 inside the GEMM packing (or the Winograd and embedding gathers), against the
 * float64 reference on the rounded weight (at the sampled indices of a big case), at the case's own
 * tolerance.
 */
export async function checkHalfWeight(c: OpCase): Promise<Check[]> {
  const be = { device: 'cpu', dtype: 'float32' } as const;
  const x = makeInputs(c, 1);
  x[1] = (x[1] as Float32Array).map(roundHalf);
  const g = new Graph();
  using w = Tensor.from(x[1] as Float32Array, c.inputs[1]!.shape, { dtype: 'float16' });
  const ins = c.inputs.map((s, i) => (i === 1 ? g.constant(w) : g.input(s.shape, s.int || s.f32bits ? 'int32' : 'float')));
  const o = c.build(g, ins);
  for (const v of Array.isArray(o) ? o : [o]) g.output(v);
  const p = new Program(g, be);
  try {
    const out = await runOn(p, x.filter((_, i) => i !== 1), c.inputs.filter((_, i) => i !== 1), be);
    const full = c.refAt ? undefined : c.ref!(x);
    return out.map((y, i) => {
      let r: Check;
      if (full) r = compare(c, i, y, full[i]!, 0, `${y.length}`);
      else {
        const idx = sampleIndices(y.length, c.samples!, 100 + i);
        const bad = y.reduce((n, v) => n + (Number.isFinite(v) ? 0 : 1), 0);
        r = compare(c, i, Float32Array.from(idx, (k) => y[k]!), c.refAt!(x, i, idx), bad, `${idx.length} sampled of ${y.length}`);
      }
      return { ok: r.ok, msg: r.msg.replace(`${c.name} `, `${c.name} (float16 weight) `) };
    });
  } finally {
    p.dispose();
  }
}

/**
 * The case's outputs on `be` against its float64 reference (at sampled indices where the case says
 * so), or the typed error it must raise. Every output element must be finite except where the
 * reference is NaN / ±inf, and there it must be the same value: with IDFORGE_POISON=1 an element
 * no kernel wrote is NaN and fails, sampled or not.
 */
export async function checkForward(c: OpCase, be: BackendSpec): Promise<Check[]> {
  if (c.error) return [await checkError(c, be)];
  if (c.samples && c.refAt) return checkSampled(c, be);
  const x = makeInputs(c, 1);
  const out = await runCase(c, be, false, x);
  const ref = c.ref!(x);
  return out.map((o, i) => {
    // Non-finite outputs where the reference is finite, or not the reference's special value.
    let wrong = 0;
    for (let k = 0; k < o.length; k++) {
      const v = o[k]!;
      if (v - v !== 0 && !Object.is(v, ref[i]![k])) wrong++;
    }
    return compare(c, i, o, ref[i]!, wrong, `${o.length}`);
  });
}

/**
 * A big case: the graph also gathers the sampled indices of each output (an embedding of the
 * output as a one-column table), so only those come back to JS; the poison check counts the
 * non-finite elements of each whole output natively.
 */
async function checkSampled(c: OpCase, be: BackendSpec): Promise<Check[]> {
  const { g, outs } = caseGraph(c);
  const idx = outs.map((y, i) => sampleIndices(numel(y.shape), c.samples!, 100 + i));
  for (const [i, y] of outs.entries()) g.output(g.embedding(g.input([idx[i]!.length], 'int32'), g.reshape(y, [numel(y.shape), 1])));
  const x = makeInputs(c, 1);
  const specs: InputSpec[] = [...c.inputs, ...idx.map((ix) => ({ shape: [ix.length], int: [0, 1] as [number, number] }))];
  const ins = [...x, ...idx.map((ix) => Int32Array.from(ix))].map((d, i) => tensorOf(d, specs[i]!, be));
  const p = new Program(g, be);
  try {
    const res = await p.run(ins);
    try {
      return outs.map((y, i) => compare(c, i, res[outs.length + i]!.toFloat32(), c.refAt!(x, i, idx[i]!), res[i]!.countNonFinite(), `${idx[i]!.length} sampled of ${numel(y.shape)}`));
    } finally {
      for (const r of res) r.dispose();
    }
  } finally {
    p.dispose();
    for (const t of ins) t.dispose();
  }
}

/** got vs ref: relative L2 over the finite references (a non-finite one must come out the same). */
function compare(c: OpCase, i: number, got: Float32Array, ref: Float64Array, wrong: number, what: string): Check {
  let num = 0, den = 0;
  for (let k = 0; k < got.length && ref.length === got.length; k++) {
    const r = ref[k]!, v = got[k]!;
    if (r - r !== 0) {
      if (v - v === 0) wrong++;  // the reference's NaN / inf came out finite
      continue;
    }
    num += (v - r) * (v - r);
    den += r * r;
  }
  const e = ref.length !== got.length || Number.isNaN(num) ? NaN : Math.sqrt(den ? num / den : num);
  const tol = c.tol ?? 1e-5;
  return { ok: wrong === 0 && e <= tol, msg: `${c.name} output ${i}: rel L2 ${e.toExponential(2)} vs float64 over ${what} (≤ ${tol})${wrong ? `, ${wrong} wrong non-finite values` : ''}` };
}

/** Building, compiling or running the case throws IdforgeError with the case's code. */
async function checkError(c: OpCase, be: BackendSpec): Promise<Check> {
  try {
    await runCase(c, be);
    return { ok: false, msg: `${c.name}: no error` };
  } catch (e) {
    const code = e instanceof IdforgeError ? e.code : `untyped ${(e as Error).name}`;
    return { ok: code === c.error, msg: `${c.name}: ${code}: ${(e as Error).message.split('\n')[0]}` };
  }
}

/**
 * The case's graph plus loss = Σ_i Σ y_i·r_i (r_i random, fed as the last inputs) and the
 * gradients of the loss w.r.t. the inputs c.grad lists: outputs [loss, ...gradients].
 */
export function gradGraph(c: OpCase): { g: Graph; specs: InputSpec[] } {
  const { g, ins, outs } = caseGraph(c);
  g.outputs.length = 0;
  const specs = [...c.inputs];
  let loss: Value | undefined;
  for (const y of outs) {
    const r = g.input(y.shape);
    specs.push({ shape: [...y.shape] });
    const term = g.reduceSum(g.mul(y, r), [1]);
    loss = loss ? g.add(loss, term) : term;
  }
  g.output(loss!);
  for (const d of grad(g, loss!, c.grad!.map((k) => ins[k]!))) g.output(d);
  return { g, specs };
}

/** Inputs of gradGraph: the case's, then the r_i. */
export function gradInputs(c: OpCase, specs: InputSpec[], half = false): (Float32Array | Int32Array)[] {
  const base = makeInputs(c, 1, half);
  return [...base, ...specs.slice(base.length).map((s, i) => rand(numel(s.shape), 500 + i).map(half ? roundHalf : (v) => v))];
}

/** The loss and its gradients on a backend (half: inputs rounded to float16). */
export async function runGrad(c: OpCase, be: BackendSpec, half = false): Promise<Float32Array[]> {
  const { g, specs } = gradGraph(c);
  const p = new Program(g, be);
  try {
    return await runOn(p, gradInputs(c, specs, half), specs, be);
  } finally {
    p.dispose();
  }
}

/**
 * Autodiff vs central differences in float32, on 6 sampled entries of each differentiated input:
 * the worst |fd − ad| / max|ad|.
 */
export async function gradCheck(c: OpCase): Promise<Check> {
  const be = { device: 'cpu', dtype: 'float32' } as const;
  const { g, specs } = gradGraph(c);
  const p = new Program(g, be);
  try {
    const data = gradInputs(c, specs);
    const base = await runOn(p, data, specs, be);
    const r = rng(7);
    let worst = 0;
    for (const [n, k] of c.grad!.entries()) {
      const x = data[k] as Float32Array;
      const gk = base[1 + n]!;
      let scale = 0;
      for (const v of gk) scale = Math.max(scale, Math.abs(v));
      for (let s = 0; s < 6 && x.length; s++) {
        const j = Math.floor(r() * x.length);
        const h = 1e-2 * Math.max(1, Math.abs(x[j]!));
        const at = async (v: number) => {
          const d = data.slice();
          const xv = x.slice();
          xv[j] = v;
          d[k] = xv;
          return (await runOn(p, d, specs, be))[0]![0]!;
        };
        const fd = ((await at(x[j]! + h)) - (await at(x[j]! - h))) / (2 * h);
        worst = Math.max(worst, Math.abs(fd - gk[j]!) / Math.max(scale, 1e-6));
      }
    }
    const tol = c.gradTol ?? 2e-2;
    return { ok: worst < tol, msg: `${c.name}: worst |fd − ad| / max|ad| = ${worst.toExponential(2)} (< ${tol}) over inputs ${c.grad!.join(', ')}` };
  } finally {
    p.dispose();
  }
}

/** Throws E_ARGUMENT when some op of the case has no backward rule. */
export function tryGrad(c: OpCase): void {
  const { ins, g, outs } = caseGraph(c);
  const floats = ins.filter((v) => v.dtype === 'float');
  for (const y of outs) grad(g, y, floats);
}
