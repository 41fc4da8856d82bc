import { IdforgeError } from './errors.js';
import { call, native, type DType, type DeviceName, type NativeTensor } from './native.js';
import { invalid } from './validate.js';

export type { DType, DeviceName };

type Typed = Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array;
const TYPED = 'Float32Array, Float64Array, Int32Array, BigInt64Array, Uint8Array, or Uint16Array with a half dtype';
const halfDtype = () => invalid('dtype', "'float16' or 'bfloat16' for Uint16Array data (the bits are halves)");

function inferDType(data: Typed): DType {
  if (!ArrayBuffer.isView(data) || data instanceof DataView)
    throw invalid('tensor data', `a typed array (${TYPED})`, data);
  if (data instanceof Float32Array || data instanceof Float64Array) return 'float32';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Uint8Array) return 'uint8';
  if (data instanceof Uint16Array) throw halfDtype();
  throw invalid('tensor data', `a supported typed array (${TYPED})`, data);
}

/** Larger than any allocation a machine can make: refused before trying (2^40 elements). */
const MAX_ELEMENTS = 2 ** 40;

function checkShape(shape: readonly number[], what = 'shape'): number[] {
  if (!Array.isArray(shape)) throw invalid(what, 'an array', shape);
  for (const d of shape)
    if (!Number.isSafeInteger(d) || d < 0)
      throw new IdforgeError('E_SHAPE', `${what} ${JSON.stringify(shape)} holds an invalid size ${d}`);
  if (numel(shape) > MAX_ELEMENTS) throw new IdforgeError('E_SHAPE', `${what} ${JSON.stringify(shape)} has more than 2^40 elements`);
  return [...shape];
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Where a new tensor is made. */
export interface TensorOptions {
  dtype?: DType;
  device?: DeviceName;
  /**
   * CUDA only: the stream the upload is queued on, an engine's `engine.backend.stream`, so that
   * the engine's programs read it without waiting for another stream. Default 0, the stream shared
   * by tensors made outside an engine; a tensor of any stream works with any engine (the engine
   * then waits for that stream first).
   */
  stream?: number;
}

/**
 * A tensor whose memory is owned by the native addon (host memory for 'cpu', device memory for
 * 'cuda'). Free it with dispose() (or `using`); the garbage collector frees it too, eventually.
 */
export class Tensor implements Disposable {
  #h: NativeTensor | null;

  /** @internal */
  constructor(handle: NativeTensor) {
    this.#h = handle;
  }

  /** A new tensor holding a copy of `data` (Float64Array is stored as float32). */
  static from(data: Typed, shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const s = checkShape(shape);
    // A view over a SharedArrayBuffer is copied: the addon reads plain ArrayBuffers only.
    if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) data = data.slice() as Typed;
    const src: DType = data instanceof Uint16Array ? (opts.dtype === 'bfloat16' ? 'bfloat16' : 'float16') : inferDType(data);
    if (data instanceof Uint16Array && opts.dtype !== 'float16' && opts.dtype !== 'bfloat16')
      throw halfDtype();
    const buf = data instanceof Float64Array ? Float32Array.from(data) : data;
    if (buf.length !== numel(s))
      throw new IdforgeError('E_SHAPE', `data has ${buf.length} elements, shape ${JSON.stringify(s)} needs ${numel(s)}`);
    const dtype = opts.dtype ?? src;
    return new Tensor(call(() => native().createTensor(dtype, s, opts.device ?? 'cpu', buf, src, opts.stream ?? 0)));
  }

  /** A tensor of `dtype` filled with zeros. */
  static zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
    const s = checkShape(shape);
    let data: Float32Array;
    try {
      data = new Float32Array(numel(s));
    } catch (e) {
      throw new IdforgeError('E_OOM', `cannot allocate a tensor of shape ${JSON.stringify(s)}`, { cause: e });
    }
    return Tensor.from(data, s, opts);
  }

  /** Raw bytes of `dtype` (converted from the tensor's dtype) as a new tensor on `device`. @internal */
  static fromBytes(bytes: ArrayBufferView, srcDtype: DType, shape: readonly number[], dtype: DType, device: DeviceName, stream = 0): Tensor {
    return new Tensor(call(() => native().createTensor(dtype, checkShape(shape), device, bytes, srcDtype, stream)));
  }

  /** @internal the native handle; throws E_DISPOSED after dispose(). */
  get handle(): NativeTensor {
    if (!this.#h || this.#h.disposed) throw new IdforgeError('E_DISPOSED', 'tensor used after dispose()');
    return this.#h;
  }

  get shape(): number[] { return this.handle.shape; }
  get dtype(): DType { return this.handle.dtype; }
  get device(): DeviceName { return this.handle.device; }
  get size(): number { return numel(this.handle.shape); }
  get disposed(): boolean { return !this.#h || this.#h.disposed; }

  /** A host copy of the elements as float32 (exact for float16/bfloat16). */
  toFloat32(): Float32Array {
    const h = this.handle;
    return new Float32Array(call(() => h.read('float32')));
  }

  /** How many elements are NaN or ±Inf, counted where the tensor lives (no host copy on CUDA). */
  countNonFinite(): number {
    const h = this.handle;
    return call(() => h.countNonFinite());
  }

  toInt32(): Int32Array {
    const h = this.handle;
    return new Int32Array(call(() => h.read('int32')));
  }

  /** A copy in another dtype and/or on another device (and CUDA stream, see TensorOptions.stream). */
  to(dtype: DType, device?: DeviceName, stream = 0): Tensor {
    const h = this.handle;
    return new Tensor(call(() => h.to(dtype, device, stream)));
  }

  /**
   * Overwrites the elements in place with `src`'s (same count), converted to this dtype: the memory
   * stays, so programs holding this tensor as a constant read the new values.
   */
  copyFrom(src: Tensor): void {
    const h = this.handle, s = src.handle;
    call(() => h.copyFrom(s));
  }

  /** The same elements under another shape (a copy). */
  reshape(shape: readonly number[]): Tensor {
    const s = checkShape(shape);
    if (numel(s) !== this.size)
      throw new IdforgeError('E_SHAPE', `cannot reshape ${JSON.stringify(this.shape)} to ${JSON.stringify(s)}`);
    const h = this.handle;
    return new Tensor(call(() => native().createTensor(h.dtype, s, h.device, new Uint8Array(h.read()), h.dtype)));
  }

  dispose(): void {
    this.#h?.dispose();
    this.#h = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return this.disposed ? 'Tensor(disposed)' : `Tensor(${this.dtype}, ${JSON.stringify(this.shape)}, ${this.device})`;
  }
}

/** Disposes every tensor given, ignoring undefined. */
export function disposeAll(...ts: (Tensor | undefined | null | Iterable<Tensor>)[]): void {
  for (const t of ts) {
    if (!t) continue;
    if (t instanceof Tensor) t.dispose();
    else for (const u of t) u.dispose();
  }
}
