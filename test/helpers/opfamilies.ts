// The op table's case makers (test/helpers/opcases.ts, opcases-paths.ts): one per op family,
// shapes and attributes in, a case out with its name, its float64 reference (sampled where a full
// one would be slow: refAt + samples) and the inputs its gradient check differentiates.
import type { Graph, Value } from '../../lib/graph/graph.js';
import { regionColumns, regionTable, type Region } from '../../lib/regions.js';
import { numel } from '../../lib/tensor.js';
import type { Data, InputSpec, OpCase } from './opcase.js';
import * as R from './opref.js';

export const S = (s: readonly number[]) => `[${s.join(',')}]`;
const f = (d: Data): Float32Array => d as Float32Array;

/** Multiply-adds past which a case checks sampled output indices instead of a full reference. */
const FULL_REF_MAX = 2e7;
const sampled = (macs: number, count = 2000): number | undefined => (macs > FULL_REF_MAX ? count : undefined);

/** Extra knobs of the GEMM-family makers: the kernel path the shape takes (named in the case), input ranges. */
export interface PathOpts {
  /** the kernel path this shape picks, appended to the name (e.g. "wino F4", "weight-in-place") */
  path?: string;
  /** conv2d: activations as after GroupNorm + SiLU */
  siluLike?: boolean;
}

const named = (name: string, path?: string) => (path ? `${name} (${path})` : name);

export function linearCase(xs: number[], n: number, o: { bias?: boolean; res?: boolean; trans?: 'transX' | 'transY'; wAmp?: number; stress?: boolean } & PathOpts = {}): OpCase {
  const k = o.trans === 'transX' ? xs[1]! : xs[xs.length - 1]!;
  const ys = o.trans === 'transX' ? [xs[0]!, xs[2]!, n] : o.trans === 'transY' ? [xs[0]!, n, xs[1]!] : [...xs.slice(0, -1), n];
  const inputs: InputSpec[] = [{ shape: xs }, { shape: [n, k], amp: o.wAmp }];
  const bi = o.bias ? inputs.push({ shape: [n] }) - 1 : -1;
  const ri = o.res ? inputs.push({ shape: ys }) - 1 : -1;
  const at = (x: Data[], idx?: number[]) => R.linear(f(x[0]!), xs, f(x[1]!), [n, k], bi >= 0 ? f(x[bi]!) : undefined, ri >= 0 ? f(x[ri]!) : undefined, o.trans ?? 'plain', idx);
  return {
    name: named(`linear x${S(xs)} w[${n},${k}]${o.bias ? ' +b' : ''}${o.res ? ' +res' : ''}${o.trans ? ` ${o.trans}` : ''}`, o.path),
    inputs,
    build: (g, x) => g.linear(x[0]!, x[1]!, bi >= 0 ? x[bi] : undefined, { residual: ri >= 0 ? x[ri] : undefined, transX: o.trans === 'transX', transY: o.trans === 'transY' }),
    ref: (x) => [at(x)],
    refAt: (x, _out, idx) => at(x, idx),
    samples: sampled(numel(ys) * k),
    grad: [0, ...(k > 0 ? [1] : []), ...(bi >= 0 ? [bi] : []), ...(ri >= 0 ? [ri] : [])],
    stress: o.stress,
  };
}

export function matmulCase(as: number[], bs: number[], transB = false, stress = false, path?: string): OpCase {
  const ys = [...as.slice(0, -1), transB ? bs[bs.length - 2]! : bs[bs.length - 1]!];
  const at = (x: Data[], idx?: number[]) => R.matmul(f(x[0]!), as, f(x[1]!), bs, transB, idx);
  return {
    name: named(`matmul a${S(as)}·b${S(bs)}${transB ? 'ᵀ' : ''}`, path),
    inputs: [{ shape: as }, { shape: bs }],
    build: (g, [a, b]) => (as.length === 3 && bs.length === 3 && as[0] === bs[0] ? g.matmul(a!, b!, { transB }) : g.op('matmul', [a!, b!], [ys], transB ? { transB } : undefined)[0]!),
    ref: (x) => [at(x)],
    refAt: (x, _out, idx) => at(x, idx),
    samples: sampled(numel(ys) * as[as.length - 1]!),
    ...(as.length === 3 && bs.length === 3 && bs[0] === as[0] ? { grad: [0, 1] } : { noGrad: 'a form only the backward of linear emits' }),
    stress,
  };
}

/** bias: 0 none, 1 per channel [O], 2 per image [B, O]. */
export function convCase(xs: number[], ws: number[], stride: number, pad: number, bias: 0 | 1 | 2, res = false, stress = false, o: PathOpts = {}): OpCase {
  const [B, , H, W] = xs as [number, number, number, number];
  const [O, C, kh, kw] = ws as [number, number, number, number];
  const ys = [B, O, Math.floor((H + 2 * pad - kh) / stride) + 1, Math.floor((W + 2 * pad - kw) / stride) + 1];
  const inputs: InputSpec[] = [{ shape: xs, siluLike: o.siluLike }, { shape: ws, amp: 1 / Math.sqrt(C * kh * kw) }];
  const bi = bias ? inputs.push({ shape: bias === 2 ? [B, O] : [O] }) - 1 : -1;
  const ri = res ? inputs.push({ shape: ys }) - 1 : -1;
  const at = (x: Data[], idx?: number[]) => R.conv2d(f(x[0]!), xs, f(x[1]!), ws, stride, pad, bi >= 0 ? f(x[bi]!) : undefined, bias === 2, ri >= 0 ? f(x[ri]!) : undefined, idx);
  return {
    name: named(`conv2d x${S(xs)} w${S(ws)} s${stride} p${pad}${bias === 1 ? ' +b' : bias === 2 ? ' +b[B,O]' : ''}${res ? ' +res' : ''}${o.siluLike ? ' silu-x' : ''}`, o.path),
    inputs,
    build: (g, x) => g.conv2d(x[0]!, x[1]!, bi >= 0 ? x[bi] : undefined, { stride, pad, residual: ri >= 0 ? x[ri] : undefined }),
    ref: (x) => [at(x)],
    refAt: (x, _out, idx) => at(x, idx),
    samples: sampled(numel(ys) * C * kh * kw),
    // The weight's gradient exists for non-overlapping kernels (the ViT patch embedding, 1x1).
    grad: [0, ...(kh === stride && kw === stride && pad === 0 ? [1] : []), ...(bi >= 0 ? [bi] : []), ...(ri >= 0 ? [ri] : [])],
    stress,
  };
}

export function groupNormCase(xs: number[], groups: number, eps: number, silu: boolean, offset = 0, stress = false): OpCase {
  return {
    name: `group_norm x${S(xs)} G${groups} eps ${eps}${silu ? ' +silu' : ''}${offset ? ` offset ${offset}` : ''}`,
    inputs: [{ shape: xs, offset }, { shape: [xs[1]!] }, { shape: [xs[1]!] }],
    build: (g, [x, w, b]) => g.groupNorm(x!, w!, b!, { groups, eps, silu }),
    ref: (x) => [R.groupNorm(f(x[0]!), xs, f(x[1]!), f(x[2]!), groups, eps, silu)],
    grad: [0],
    stress,
  };
}

export function layerNormCase(xs: number[], offset = 0, stress = false): OpCase {
  const c = xs[xs.length - 1]!;
  return {
    name: `layer_norm x${S(xs)}${offset ? ` offset ${offset}` : ''}`,
    inputs: [{ shape: xs, offset }, { shape: [c] }, { shape: [c] }],
    build: (g, [x, w, b]) => g.layerNorm(x!, w!, b!, { eps: 1e-5 }),
    ref: (x) => [R.layerNorm(f(x[0]!), xs, f(x[1]!), f(x[2]!), 1e-5)],
    grad: [0, 1, 2],
    stress,
  };
}

/**
 * Regions of an attention case (native/regions.h): the queries are a grid [H, W]; `list` applies to
 * the batch rows `rows` marks (default all), in a table of `capacity` slots (default list.length);
 * `plainRef`: the reference is plain attention (regions that must change nothing).
 */
export interface RegionSpec {
  name: string;
  grid: [number, number];
  list: Region[];
  rows?: boolean[];
  capacity?: number;
  plainRef?: boolean;
}

export function attentionCase(b: number, heads: number, nq: number, nk: number, d: number, dv: number, o: { causal?: boolean; capture?: boolean; stress?: boolean; tolF16?: number; probsOnly?: boolean; qAmp?: number; path?: string; regions?: RegionSpec } = {}): OpCase {
  const qs = [b, nq, heads * d], ks = [b, nk, heads * d], vs = [b, nk, heads * dv];
  const causal = !!o.causal, capture = !!o.capture || !!o.probsOnly;
  const rg = o.regions;
  if (rg && rg.grid[0] * rg.grid[1] !== nq) throw new Error(`attentionCase: grid ${S(rg.grid)} is not ${nq} queries`);
  const table = rg ? regionTable(rg.list, nk, rg.rows ?? Array<boolean>(b).fill(true), rg.capacity ?? rg.list.length) : undefined;
  const hidden = (x: Data[]) => (rg && !rg.plainRef ? R.regionHidden(x[3] as Int32Array, b, nk, nq, rg.grid[1]) : undefined);
  const run = (x: Data[], at?: { out: number; idx: number[] }) => R.attention(f(x[0]!), qs, f(x[1]!), ks, f(x[2]!), vs, heads, undefined, causal, capture, at, hidden(x));
  return {
    name: named(`attention q${S(qs)} k${S(ks)} v${S(vs)} H${heads}${causal ? ' causal' : ''}${capture ? ' capture' : ''}${o.probsOnly ? ' (probabilities only)' : ''}${o.qAmp ? ` q·${o.qAmp}` : ''}${rg ? ` regions ${S(rg.grid)}: ${rg.name}` : ''}`, o.path),
    inputs: [{ shape: qs, amp: o.qAmp }, { shape: ks }, { shape: vs }, ...(table ? [{ shape: [b, regionColumns(nk, rg!.capacity ?? rg!.list.length)], int: [-1, 1] as [number, number], data: [...table] }] : [])],
    build: (g, [q, k, v, t]) => {
      const regions = t ? { regions: { table: t, width: rg!.grid[1] } } : {};
      if (!capture) return g.attention(q!, k!, v!, { heads, causal, ...regions });
      const r = g.attention(q!, k!, v!, { heads, causal, capture: true, ...regions });
      return o.probsOnly ? r[1] : r;
    },
    ref: (x) => {
      const r = run(x);
      return o.probsOnly ? [r[1]!] : r;
    },
    // A sampled index costs a whole query row (Nk·(d + dv)): fewer of them.
    refAt: (x, out, idx) => run(x, { out: o.probsOnly ? 1 : out, idx })[0]!,
    samples: sampled(b * heads * nq * nk * (d + dv), 128),
    grad: o.probsOnly ? [0, 1] : [0, 1, 2],
    stress: o.stress,
    tolF16: o.tolF16,
  };
}

export function unaryCase(op: keyof typeof R.unary, s: number[], amp = 1, stress = false): OpCase {
  const build = {
    gelu: (g: Graph, x: Value) => g.gelu(x), quick_gelu: (g: Graph, x: Value) => g.quickGelu(x), silu: (g: Graph, x: Value) => g.silu(x),
    relu: (g: Graph, x: Value) => g.relu(x), tanh: (g: Graph, x: Value) => g.tanh(x),
  }[op];
  // relu and tanh (the tiny autoencoder's) have no autodiff rule: nothing trains through them.
  const grad = op === 'relu' || op === 'tanh' ? undefined : [0];
  return { name: `${op} x${S(s)}${amp !== 1 ? ` ·${amp}` : ''}`, inputs: [{ shape: s, amp }], build: (g, [x]) => build(g, x!), ref: (x) => [R.map(x[0]!, R.unary[op])], ...(grad ? { grad } : {}), stress };
}

export function gegluCase(s: number[], amp = 1, stress = false): OpCase {
  return { name: `geglu x${S(s)}`, inputs: [{ shape: s, amp }], build: (g, [x]) => g.geglu(x!), ref: (x) => [R.geglu(x[0]!, s)], grad: [0], stress };
}

export function binaryCase(op: 'add' | 'mul', as: number[], bs: number[], stress = false): OpCase {
  return {
    name: `${op} ${S(as)}, ${S(bs)}`,
    inputs: [{ shape: as }, { shape: bs }],
    build: (g, [a, b]) => (op === 'add' ? g.add(a!, b!) : g.mul(a!, b!)),
    ref: (x) => [R.broadcast(x[0]!, as, x[1]!, bs, op === 'add' ? (p, q) => p + q : (p, q) => p * q)],
    grad: [0, 1],
    stress,
  };
}

/** A backend op by name with explicit output shapes (the backward ops): CUDA vs CPU only (no float64 reference). */
export function rawCase(name: string, op: string, inputs: InputSpec[], outs: number[][], attrs?: Record<string, number | boolean>): OpCase {
  return { name, inputs, build: (g, x) => g.op(op, x, outs, attrs), stress: true };
}

/** A raw op (no builder checks in between) that the native backend must refuse with `code`. */
export function errorCase(name: string, code: string, op: string, inputs: InputSpec[], outs: number[][], attrs?: Record<string, number | boolean | number[]>): OpCase {
  return { name: `${name} → ${code}`, inputs, build: (g, x) => g.op(op, x, outs, attrs), error: code };
}

export const ids = (shape: number[], gen: (k: number) => number): InputSpec => ({ shape, int: [-1, 1 << 30], data: Array.from({ length: numel(shape) }, (_, k) => gen(k)) });
