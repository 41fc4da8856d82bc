import { IdforgeError, throwIfAborted } from '../errors.js';
import type { TensorRef } from '../io/checkpoint.js';
import { checkWeightFinite } from '../numeric.js';
import { Tensor, type DType } from '../tensor.js';
import type { Graph, Value } from './graph.js';
import type { BackendSpec } from './program.js';

const ST_TO_DTYPE: Record<string, DType> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

/**
 * One model component's weights on one backend: each tensor is read from its file on first use,
 * converted to the backend's compute dtype (or, with `backend.weights`, matrices and kernels to
 * float16; vectors such as biases and norm scales, a rounding error of the memory, stay in the
 * compute dtype) and kept resident (uploaded once).
 */
export class Weights implements Disposable {
  readonly #loaded = new Map<string, Tensor>();

  constructor(
    readonly component: string,
    readonly refs: Map<string, TensorRef>,
    readonly backend: BackendSpec,
  ) {}

  has(name: string): boolean {
    return this.refs.has(name);
  }

  shape(name: string): number[] {
    return [...this.ref(name).shape];
  }

  private ref(name: string): TensorRef {
    const r = this.refs.get(name);
    if (!r) throw new IdforgeError('E_MODEL_FORMAT', `${this.component}: the model has no weight '${name}'`);
    return r;
  }

  /** Keeps a freshly uploaded weight resident once it is known finite (no NaN image from a broken checkpoint). */
  #keep(key: string, t: Tensor, file: string): Tensor {
    try {
      checkWeightFinite(t, this.component, key, file);
    } catch (e) {
      t.dispose();
      throw e;
    }
    this.#loaded.set(key, t);
    return t;
  }

  tensor(name: string): Tensor {
    const t = this.#loaded.get(name);
    if (t && !t.disposed) return t;
    return this.#keep(name, this.fromFile(name), this.ref(name).file);
  }

  /**
   * A new upload of the weight as its file holds it, not kept: what the resident tensor held when
   * loaded (a LoRA merge's base, lib/runtime/lora.ts: the resident one may have been changed since).
   */
  fromFile(name: string): Tensor {
    const r = this.ref(name);
    const src = ST_TO_DTYPE[r.dtype];
    const dtype = this.backend.weights && r.shape.length >= 2 ? this.backend.weights : this.backend.dtype;
    return src
      ? Tensor.fromBytes(r.readBytes(), src, r.shape, dtype, this.backend.device, this.backend.stream ?? 0)
      : Tensor.from(r.readFloat32(), r.shape, { ...this.backend, dtype });
  }

  /**
   * Loads every weight not yet resident, one tensor at a time, yielding to the event loop between
   * tensors: SD 1.5's 3.4 GB would otherwise block a server for seconds, and an abort could not
   * interrupt it.
   */
  async preload(signal?: AbortSignal, only?: (name: string) => boolean): Promise<void> {
    for (const name of this.refs.keys()) {
      if (this.#loaded.has(name) || (only && !only(name))) continue;
      throwIfAborted(signal, `loading ${this.component} weights`);
      this.tensor(name);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** The weight as a graph constant. */
  in(g: Graph, name: string): Value {
    return g.constant(this.tensor(name));
  }

  /**
   * a + b as one graph constant, summed on the host when first used (in float32, rounded once to
   * the compute dtype): two biases that always add (a resnet's time-projection bias and its conv1
   * bias) then cost no ADD per step.
   */
  sum(g: Graph, a: string, b: string): Value {
    const key = `${a} + ${b}`;
    let t = this.#loaded.get(key);
    if (!t || t.disposed) {
      const ra = this.ref(a), rb = this.ref(b);
      if (ra.shape.length !== rb.shape.length || ra.shape.some((d, i) => d !== rb.shape[i]))
        throw new IdforgeError('E_MODEL_FORMAT', `${this.component}: '${a}' ${JSON.stringify(ra.shape)} and '${b}' ${JSON.stringify(rb.shape)} should have one shape`);
      const x = ra.readFloat32();
      const y = rb.readFloat32();
      for (let i = 0; i < x.length; i++) x[i]! += y[i]!;
      t = this.#keep(key, Tensor.from(x, ra.shape, this.backend), ra.file);
    }
    return g.constant(t);
  }

  /** The weight as a graph constant, or undefined when the model does not have it. */
  maybe(g: Graph, name: string): Value | undefined {
    return this.has(name) ? this.in(g, name) : undefined;
  }

  get residentBytes(): number {
    let n = 0;
    for (const t of this.#loaded.values()) if (!t.disposed) n += t.handle.nbytes;
    return n;
  }

  dispose(): void {
    for (const t of this.#loaded.values()) t.dispose();
    this.#loaded.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Shape-only stand-ins for a component's weights (no data, no device): enough to build a graph
 * and count its ops or plan its memory (lib/learn/plan.ts, tests).
 */
export class ShapeWeights extends Weights {
  constructor(name: string, entries: readonly { name: string; shape: readonly number[] }[]) {
    super(name, new Map(entries.map((e) => [e.name, { shape: [...e.shape], dtype: 'F32' } as unknown as TensorRef])), { device: 'cpu', dtype: 'float32' });
  }
  override tensor(name: string): Tensor {
    return { shape: this.shape(name) } as unknown as Tensor;
  }
  override sum(g: Graph, a: string): Value {
    return g.constant(this.tensor(a));
  }
}

/** Builders shared by the model graphs. */
export function linearW(g: Graph, w: Weights, x: Value, prefix: string, opts: { residual?: Value; transX?: boolean; transY?: boolean } = {}): Value {
  let wt = w.in(g, `${prefix}.weight`);
  // A 1x1 conv kernel [O, C, 1, 1] serves as the weight [O, C] (a constant view: no copy per run).
  if (wt.rank === 4 && wt.dim(2) === 1 && wt.dim(3) === 1) wt = g.reshape(wt, [wt.dim(0), wt.dim(1)]);
  return g.linear(x, wt, w.maybe(g, `${prefix}.bias`), opts);
}

/**
 * A conv layer. `residual` is added in the conv's epilogue (Graph.conv2d); `bias` replaces the
 * layer's own bias: a per-image [B, O] one (a resnet's time embedding, with the layer's own bias
 * already folded in by the caller) makes a per-image shift of the output cost nothing.
 */
export function convW(
  g: Graph, w: Weights, x: Value, prefix: string,
  opts: { stride?: number; pad?: number; residual?: Value; bias?: Value } = {},
): Value {
  const k = w.shape(`${prefix}.weight`)[2]!;
  const bias = opts.bias ?? w.maybe(g, `${prefix}.bias`);
  return g.conv2d(x, w.in(g, `${prefix}.weight`), bias, {
    stride: opts.stride ?? 1,
    pad: opts.pad ?? (k - 1) / 2,
    ...(opts.residual ? { residual: opts.residual } : {}),
  });
}

export function groupNormW(g: Graph, w: Weights, x: Value, prefix: string, opts: { groups: number; eps: number; silu?: boolean }): Value {
  return g.groupNorm(x, w.in(g, `${prefix}.weight`), w.in(g, `${prefix}.bias`), opts);
}

export function layerNormW(g: Graph, w: Weights, x: Value, prefix: string, eps: number): Value {
  return g.layerNorm(x, w.in(g, `${prefix}.weight`), w.in(g, `${prefix}.bias`), { eps });
}

/** [B, C, H, W] → [B, H·W, C] */
export function toTokens(g: Graph, x: Value): Value {
  const [b, c, h, wd] = x.shape as [number, number, number, number];
  return g.reshape(g.permute(x, [0, 2, 3, 1]), [b, h * wd, c]);
}
