/**
 * The SeFi-IDE token generator: the learned parameters of one identity. A small pre-norm
 * transformer block of width D — two self-attention layers and one feed-forward layer, each
 * `x ← x + f(LayerNorm(x))` — reads the token embedding of the init word ("person"), and a final
 * linear map turns the result into 2·S vectors of width D: P_0^K … P_{S−1}^K, P_0^V … P_{S−1}^V.
 *
 * Initialisation (so that every output starts at the init word's embedding e0 and the first
 * steps move the tokens, not noise): the output projections of the residual branches (attention
 * W_o, feed-forward W_2) and the final map's weight are zero, the final map's bias is e0 repeated
 * 2·S times; the other weights are small seeded normals (σ = 0.02), norms are (1, 0).
 * With zero output weights the first gradients reach only the final map; from the second step on
 * every parameter receives a gradient.
 *
 * The input sequence is the single init token, so each attention's softmax is over one key (≡ 1)
 * and the layer computes W_o·(W_v·LN(x) + b_v) + b_o; the code is the general single-head
 * attention over L tokens (kept general so that several init words could be used). The feed-
 * forward layer is D → 4D → D with the tanh GELU. Forward and backward run in TypeScript on
 * Float64Arrays (the block is tiny next to the UNet); Adam updates all parameters.
 */
import { normalGenerator } from '../sched/random.js';
import { Adam } from '../optim/adam.js';

export interface GeneratorShape {
  dim: number;
  stages: number;
}

type Params = Map<string, Float64Array>;

function linF(x: Float64Array, L: number, inD: number, W: Float64Array, b: Float64Array, outD: number): Float64Array {
  const y = new Float64Array(L * outD);
  for (let l = 0; l < L; l++)
    for (let o = 0; o < outD; o++) {
      let s = b[o]!;
      const wr = o * inD;
      const xr = l * inD;
      for (let i = 0; i < inD; i++) s += W[wr + i]! * x[xr + i]!;
      y[l * outD + o] = s;
    }
  return y;
}

/** Accumulates dW, db; returns dx. */
function linB(x: Float64Array, L: number, inD: number, W: Float64Array, dy: Float64Array, outD: number, dW: Float64Array, db: Float64Array): Float64Array {
  const dx = new Float64Array(L * inD);
  for (let l = 0; l < L; l++)
    for (let o = 0; o < outD; o++) {
      const g = dy[l * outD + o]!;
      if (g === 0) continue;
      db[o]! += g;
      const wr = o * inD;
      const xr = l * inD;
      for (let i = 0; i < inD; i++) {
        dW[wr + i]! += g * x[xr + i]!;
        dx[xr + i]! += g * W[wr + i]!;
      }
    }
  return dx;
}

const LN_EPS = 1e-5;
interface LnCache { xh: Float64Array; rstd: Float64Array }

function lnF(x: Float64Array, L: number, D: number, g: Float64Array, b: Float64Array): { y: Float64Array; c: LnCache } {
  const y = new Float64Array(L * D);
  const xh = new Float64Array(L * D);
  const rstd = new Float64Array(L);
  for (let l = 0; l < L; l++) {
    let m = 0;
    for (let i = 0; i < D; i++) m += x[l * D + i]!;
    m /= D;
    let v = 0;
    for (let i = 0; i < D; i++) v += (x[l * D + i]! - m) ** 2;
    v /= D;
    const r = 1 / Math.sqrt(v + LN_EPS);
    rstd[l] = r;
    for (let i = 0; i < D; i++) {
      const h = (x[l * D + i]! - m) * r;
      xh[l * D + i] = h;
      y[l * D + i] = h * g[i]! + b[i]!;
    }
  }
  return { y, c: { xh, rstd } };
}

function lnB(c: LnCache, L: number, D: number, g: Float64Array, dy: Float64Array, dg: Float64Array, db: Float64Array): Float64Array {
  const dx = new Float64Array(L * D);
  for (let l = 0; l < L; l++) {
    let s1 = 0;
    let s2 = 0;
    for (let i = 0; i < D; i++) {
      const d = dy[l * D + i]!;
      const h = c.xh[l * D + i]!;
      dg[i]! += d * h;
      db[i]! += d;
      const gh = d * g[i]!;
      s1 += gh;
      s2 += gh * h;
    }
    s1 /= D;
    s2 /= D;
    for (let i = 0; i < D; i++) {
      const gh = dy[l * D + i]! * g[i]!;
      dx[l * D + i] = c.rstd[l]! * (gh - s1 - c.xh[l * D + i]! * s2);
    }
  }
  return dx;
}

const GC = Math.sqrt(2 / Math.PI);
function gelu(x: number): number {
  return 0.5 * x * (1 + Math.tanh(GC * (x + 0.044715 * x ** 3)));
}
function geluGrad(x: number): number {
  const u = GC * (x + 0.044715 * x ** 3);
  const th = Math.tanh(u);
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * GC * (1 + 3 * 0.044715 * x * x);
}

export class TokenGenerator {
  readonly dim: number;
  readonly stages: number;
  readonly params: Params = new Map();
  readonly #opt = new Adam<Float64Array>();
  /** The init word's embedding (the block's input). */
  readonly input: Float64Array;

  constructor(init: ArrayLike<number>, shape: GeneratorShape, seed = 0) {
    const D = shape.dim;
    this.dim = D;
    this.stages = shape.stages;
    this.input = Float64Array.from(init);
    const rnd = normalGenerator(seed);
    const normal = (n: number) => Float64Array.from({ length: n }, () => 0.02 * rnd());
    const ones = (n: number) => new Float64Array(n).fill(1);
    for (const l of ['attn0', 'attn1']) {
      this.params.set(`${l}.ln.w`, ones(D));
      this.params.set(`${l}.ln.b`, new Float64Array(D));
      for (const p of ['q', 'k', 'v']) {
        this.params.set(`${l}.${p}.w`, normal(D * D));
        this.params.set(`${l}.${p}.b`, new Float64Array(D));
      }
      this.params.set(`${l}.o.w`, new Float64Array(D * D));
      this.params.set(`${l}.o.b`, new Float64Array(D));
    }
    this.params.set('ff.ln.w', ones(D));
    this.params.set('ff.ln.b', new Float64Array(D));
    this.params.set('ff.1.w', normal(4 * D * D));
    this.params.set('ff.1.b', new Float64Array(4 * D));
    this.params.set('ff.2.w', new Float64Array(4 * D * D));
    this.params.set('ff.2.b', new Float64Array(D));
    const n = 2 * shape.stages;
    this.params.set('out.w', new Float64Array(n * D * D));
    const b = new Float64Array(n * D);
    for (let i = 0; i < n; i++) b.set(this.input, i * D);
    this.params.set('out.b', b);
  }

  get parameterCount(): number {
    let n = 0;
    for (const v of this.params.values()) n += v.length;
    return n;
  }

  private p(k: string): Float64Array {
    return this.params.get(k)!;
  }

  /** Forward pass: the 2·S output vectors [2S·D] (K tokens first) and what backward needs. */
  forward(): { out: Float64Array; tape: unknown } {
    const D = this.dim;
    const L = 1;
    let x = this.input;
    const tape: Record<string, unknown>[] = [];
    for (const l of ['attn0', 'attn1']) {
      const ln = lnF(x, L, D, this.p(`${l}.ln.w`), this.p(`${l}.ln.b`));
      const q = linF(ln.y, L, D, this.p(`${l}.q.w`), this.p(`${l}.q.b`), D);
      const k = linF(ln.y, L, D, this.p(`${l}.k.w`), this.p(`${l}.k.b`), D);
      const v = linF(ln.y, L, D, this.p(`${l}.v.w`), this.p(`${l}.v.b`), D);
      const P = new Float64Array(L * L);
      const sc = 1 / Math.sqrt(D);
      for (let i = 0; i < L; i++) {
        let mx = -Infinity;
        for (let j = 0; j < L; j++) {
          let s = 0;
          for (let c = 0; c < D; c++) s += q[i * D + c]! * k[j * D + c]!;
          P[i * L + j] = s * sc;
          mx = Math.max(mx, s * sc);
        }
        let sum = 0;
        for (let j = 0; j < L; j++) sum += P[i * L + j] = Math.exp(P[i * L + j]! - mx);
        for (let j = 0; j < L; j++) P[i * L + j]! /= sum;
      }
      const o = new Float64Array(L * D);
      for (let i = 0; i < L; i++)
        for (let j = 0; j < L; j++)
          for (let c = 0; c < D; c++) o[i * D + c]! += P[i * L + j]! * v[j * D + c]!;
      const y = linF(o, L, D, this.p(`${l}.o.w`), this.p(`${l}.o.b`), D);
      tape.push({ x, ln, q, k, v, P, o });
      x = x.map((xv, i) => xv + y[i]!);
    }
    const ln = lnF(x, L, D, this.p('ff.ln.w'), this.p('ff.ln.b'));
    const h = linF(ln.y, L, D, this.p('ff.1.w'), this.p('ff.1.b'), 4 * D);
    const a = h.map(gelu);
    const y = linF(a, L, 4 * D, this.p('ff.2.w'), this.p('ff.2.b'), D);
    tape.push({ x, ln, h, a });
    x = x.map((xv, i) => xv + y[i]!);
    const out = linF(x, L, D, this.p('out.w'), this.p('out.b'), 2 * this.stages * D);
    tape.push({ x });
    return { out, tape };
  }

  /** Parameter gradients for an output gradient dOut [2S·D]. */
  backward(tape: unknown, dOut: ArrayLike<number>): Params {
    const D = this.dim;
    const L = 1;
    const t = tape as Record<string, any>[]; // eslint-disable-line @typescript-eslint/no-explicit-any
    const grads: Params = new Map();
    for (const [k, v] of this.params) grads.set(k, new Float64Array(v.length));
    const gr = (k: string) => grads.get(k)!;
    let dx = linB(t[3]!.x, L, D, this.p('out.w'), Float64Array.from(dOut), 2 * this.stages * D, gr('out.w'), gr('out.b'));
    {
      const { ln, h, a } = t[2]!;
      const da = linB(a, L, 4 * D, this.p('ff.2.w'), dx, D, gr('ff.2.w'), gr('ff.2.b'));
      const dh = da.map((d, i) => d * geluGrad(h[i]));
      const dln = linB(ln.y, L, D, this.p('ff.1.w'), dh, 4 * D, gr('ff.1.w'), gr('ff.1.b'));
      const dxl = lnB(ln.c, L, D, this.p('ff.ln.w'), dln, gr('ff.ln.w'), gr('ff.ln.b'));
      dx = dx.map((d, i) => d + dxl[i]!);
    }
    for (const [idx, l] of [[1, 'attn1'], [0, 'attn0']] as const) {
      const { ln, q, k, v, P, o } = t[idx]!;
      const dO = linB(o, L, D, this.p(`${l}.o.w`), dx, D, gr(`${l}.o.w`), gr(`${l}.o.b`));
      const sc = 1 / Math.sqrt(D);
      const dq = new Float64Array(L * D);
      const dk = new Float64Array(L * D);
      const dv = new Float64Array(L * D);
      for (let i = 0; i < L; i++) {
        const dP = new Float64Array(L);
        for (let j = 0; j < L; j++) {
          let s = 0;
          for (let c = 0; c < D; c++) {
            s += dO[i * D + c]! * v[j * D + c];
            dv[j * D + c]! += P[i * L + j] * dO[i * D + c]!;
          }
          dP[j] = s;
        }
        let dot = 0;
        for (let j = 0; j < L; j++) dot += dP[j]! * P[i * L + j];
        for (let j = 0; j < L; j++) {
          const ds = P[i * L + j] * (dP[j]! - dot) * sc;
          for (let c = 0; c < D; c++) {
            dq[i * D + c]! += ds * k[j * D + c];
            dk[j * D + c]! += ds * q[i * D + c];
          }
        }
      }
      const dln = new Float64Array(L * D);
      for (const [name, d] of [['q', dq], ['k', dk], ['v', dv]] as const) {
        const r = linB(ln.y, L, D, this.p(`${l}.${name}.w`), d, D, gr(`${l}.${name}.w`), gr(`${l}.${name}.b`));
        for (let i = 0; i < r.length; i++) dln[i]! += r[i]!;
      }
      const dxl = lnB(ln.c, L, D, this.p(`${l}.ln.w`), dln, gr(`${l}.ln.w`), gr(`${l}.ln.b`));
      dx = dx.map((d, i) => d + dxl[i]!);
    }
    return grads;
  }

  /** One Adam step (lib/optim/adam.ts: β 0.9 / 0.999, ε 1e-8, no weight decay). */
  adam(grads: Params, lr: number): void {
    this.#opt.step(this.params, grads, lr);
  }

  /** The K and V vectors as float32 [S, 1, D] each. */
  vectors(out?: Float64Array): { k: Float32Array; v: Float32Array } {
    const o = out ?? this.forward().out;
    const n = this.stages * this.dim;
    return { k: Float32Array.from(o.subarray(0, n)), v: Float32Array.from(o.subarray(n, 2 * n)) };
  }
}
