// The graph IR: model code (text/, unet/, vae/, identity/) calls this builder to describe WHAT to
// compute; shapes are inferred at build time; the op list is compiled once into a native Program
// (lib/graph/program.ts) and run as one native call. Op semantics: native/backend.h.
import { IdforgeError } from '../errors.js';
import type { NativeOp } from '../native.js';
import { Tensor, numel } from '../tensor.js';

export type VDType = 'float' | 'int32';

export class Value {
  constructor(
    readonly id: number,
    readonly shape: readonly number[],
    readonly dtype: VDType,
  ) {}
  get rank(): number {
    return this.shape.length;
  }
  dim(i: number): number {
    return this.shape[i < 0 ? this.shape.length + i : i]!;
  }
}

function shapeErr(op: string, msg: string): IdforgeError {
  return new IdforgeError('E_SHAPE', `${op}: ${msg}`);
}

const S = (s: readonly number[]) => JSON.stringify(s);

export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw shapeErr(op, `shapes ${S(a)} and ${S(b)} do not broadcast`);
    out.push(Math.max(x, y));
  }
  return out;
}

function checkResidual(op: string, r: Value, shape: readonly number[]): void {
  if (r.dtype !== 'float' || r.rank !== shape.length || r.shape.some((d, i) => d !== shape[i]))
    throw shapeErr(op, `residual ${S(r.shape)} must have the output's shape ${S(shape)}`);
}

/** The operands of a LINEAR / CONV2D op by role (value ids). */
export interface FusedOperands {
  x: number;
  w: number;
  bias?: number;
  residual?: number;
}

/**
 * LINEAR / CONV2D operands in op-list order, the order native/fused.h states: x, w, the bias when
 * given, then the residual when given (the last input, flagged by the `residual` attribute).
 * The builder emits them with fusedInputs; autodiff and the tests read them back with fusedOperands.
 */
function fusedInputs(x: Value, w: Value, b: Value | undefined, r: Value | undefined): { ins: Value[]; attrs: NativeOp['attrs'] } {
  return { ins: [x, w, ...(b ? [b] : []), ...(r ? [r] : [])], attrs: r ? { residual: true } : {} };
}

export function fusedOperands(op: NativeOp): FusedOperands {
  const residual = !!op.attrs?.['residual'];
  const [x, w] = op.in as [number, number];
  const f: FusedOperands = { x, w };
  if (op.in.length > (residual ? 3 : 2)) f.bias = op.in[2]!;
  if (residual) f.residual = op.in[op.in.length - 1]!;
  return f;
}

/** The most regions one table holds (native/regions.h kMaxRegions). */
export const MAX_REGIONS = 32;

export interface AttentionOptions {
  heads: number;
  scale?: number;
  causal?: boolean;
  /** the region table (int32 [B, keys + 4R]) and the width of the queries' grid */
  regions?: { table: Value; width: number };
}

export class Graph {
  readonly values: { dtype: VDType; shape: number[] }[] = [];
  readonly consts = new Map<number, Tensor>();
  readonly inputs: Value[] = [];
  readonly outputs: Value[] = [];
  readonly ops: NativeOp[] = [];
  /** Names of values, for captured attention maps and debugging. */
  readonly names = new Map<number, string>();

  private value(shape: readonly number[], dtype: VDType = 'float'): Value {
    for (const d of shape)
      if (!Number.isSafeInteger(d) || d < 0) throw shapeErr('graph', `invalid shape ${S(shape)}`);
    const v = new Value(this.values.length, [...shape], dtype);
    this.values.push({ dtype, shape: [...shape] });
    return v;
  }

  private emit(op: string, inputs: Value[], shape: readonly number[], attrs?: NativeOp['attrs'], dtype: VDType = 'float'): Value {
    const out = this.value(shape, dtype);
    this.ops.push({ op, in: inputs.map((v) => v.id), out: [out.id], ...(attrs ? { attrs } : {}) });
    return out;
  }

  input(shape: readonly number[], dtype: VDType = 'float', name?: string): Value {
    const v = this.value(shape, dtype);
    this.inputs.push(v);
    if (name) this.names.set(v.id, name);
    return v;
  }

  /** A constant (a weight): the tensor must already be on the program's device in its compute dtype. */
  constant(t: Tensor, dtype: VDType = 'float'): Value {
    const v = this.value(t.shape, dtype);
    this.consts.set(v.id, t);
    return v;
  }

  output(v: Value, name?: string): Value {
    this.outputs.push(v);
    if (name) this.names.set(v.id, name);
    return v;
  }

  /**
   * x·wᵀ + b (+ residual): `residual`, shaped exactly like the output, is added in the op's
   * epilogue (the skip connections of the transformer blocks) instead of by a separate ADD.
   */
  /**
   * With `transX`, x is channels first, [B, K, R] (an NCHW image viewed as [B, C, H·W]), and the
   * result tokens [B, R, N]; with `transY`, x is [B, R, K] and the result channels first,
   * [B, N, R]. The layout change then happens inside the GEMM instead of a PERMUTE pass (a
   * transformer block's proj_in / proj_out).
   */
  linear(x: Value, w: Value, b?: Value, opts: { residual?: Value; transX?: boolean; transY?: boolean } = {}): Value {
    const [n, k] = w.shape as [number, number];
    const { transX = false, transY = false } = opts;
    if (transX && transY) throw shapeErr('linear', 'transX and transY cannot both be set');
    if ((transX || transY) && x.rank !== 3)
      throw shapeErr('linear', `${transX ? 'transX' : 'transY'} needs x of rank 3, got ${S(x.shape)}`);
    if (w.rank !== 2 || (transX ? x.dim(1) : x.dim(-1)) !== k)
      throw shapeErr('linear', `x ${S(x.shape)}${transX ? ' (transX)' : ''} does not fit weight ${S(w.shape)}`);
    if (b && (b.rank !== 1 || b.dim(0) !== n)) throw shapeErr('linear', `bias ${S(b.shape)} does not fit weight ${S(w.shape)}`);
    const shape = transX ? [x.dim(0), x.dim(2), n] : transY ? [x.dim(0), n, x.dim(1)] : [...x.shape.slice(0, -1), n];
    const r = opts.residual;
    if (r) checkResidual('linear', r, shape);
    const f = fusedInputs(x, w, b, r);
    const attrs = { ...f.attrs, ...(transX ? { transX } : transY ? { transY } : {}) };
    return this.emit('linear', f.ins, shape, Object.keys(attrs).length ? attrs : undefined);
  }

  matmul(a: Value, b: Value, opts: { transB?: boolean } = {}): Value {
    if (a.rank !== 3 || b.rank !== 3 || a.dim(0) !== b.dim(0)) throw shapeErr('matmul', `${S(a.shape)} x ${S(b.shape)}`);
    const k = opts.transB ? b.dim(2) : b.dim(1);
    const n = opts.transB ? b.dim(1) : b.dim(2);
    if (a.dim(2) !== k) throw shapeErr('matmul', `${S(a.shape)} x ${S(b.shape)}${opts.transB ? 'ᵀ' : ''}`);
    return this.emit('matmul', [a, b], [a.dim(0), a.dim(1), n], opts.transB ? { transB: true } : undefined);
  }

  /**
   * Convolution + b (+ residual). The bias is per output channel [O], or per image [B, O] (the
   * UNet's resnets fold their time embedding into conv1 this way); `residual`, shaped exactly like
   * the output, is added in the op's epilogue (a resnet's skip connection) instead of by an ADD.
   */
  conv2d(x: Value, w: Value, b: Value | undefined, opts: { stride?: number; pad?: number; residual?: Value } = {}): Value {
    const stride = opts.stride ?? 1;
    const pad = opts.pad ?? 0;
    if (x.rank !== 4 || w.rank !== 4 || x.dim(1) !== w.dim(1))
      throw shapeErr('conv2d', `input ${S(x.shape)} does not fit weight ${S(w.shape)}`);
    const ho = Math.floor((x.dim(2) + 2 * pad - w.dim(2)) / stride) + 1;
    const wo = Math.floor((x.dim(3) + 2 * pad - w.dim(3)) / stride) + 1;
    if (ho <= 0 || wo <= 0) throw shapeErr('conv2d', `input ${S(x.shape)} too small for kernel ${S(w.shape)}`);
    const o = w.dim(0);
    if (b && !((b.rank === 1 && b.dim(0) === o) || (b.rank === 2 && b.dim(0) === x.dim(0) && b.dim(1) === o)))
      throw shapeErr('conv2d', `bias ${S(b.shape)} must be [${o}] or [${x.dim(0)}, ${o}]`);
    const shape = [x.dim(0), o, ho, wo];
    const r = opts.residual;
    if (r) checkResidual('conv2d', r, shape);
    const f = fusedInputs(x, w, b, r);
    return this.emit('conv2d', f.ins, shape, { stride, pad, ...f.attrs });
  }

  groupNorm(x: Value, w: Value, b: Value, opts: { groups: number; eps: number; silu?: boolean }): Value {
    if (x.rank < 2 || x.dim(1) % opts.groups !== 0)
      throw shapeErr('group_norm', `${x.dim(1)} channels do not split into ${opts.groups} groups`);
    return this.emit('group_norm', [x, w, b], x.shape, { groups: opts.groups, eps: opts.eps, silu: !!opts.silu });
  }

  layerNorm(x: Value, w: Value, b: Value, opts: { eps: number }): Value {
    if (w.dim(0) !== x.dim(-1)) throw shapeErr('layer_norm', `x ${S(x.shape)} vs weight ${S(w.shape)}`);
    return this.emit('layer_norm', [x, w, b], x.shape, { eps: opts.eps });
  }

  /**
   * softmax(q·kᵀ·scale)·v over heads interleaved in the last dim; with capture also returns the
   * probabilities. `regions`: an int32 region table [B, keys + 4R] (native/regions.h; lib/regions.ts
   * packs it) hiding each region's keys from the queries of a `width`-wide grid outside its box.
   */
  attention(q: Value, k: Value, v: Value, opts: AttentionOptions & { capture: true }): [Value, Value];
  attention(q: Value, k: Value, v: Value, opts: AttentionOptions & { capture?: false }): Value;
  attention(q: Value, k: Value, v: Value, opts: AttentionOptions & { capture?: boolean }): Value | [Value, Value] {
    const h = opts.heads;
    if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3 || q.dim(0) !== k.dim(0) || k.dim(0) !== v.dim(0) || k.dim(1) !== v.dim(1))
      throw shapeErr('attention', `q ${S(q.shape)}, k ${S(k.shape)}, v ${S(v.shape)}`);
    if (q.dim(2) % h || k.dim(2) !== q.dim(2) || v.dim(2) % h)
      throw shapeErr('attention', `widths ${q.dim(2)}/${k.dim(2)}/${v.dim(2)} do not split into ${h} heads`);
    const d = q.dim(2) / h;
    const rg = opts.regions;
    if (rg) {
      const t = rg.table, r = (t.dim(1) - k.dim(1)) / 4;
      if (t.dtype !== 'int32' || t.rank !== 2 || t.dim(0) !== q.dim(0) || !Number.isInteger(r) || r < 0 || r > MAX_REGIONS)
        throw shapeErr('attention', `region table ${S(t.shape)} must be int32 [${q.dim(0)}, ${k.dim(1)} + 4R], R ≤ ${MAX_REGIONS}`);
      if (!Number.isInteger(rg.width) || rg.width < 1 || q.dim(1) % rg.width)
        throw shapeErr('attention', `grid width ${rg.width} does not divide the ${q.dim(1)} queries`);
    }
    const attrs = { heads: h, scale: opts.scale ?? 1 / Math.sqrt(d), causal: !!opts.causal, capture: !!opts.capture, ...(rg ? { regions: true, width: rg.width } : {}) };
    const o = this.value([q.dim(0), q.dim(1), v.dim(2)]);
    const outs = [o.id];
    let p: Value | undefined;
    if (opts.capture) {
      p = this.value([q.dim(0) * h, q.dim(1), k.dim(1)]);
      outs.push(p.id);
    }
    this.ops.push({ op: 'attention', in: [q.id, k.id, v.id, ...(rg ? [rg.table.id] : [])], out: outs, attrs });
    return p ? [o, p] : o;
  }

  geglu(x: Value): Value {
    if (x.dim(-1) % 2) throw shapeErr('geglu', `odd width ${x.dim(-1)}`);
    return this.emit('geglu', [x], [...x.shape.slice(0, -1), x.dim(-1) / 2]);
  }
  gelu(x: Value): Value { return this.emit('gelu', [x], x.shape); }
  quickGelu(x: Value): Value { return this.emit('quick_gelu', [x], x.shape); }
  silu(x: Value): Value { return this.emit('silu', [x], x.shape); }
  relu(x: Value): Value { return this.emit('relu', [x], x.shape); }
  tanh(x: Value): Value { return this.emit('tanh', [x], x.shape); }

  add(a: Value, b: Value): Value { return this.emit('add', [a, b], broadcastShapes('add', a.shape, b.shape)); }
  mul(a: Value, b: Value): Value { return this.emit('mul', [a, b], broadcastShapes('mul', a.shape, b.shape)); }
  /** x·scale + shift */
  scale(x: Value, scale: number, shift = 0): Value { return this.emit('scale', [x], x.shape, { scale, shift }); }

  upsample2x(x: Value): Value {
    if (x.rank !== 4) throw shapeErr('upsample2x', `expects NCHW, got ${S(x.shape)}`);
    return this.emit('upsample2x', [x], [x.dim(0), x.dim(1), x.dim(2) * 2, x.dim(3) * 2]);
  }

  concat(xs: Value[], axis: number): Value {
    const a = axis < 0 ? xs[0]!.rank + axis : axis;
    const shape = [...xs[0]!.shape];
    shape[a] = 0;
    for (const x of xs) {
      if (x.rank !== shape.length || x.shape.some((d, i) => i !== a && d !== shape[i]))
        throw shapeErr('concat', `${xs.map((v) => S(v.shape)).join(', ')} along axis ${a}`);
      shape[a]! += x.dim(a);
    }
    return this.emit('concat', xs, shape, { axis: a });
  }

  permute(x: Value, perm: number[]): Value {
    if (perm.length !== x.rank || [...perm].sort().some((p, i) => p !== i)) throw shapeErr('permute', `bad perm ${S(perm)}`);
    return this.emit('permute', [x], perm.map((p) => x.dim(p)), { perm });
  }

  reshape(x: Value, shape: number[]): Value {
    const s = [...shape];
    const neg = s.indexOf(-1);
    if (neg >= 0) s[neg] = numel(x.shape) / numel(s.filter((d) => d !== -1));
    if (numel(s) !== numel(x.shape) || s.some((d) => !Number.isInteger(d))) throw shapeErr('reshape', `${S(x.shape)} → ${S(shape)}`);
    return this.emit('reshape', [x], s, undefined, x.dtype);
  }

  slice(x: Value, axis: number, start: number, end: number): Value {
    const a = axis < 0 ? x.rank + axis : axis;
    if (start < 0 || end > x.dim(a) || start >= end) throw shapeErr('slice', `[${start}:${end}] of axis ${a} in ${S(x.shape)}`);
    const shape = [...x.shape];
    shape[a] = end - start;
    return this.emit('slice', [x], shape, { axis: a, start, end });
  }

  timestepEmbedding(t: Value, opts: { dim: number; flip: boolean; shift: number; maxPeriod?: number }): Value {
    const { dim, flip, shift, maxPeriod } = opts;  // maxPeriod's default: native/backend.h
    return this.emit('timestep_emb', [t], [t.dim(0), dim], { dim, flip, shift, ...(maxPeriod !== undefined ? { maxPeriod } : {}) });
  }

  embedding(ids: Value, table: Value): Value {
    if (ids.dtype !== 'int32' || table.rank !== 2) throw shapeErr('embedding', `ids ${S(ids.shape)} table ${S(table.shape)}`);
    return this.emit('embedding', [ids, table], [...ids.shape, table.dim(1)]);
  }

  /** Rows of x where slots ≥ 0 replaced by vectors[slot]. */
  inject(x: Value, slots: Value, vectors: Value): Value {
    if (slots.dtype !== 'int32' || x.rank !== 3 || slots.dim(0) !== x.dim(0) || slots.dim(1) !== x.dim(1) || vectors.dim(1) !== x.dim(2))
      throw shapeErr('inject', `x ${S(x.shape)}, slots ${S(slots.shape)}, vectors ${S(vectors.shape)}`);
    return this.emit('inject', [x, slots, vectors], x.shape);
  }

  /** Classifier-free guidance: eps[2B] (unconditional first) → u + scale·(c − u). */
  cfg(eps: Value, scale: number): Value {
    if (eps.dim(0) % 2) throw shapeErr('cfg', `batch ${eps.dim(0)} is odd`);
    return this.emit('cfg', [eps], [eps.dim(0) / 2, ...eps.shape.slice(1)], { scale });
  }

  /** x summed down to `shape` (x must broadcast from it: right aligned, extents 1 or equal). */
  reduceSum(x: Value, shape: readonly number[]): Value {
    broadcastShapes('reduce_sum', x.shape, shape);
    if (shape.length > x.rank || shape.some((d, i) => d !== 1 && d !== x.dim(x.rank - shape.length + i)))
      throw shapeErr('reduce_sum', `${S(x.shape)} does not reduce to ${S(shape)}`);
    return this.emit('reduce_sum', [x], shape);
  }

  /**
   * @internal Any backend op (lib/graph/autodiff.ts emits the backward ops through this) with
   * output shapes given by the caller; the backend validates them when the program runs.
   */
  op(name: string, inputs: Value[], outShapes: readonly (readonly number[])[], attrs?: NativeOp['attrs']): Value[] {
    const outs = outShapes.map((s) => this.value(s));
    this.ops.push({ op: name, in: inputs.map((v) => v.id), out: outs.map((v) => v.id), ...(attrs ? { attrs } : {}) });
    return outs;
  }

  /** @internal the Value handle of a value id */
  valueOf(id: number): Value {
    const d = this.values[id];
    if (!d) throw new IdforgeError('E_INTERNAL', `graph: no value ${id}`);
    return new Value(id, d.shape, d.dtype);
  }

  /**
   * One sampler step (native/backend.h SAMPLER_STEP): x, the guided model output m, the carried
   * state (previous x0) and the coefficients [9] (int32: float32 bits, lib/sched/sampler.ts) →
   * [next x, state (x0), next UNet input].
   */
  samplerStep(x: Value, m: Value, state: Value, coefs: Value, noise?: Value): [Value, Value, Value] {
    for (const v of [m, state, ...(noise ? [noise] : [])])
      if (v.rank !== x.rank || v.shape.some((d, i) => d !== x.dim(i))) throw shapeErr('sampler_step', `${S(v.shape)} differs from the sample's ${S(x.shape)}`);
    if (coefs.dtype !== 'int32' || coefs.rank !== 1 || coefs.dim(0) !== 9) throw shapeErr('sampler_step', `coefficients must be int32 [9], got ${S(coefs.shape)}`);
    const [y, x0, xin] = this.op('sampler_step', noise ? [x, m, state, coefs, noise] : [x, m, state, coefs], [x.shape, x.shape, x.shape]);
    return [y!, x0!, xin!];
  }

  /**
   * One Adam step of one parameter (native/backend.h ADAM_STEP): p, its gradient g, the moments
   * m and v, the coefficients [8] (int32: float32 bits, lib/optim/adam.ts adamCoefficients) and
   * optionally the squared global gradient norm [1] (clipping) → [p', m', v'].
   */
  adamStep(p: Value, g: Value, m: Value, v: Value, coefs: Value, gradNormSq?: Value): [Value, Value, Value] {
    for (const x of [g, m, v])
      if (x.rank !== p.rank || x.shape.some((d, i) => d !== p.dim(i))) throw shapeErr('adam_step', `${S(x.shape)} differs from the parameter's ${S(p.shape)}`);
    if (coefs.dtype !== 'int32' || coefs.rank !== 1 || coefs.dim(0) !== 8) throw shapeErr('adam_step', `coefficients must be int32 [8], got ${S(coefs.shape)}`);
    if (gradNormSq && (gradNormSq.rank !== 1 || gradNormSq.dim(0) !== 1)) throw shapeErr('adam_step', `the squared gradient norm must be [1], got ${S(gradNormSq.shape)}`);
    const [p1, m1, v1] = this.op('adam_step', gradNormSq ? [p, g, m, v, coefs, gradNormSq] : [p, g, m, v, coefs], [p.shape, p.shape, p.shape]);
    return [p1!, m1!, v1!];
  }
}
