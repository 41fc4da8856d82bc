import { IdforgeError, throwIfAborted } from '../errors.js';
import type { TensorRef } from '../io/checkpoint.js';
import { Tensor, type DType } from '../tensor.js';
import type { Graph, Value } from './graph.js';
import type { BackendSpec } from './program.js';

const ST_TO_DTYPE: Record<string, DType> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

/**
 * One model component's weights on one backend: each tensor is read from its file on first use,
 * converted to the backend's compute dtype and kept resident (uploaded once).
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

  tensor(name: string): Tensor {
    let t = this.#loaded.get(name);
    if (t && !t.disposed) return t;
    const r = this.ref(name);
    const src = ST_TO_DTYPE[r.dtype];
    t = src
      ? Tensor.fromBytes(r.readBytes(), src, r.shape, this.backend.dtype, this.backend.device, this.backend.stream ?? 0)
      : Tensor.from(r.readFloat32(), r.shape, this.backend);
    this.#loaded.set(name, t);
    return t;
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

/** Builders shared by the model graphs. */
export function linearW(g: Graph, w: Weights, x: Value, prefix: string, opts: { residual?: Value; transX?: boolean; transY?: boolean } = {}): Value {
  let wt = w.in(g, `${prefix}.weight`);
  // A 1x1 conv kernel [O, C, 1, 1] serves as the weight [O, C] (a constant view: no copy per run).
  if (wt.rank === 4 && wt.dim(2) === 1 && wt.dim(3) === 1) wt = g.reshape(wt, [wt.dim(0), wt.dim(1)]);
  return g.linear(x, wt, w.maybe(g, `${prefix}.bias`), opts);
}

/**
 * A conv layer. `residual` is added in the conv's epilogue (Graph.conv2d); `addBias` [B, O] is
 * added to the layer's own bias (a tiny ADD when it has one) and the sum becomes the conv's
 * per-image bias, so a per-image shift of the output (a resnet's time embedding) costs nothing.
 */
export function convW(
  g: Graph, w: Weights, x: Value, prefix: string,
  opts: { stride?: number; pad?: number; residual?: Value; addBias?: Value } = {},
): Value {
  const k = w.shape(`${prefix}.weight`)[2]!;
  const own = w.maybe(g, `${prefix}.bias`);
  const bias = opts.addBias ? (own ? g.add(opts.addBias, own) : opts.addBias) : own;
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
