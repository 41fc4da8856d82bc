// Naive float64 references of the forward ops (native/backend.h's semantics, written the obvious
// way), for the CPU forward check of the op table (test/helpers/opcases.ts). Arrays are flat,
// row-major; shapes are passed alongside.
import { numel } from '../../lib/tensor.js';

type A = ArrayLike<number>;
type Shape = readonly number[];

export function strides(s: Shape): number[] {
  const st = new Array<number>(s.length).fill(1);
  for (let i = s.length - 2; i >= 0; i--) st[i] = st[i + 1]! * s[i + 1]!;
  return st;
}

/** Every flat index of an output of n elements (a full reference is the sampled one at all of them). */
export const allIndices = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/**
 * y[.., n] = Σ_k x[.., k]·w[n, k] + b[n] + r (transX: x [B, K, R] → [B, R, N]; transY: x [B, R, K] →
 * [B, N, R]) at the output's flat indices idx (all of them when absent).
 */
export function linear(x: A, xs: Shape, w: A, ws: Shape, b?: A, r?: A, mode: 'plain' | 'transX' | 'transY' = 'plain', idx?: number[]): Float64Array {
  const [N, K] = ws as [number, number];
  const B = mode === 'plain' ? 1 : xs[0]!;
  const R = mode === 'plain' ? numel(xs.slice(0, -1)) : mode === 'transX' ? xs[2]! : xs[1]!;  // rows (K may be 0)
  const at = idx ?? allIndices(B * R * N);
  const y = new Float64Array(at.length);
  at.forEach((o, t) => {
    // o = (bi·R + ri)·N + n, or (bi·N + n)·R + ri with transY
    const bi = Math.floor(o / (R * N));
    const ri = mode === 'transY' ? o % R : Math.floor(o / N) % R;
    const n = mode === 'transY' ? Math.floor(o / R) % N : o % N;
    let s = b ? b[n]! : 0;
    for (let k = 0; k < K; k++) s += (mode === 'transX' ? x[(bi * K + k) * R + ri]! : x[(bi * R + ri) * K + k]!) * w[n * K + k]!;
    y[t] = s + (r ? r[o]! : 0);
  });
  return y;
}

/** a[B, M, K]·b[B|1, K, N] (or b[B|1, N, K] with transB; a rank-2 b is shared by every batch), at idx. */
export function matmul(a: A, as: Shape, b: A, bs: Shape, transB: boolean, idx?: number[]): Float64Array {
  const [B, M, K] = as.length === 3 ? (as as [number, number, number]) : [1, as[0]!, as[1]!];
  const bb = bs.length === 3 ? bs[0]! : 1;
  const N = transB ? bs[bs.length - 2]! : bs[bs.length - 1]!;
  const at = idx ?? allIndices(B * M * N);
  const y = new Float64Array(at.length);
  at.forEach((e, t) => {
    const n = e % N, m = Math.floor(e / N) % M, i = Math.floor(e / (M * N));
    const bo = bb === 1 ? 0 : i * K * N;
    let s = 0;
    for (let k = 0; k < K; k++) s += a[(i * M + m) * K + k]! * (transB ? b[bo + n * K + k]! : b[bo + k * N + n]!);
    y[t] = s;
  });
  return y;
}

/** conv2d + b ([O], or per image [B, O]) + r, at idx. */
export function conv2d(x: A, xs: Shape, w: A, ws: Shape, stride: number, pad: number, b?: A, bPerImage = false, r?: A, idx?: number[]): Float64Array {
  const [B, C, H, W] = xs as [number, number, number, number];
  const [O, , kh, kw] = ws as [number, number, number, number];
  const Ho = Math.floor((H + 2 * pad - kh) / stride) + 1, Wo = Math.floor((W + 2 * pad - kw) / stride) + 1;
  const at = idx ?? allIndices(B * O * Ho * Wo);
  const y = new Float64Array(at.length);
  at.forEach((e, t) => {
    const ox = e % Wo, oy = Math.floor(e / Wo) % Ho, o = Math.floor(e / (Wo * Ho)) % O, bi = Math.floor(e / (Wo * Ho * O));
    let s = b ? b[bPerImage ? bi * O + o : o]! : 0;
    for (let c = 0; c < C; c++)
      for (let i = 0; i < kh; i++) {
        const iy = oy * stride - pad + i;
        if (iy < 0 || iy >= H) continue;
        for (let j = 0; j < kw; j++) {
          const ix = ox * stride - pad + j;
          if (ix < 0 || ix >= W) continue;
          s += x[((bi * C + c) * H + iy) * W + ix]! * w[((o * C + c) * kh + i) * kw + j]!;
        }
      }
    y[t] = s + (r ? r[e]! : 0);
  });
  return y;
}

const silu = (v: number): number => v / (1 + Math.exp(-v));

export function groupNorm(x: A, xs: Shape, w: A, b: A, groups: number, eps: number, withSilu: boolean): Float64Array {
  const B = xs[0]!, C = xs[1]!, S = numel(xs) / (B * C), Cg = C / groups, n = Cg * S;
  const y = new Float64Array(numel(xs));
  for (let bi = 0; bi < B; bi++)
    for (let g = 0; g < groups; g++) {
      const base = (bi * C + g * Cg) * S;
      let m = 0, v = 0;
      for (let i = 0; i < n; i++) m += x[base + i]!;
      m /= n;
      for (let i = 0; i < n; i++) v += (x[base + i]! - m) ** 2;
      v /= n;
      for (let i = 0; i < n; i++) {
        const c = g * Cg + Math.floor(i / S);
        const r = ((x[base + i]! - m) / Math.sqrt(v + eps)) * w[c]! + b[c]!;
        y[base + i] = withSilu ? silu(r) : r;
      }
    }
  return y;
}

export function layerNorm(x: A, xs: Shape, w: A, b: A, eps: number): Float64Array {
  const C = xs[xs.length - 1]!, rows = numel(xs) / C;
  const y = new Float64Array(numel(xs));
  for (let r = 0; r < rows; r++) {
    let m = 0, v = 0;
    for (let c = 0; c < C; c++) m += x[r * C + c]!;
    m /= C;
    for (let c = 0; c < C; c++) v += (x[r * C + c]! - m) ** 2;
    v /= C;
    for (let c = 0; c < C; c++) y[r * C + c] = ((x[r * C + c]! - m) / Math.sqrt(v + eps)) * w[c]! + b[c]!;
  }
  return y;
}

/**
 * [o] or [o, p] (p: the softmax probabilities [B·H, Nq, Nk]); with idx, output `out` (0: o, 1: p) at
 * those flat indices only (each query row computed once).
 */
/**
 * native/regions.h's rule: whether query i of batch row b, on a grid `width` wide, is hidden from
 * key j by the region table (int32 [rows, keys + 4R]). The cell centre is divided in float64 and
 * rounded to float32, which equals float32 division.
 */
export function regionHidden(table: Int32Array, rows: number, keys: number, queries: number, width: number): (b: number, i: number, j: number) => boolean {
  const cols = table.length / rows;
  const boxes = new Float32Array(table.buffer, table.byteOffset, table.length);
  const H = queries / width;
  return (b, i, j) => {
    const r = table[b * cols + j]!;
    if (r < 0) return false;
    const cx = Math.fround((i % width + 0.5) / width), cy = Math.fround((Math.floor(i / width) + 0.5) / H);
    const [x0, y0, x1, y1] = [0, 1, 2, 3].map((c) => boxes[b * cols + keys + 4 * r + c]!) as [number, number, number, number];
    return !(cx >= x0 && cy >= y0 && cx < x1 && cy < y1);
  };
}

/** softmax(scale·q·kᵀ) · v per (batch, head); `hidden` masks keys (−inf; a row with every key masked gives 0). */
export function attention(q: A, qs: Shape, k: A, ks: Shape, v: A, vs: Shape, heads: number, scale: number | undefined, causal: boolean, capture: boolean, at?: { out: number; idx: number[] }, hidden?: (b: number, i: number, j: number) => boolean): Float64Array[] {
  const [B, Nq, Dq] = qs as [number, number, number];
  const Nk = ks[1]!, d = Dq / heads, dv = vs[2]! / heads;
  const sc = scale ?? 1 / Math.sqrt(d);
  const rows = new Map<number, { p: Float64Array; o: Float64Array }>();
  // Row (bi, h, i): the probabilities over the keys and the dv outputs of that head.
  const row = (bi: number, h: number, i: number) => {
    const key = (bi * heads + h) * Nq + i;
    let r = rows.get(key);
    if (r) return r;
    const s = new Float64Array(Nk);
    let mx = -Infinity;
    for (let j = 0; j < Nk; j++) {
      let acc = 0;
      for (let c = 0; c < d; c++) acc += q[(bi * Nq + i) * Dq + h * d + c]! * k[(bi * Nk + j) * Dq + h * d + c]!;
      s[j] = (causal && j > i) || hidden?.(bi, i, j) ? -Infinity : acc * sc;
      mx = Math.max(mx, s[j]!);  // NaN scores make the row NaN, as in torch
    }
    if (mx === -Infinity) s.fill(0);  // every key hidden by the regions: p = 0, o = 0
    else {
      let sum = 0;
      for (let j = 0; j < Nk; j++) sum += s[j] = Math.exp(s[j]! - mx);
      for (let j = 0; j < Nk; j++) s[j] = s[j]! / sum;
    }
    const o = new Float64Array(dv);
    for (let c = 0; c < dv; c++) {
      let acc = 0;
      for (let j = 0; j < Nk; j++) acc += s[j]! * v[(bi * Nk + j) * heads * dv + h * dv + c]!;
      o[c] = acc;
    }
    r = { p: s, o };
    if (at) rows.set(key, r);
    return r;
  };
  if (at) {
    return [Float64Array.from(at.idx, (e) => {
      if (at.out === 1) return row(Math.floor(e / (heads * Nq * Nk)), Math.floor(e / (Nq * Nk)) % heads, Math.floor(e / Nk) % Nq).p[e % Nk]!;
      const c = e % dv, h = Math.floor(e / dv) % heads, i = Math.floor(e / (dv * heads)) % Nq, bi = Math.floor(e / (dv * heads * Nq));
      return row(bi, h, i).o[c]!;
    })];
  }
  const o = new Float64Array(B * Nq * heads * dv);
  const p = new Float64Array(B * heads * Nq * Nk);
  for (let bi = 0; bi < B; bi++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < Nq; i++) {
        const r = row(bi, h, i);
        p.set(r.p, ((bi * heads + h) * Nq + i) * Nk);
        o.set(r.o, (bi * Nq + i) * heads * dv + h * dv);
      }
  return capture ? [o, p] : [o];
}

/** erf to ~1e-15: the Maclaurin series below 3, erfc's continued fraction above. */
export function erf(x: number): number {
  const a = Math.abs(x);
  if (!Number.isFinite(a)) return Number.isNaN(x) ? NaN : Math.sign(x);
  if (a < 3) {
    let term = a, sum = a;
    for (let n = 1; n < 200 && Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
      term *= (-a * a) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(a) = exp(−a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))), evaluated from the tail.
  let f = a;
  for (let n = 60; n >= 1; n--) f = a + n / 2 / f;
  return Math.sign(x) * (1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / f);
}

export const unary = {
  gelu: (v: number): number => 0.5 * v * (1 + erf(v / Math.SQRT2)),
  quick_gelu: (v: number): number => v / (1 + Math.exp(-1.702 * v)),
  silu,
  relu: (v: number): number => (v > 0 || Number.isNaN(v) ? v : 0),
  tanh: Math.tanh,
};

export function map(x: A, f: (v: number) => number): Float64Array {
  const y = new Float64Array(x.length);  // a loop: Float64Array.from(x, f) is several times slower
  for (let i = 0; i < x.length; i++) y[i] = f(x[i]!);
  return y;
}

export function geglu(x: A, xs: Shape): Float64Array {
  const F = xs[xs.length - 1]! / 2, rows = numel(xs) / (2 * F);
  const y = new Float64Array(rows * F);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < F; i++) y[r * F + i] = x[r * 2 * F + i]! * unary.gelu(x[r * 2 * F + F + i]!);
  return y;
}

/** numpy broadcasting of a and b (right aligned). */
export function broadcast(a: A, as: Shape, b: A, bs: Shape, f: (x: number, y: number) => number): Float64Array {
  const R = Math.max(as.length, bs.length);
  const dim = (s: Shape, i: number) => (i < R - s.length ? 1 : s[i - (R - s.length)]!);
  const os = Array.from({ length: R }, (_, i) => Math.max(dim(as, i), dim(bs, i)));
  const y = new Float64Array(numel(os));
  for (let e = 0; e < y.length; e++) {
    let rem = e, ia = 0, ib = 0, sa = 1, sb = 1;
    for (let i = R - 1; i >= 0; i--) {
      const c = rem % os[i]!;
      rem = Math.floor(rem / os[i]!);
      const da = dim(as, i), db = dim(bs, i);
      ia += (da === 1 ? 0 : c) * sa;
      ib += (db === 1 ? 0 : c) * sb;
      sa *= da;
      sb *= db;
    }
    y[e] = f(a[ia]!, b[ib]!);
  }
  return y;
}

export function upsample2x(x: A, xs: Shape): Float64Array {
  const [B, C, H, W] = xs as [number, number, number, number];
  const y = new Float64Array(B * C * 4 * H * W);
  for (let p = 0; p < B * C; p++)
    for (let i = 0; i < 2 * H; i++)
      for (let j = 0; j < 2 * W; j++) y[(p * 2 * H + i) * 2 * W + j] = x[(p * H + (i >> 1)) * W + (j >> 1)]!;
  return y;
}

export function concat(xs: A[], shapes: Shape[], axis: number): Float64Array {
  const ax = axis < 0 ? shapes[0]!.length + axis : axis;
  const outer = numel(shapes[0]!.slice(0, ax));
  const out: number[] = [];
  for (let o = 0; o < outer; o++)
    xs.forEach((x, t) => {
      const row = numel(shapes[t]!.slice(ax));
      for (let i = 0; i < row; i++) out.push(x[o * row + i]!);
    });
  return Float64Array.from(out);
}

export function permute(x: A, xs: Shape, perm: readonly number[]): Float64Array {
  const os = perm.map((p) => xs[p]!);
  const st = strides(xs);
  const y = new Float64Array(numel(xs));
  for (let e = 0; e < y.length; e++) {
    let rem = e, off = 0;
    for (let i = os.length - 1; i >= 0; i--) {
      off += (rem % os[i]!) * st[perm[i]!]!;
      rem = Math.floor(rem / os[i]!);
    }
    y[e] = x[off]!;
  }
  return y;
}

export function slice(x: A, xs: Shape, axis: number, start: number, end: number): Float64Array {
  const ax = axis < 0 ? xs.length + axis : axis;
  const outer = numel(xs.slice(0, ax)), inner = numel(xs.slice(ax + 1)), d = xs[ax]!;
  const out: number[] = [];
  for (let o = 0; o < outer; o++)
    for (let i = start; i < end; i++) for (let k = 0; k < inner; k++) out.push(x[(o * d + i) * inner + k]!);
  return Float64Array.from(out);
}

/** Frequencies rounded to float32 as PyTorch's float32 reference computes them. */
export function timestepEmb(t: A, dim: number, flip: boolean, shift: number, maxPeriod = 10000): Float64Array {
  const half = Math.floor(dim / 2);
  const y = new Float64Array(t.length * dim);
  for (let b = 0; b < t.length; b++)
    for (let i = 0; i < half; i++) {
      const f = Math.fround(Math.exp(Math.fround(Math.fround(-Math.log(maxPeriod)) * i) / Math.fround(half - shift)));
      const arg = Math.fround(t[b]! * f);
      y[b * dim + i] = flip ? Math.cos(arg) : Math.sin(arg);
      y[b * dim + half + i] = flip ? Math.sin(arg) : Math.cos(arg);
    }
  return y;
}

export function embedding(ids: A, table: A, D: number): Float64Array {
  const y = new Float64Array(ids.length * D);
  for (let r = 0; r < ids.length; r++) for (let c = 0; c < D; c++) y[r * D + c] = table[ids[r]! * D + c]!;
  return y;
}

export function inject(x: A, slots: A, vectors: A, D: number): Float64Array {
  const y = Float64Array.from(x as ArrayLike<number>);
  for (let r = 0; r < slots.length; r++)
    if (slots[r]! >= 0) for (let c = 0; c < D; c++) y[r * D + c] = vectors[slots[r]! * D + c]!;
  return y;
}

export function cfg(e: A, scale: number): Float64Array {
  const n = e.length / 2;
  return Float64Array.from({ length: n }, (_, i) => e[i]! + scale * (e[n + i]! - e[i]!));
}

/** SAMPLER_STEP (native/backend.h): coefficients c = the bits of [next_in, cx, ce, clip, px, p0, pe, pp, pn]. */
export function samplerStep(x: A, m: A, st: A, bits: Int32Array, z: A | undefined): Float64Array[] {
  const [nextIn, cx, ce, clip, px, p0, pe, pp, pn] = new Float32Array(bits.buffer, bits.byteOffset, 9);
  const n = x.length;
  const out = [new Float64Array(n), new Float64Array(n), new Float64Array(n)];
  for (let i = 0; i < n; i++) {
    let x0 = cx! * x[i]! + ce! * m[i]!;
    if (clip! > 0) x0 = Math.min(clip!, Math.max(-clip!, x0));
    const xn = px! * x[i]! + p0! * x0 + pe! * m[i]! + pp! * st[i]! + (z ? pn! * z[i]! : 0);
    out[0]![i] = xn;
    out[1]![i] = x0;
    out[2]![i] = nextIn! * xn;
  }
  return out;
}

/**
 * ADAM_STEP (native/backend.h): c = the bits of [lr, β1, β2, ε, c1, c2, clip, _]; gsq the squared
 * global gradient norm (clipping), non-finite → nothing changes.
 */
export function adamStep(p: A, g: A, m: A, v: A, bits: Int32Array, gsq: A | undefined): Float64Array[] {
  const [lr, b1, b2, eps, c1, c2, clip] = new Float32Array(bits.buffer, bits.byteOffset, 8) as unknown as number[];
  const n = p.length;
  const out = [Float64Array.from(p), Float64Array.from(m), Float64Array.from(v)];
  if (gsq && !Number.isFinite(gsq[0]!)) return out;
  const s = gsq && clip! > 0 && gsq[0]! > 0 ? Math.min(1, clip! / Math.sqrt(gsq[0]!)) : 1;
  for (let i = 0; i < n; i++) {
    const gi = s * g[i]!;
    const mi = b1! * m[i]! + (1 - b1!) * gi;
    const vi = b2! * v[i]! + (1 - b2!) * gi * gi;
    out[0]![i] = p[i]! - (lr! * (mi / c1!)) / (Math.sqrt(vi / c2!) + eps!);
    out[1]![i] = mi;
    out[2]![i] = vi;
  }
  return out;
}

/** x summed down to `os` (right aligned, extents 1 or equal). */
export function reduceSum(x: A, xs: Shape, os: Shape): Float64Array {
  const y = new Float64Array(numel(os));
  const R = xs.length, off = R - os.length;
  const ost = strides(os);
  for (let e = 0; e < x.length; e++) {
    let rem = e, o = 0;
    for (let i = R - 1; i >= 0; i--) {
      const c = rem % xs[i]!;
      rem = Math.floor(rem / xs[i]!);
      if (i >= off && os[i - off]! !== 1) o += c * ost[i - off]!;
    }
    y[o] = y[o]! + x[e]!;
  }
  return y;
}
