/**
 * Adam (Kingma & Ba; β 0.9 / 0.999, ε 1e-8, no weight decay): the one optimizer of idforge.
 *  - On the device (the ADAM_STEP op, native/backend.h; adamCoefficients below): every training
 *    update — the ID-encoder trainer's and SeFi-IDE's token generator's — fused into the
 *    training-step program and applied in place to the resident weights
 *    (lib/optim/device-adam.ts), with global-norm clipping on the device.
 *  - On the host (the Adam class): the reference the device update is tested against.
 * Both apply the same step: p ← p − lr·(m/c1)/(√(v/c2) + ε) with the bias corrections
 * c1 = 1 − β1^t, c2 = 1 − β2^t. The state (step count and moments) is what a training checkpoint
 * stores to resume bit for bit.
 */
import { IdforgeError } from '../errors.js';

export type ParamArray = Float32Array | Float64Array;

export interface AdamOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
}

/** The hyperparameters with their defaults filled in (both the host and the device step use these). */
function hyper(o: AdamOptions): Required<AdamOptions> {
  return { beta1: o.beta1 ?? 0.9, beta2: o.beta2 ?? 0.999, eps: o.eps ?? 1e-8 };
}

/** Length of ADAM_STEP's coefficient input. */
export const ADAM_COEFS = 8;

/**
 * ADAM_STEP's coefficient input for step t (1-based) as int32 (the bits of the float32 values
 * [lr, β1, β2, ε, c1, c2, clip, 0], native/backend.h AdamCoefs): a program input, so one compiled
 * training step serves every step and learning rate. clip ≤ 0: no clipping.
 */
export function adamCoefficients(t: number, lr: number, clip: number, opts: AdamOptions = {}): Int32Array {
  const { beta1: b1, beta2: b2, eps } = hyper(opts);
  const f = Float32Array.from([lr, b1, b2, eps, 1 - b1 ** t, 1 - b2 ** t, clip > 0 ? clip : 0, 0]);
  return new Int32Array(f.buffer);
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
    ({ beta1: this.beta1, beta2: this.beta2, eps: this.eps } = hyper(opts));
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
