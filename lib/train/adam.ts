/**
 * Adam (Kingma & Ba; β 0.9 / 0.999, ε 1e-8, no weight decay): the one optimizer of idforge, used
 * by SeFi-IDE's token generator (lib/learn/generator.ts, float64 parameters) and by the ID-encoder
 * trainer (lib/train/, float32 parameters). The moments have their parameter's precision. The
 * state (step count and moments) is what a training checkpoint stores to resume bit for bit.
 */
import { IdforgeError } from '../errors.js';

export type ParamArray = Float32Array | Float64Array;

export interface AdamOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
}

export class Adam<P extends ParamArray = ParamArray> {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** Steps taken (bias correction uses it). */
  t = 0;
  readonly m = new Map<string, P>();
  readonly v = new Map<string, P>();

  constructor(opts: AdamOptions = {}) {
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
  }

  #moment(map: Map<string, P>, name: string, like: P): P {
    let a = map.get(name);
    if (!a) {
      a = new (like.constructor as new (n: number) => P)(like.length);
      map.set(name, a);
    }
    if (a.length !== like.length) throw new IdforgeError('E_INTERNAL', `adam: parameter '${name}' changed size`);
    return a;
  }

  /** One step over every parameter that has a gradient: p ← p − lr·m̂/(√v̂ + ε), in place. */
  step(params: Map<string, P>, grads: ReadonlyMap<string, ArrayLike<number>>, lr: number): void {
    this.t++;
    const { beta1: b1, beta2: b2, eps } = this;
    const c1 = 1 - b1 ** this.t;
    const c2 = 1 - b2 ** this.t;
    for (const [k, p] of params) {
      const g = grads.get(k);
      if (!g) continue;
      const m = this.#moment(this.m, k, p);
      const v = this.#moment(this.v, k, p);
      for (let i = 0; i < p.length; i++) {
        const gi = g[i]!;
        m[i] = b1 * m[i]! + (1 - b1) * gi;
        v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
        p[i]! -= (lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + eps);
      }
    }
  }
}
