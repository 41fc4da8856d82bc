/**
 * The model runtime: what every model idforge loads (SD 1.x, the M² ID encoder, a future CLIP
 * scorer or face analyser) needs in order to run, and nothing of what it computes.
 *  - one rule for device and dtype (resolveBackend): 'auto' takes CUDA when usable, float16 is
 *    CUDA's default; the CPU computes in float32, with float16 weights when asked (`weights`);
 *  - on CUDA a stream of its own (with its own cuBLAS handle and kernel-error flag), so that two
 *    models in one process run concurrently and never see each other's errors;
 *  - the resident weights, in named groups (one per model component);
 *  - a bounded LRU cache of compiled programs, keyed by what a program was built for;
 *  - a gate between calls and weight changes (shared / exclusive): a call runs start to end on one
 *    set of weights, a change (a LoRA merge) waits for the calls in flight and holds back new ones;
 *  - disposal of all of it, and of what the model hands over (its open files).
 * Model-specific program builders live on top of it (lib/runtime/sd.ts for SD 1.x); pipelines
 * (lib/engine.ts, lib/learn/, lib/dreamidentity/, lib/bench/) are its clients.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { IdforgeError } from '../errors.js';
import { Graph } from '../graph/graph.js';
import { Program, type BackendSpec, type RunOptions } from '../graph/program.js';
import { Weights } from '../graph/weights.js';
import type { TensorRef } from '../io/checkpoint.js';
import { backends, call, native } from '../native.js';
import { Tensor } from '../tensor.js';
import { invalid, validateDevice } from '../validate.js';

/** The runtimes whose shared() section the current async call is inside (nested calls pass through). */
const inside = new AsyncLocalStorage<ReadonlySet<ModelRuntime>>();

/** Runtimes that are never disposed still hand their CUDA stream back when collected. */
const streams = new FinalizationRegistry<number>((id) => {
  try {
    native().releaseStream(id);
  } catch {
    // the addon reports nothing useful to a finalizer
  }
});

/** Where a model runs; one rule for every model idforge loads (lib/runtime/runtime.ts resolveBackend). */
export interface DeviceOptions {
  /** 'auto' (default) takes CUDA when backends().cuda.available, else the CPU. */
  device?: 'auto' | 'cpu' | 'cuda';
  /** Compute precision: float16 on CUDA by default; on the CPU (float32 by default) float16 means float16 weights, computing in float32. */
  dtype?: 'float32' | 'float16';
}

/**
 * Device and dtype for `opts`: the one rule every model loader uses. 'auto' (default) is CUDA
 * when backends().cuda.available, else the CPU; dtype defaults to float16 on CUDA and float32 on
 * the CPU. The CPU computes in float32 always: dtype 'float16' there means float16 weights
 * (`weights: 'float16'`: stored as IEEE half, half the memory, converted to float32 as the GEMMs
 * pack them), activations float32. E_BACKEND when the CPU kernels cannot run (a bad IDFORGE_CPU_ISA).
 */
export function resolveBackend(opts: DeviceOptions = {}): { device: 'cpu' | 'cuda'; dtype: 'float32' | 'float16'; weights?: 'float16' } {
  const o = validateDevice(opts);
  const b = backends();
  let device: 'cpu' | 'cuda' = 'cpu';
  if (o.device === 'cuda') {
    if (!b.cuda.available) throw new IdforgeError('E_BACKEND', `device 'cuda' requested but CUDA is not available: ${b.cuda.reason}`);
    device = 'cuda';
  } else if (o.device === 'auto') {
    device = b.cuda.available ? 'cuda' : 'cpu';
  }
  const dtype = o.dtype ?? (device === 'cuda' ? 'float16' : 'float32');
  if (device === 'cpu' && dtype === 'float16') return { device, dtype: 'float32', weights: 'float16' };
  return { device, dtype };
}

/** A float32 CPU copy of a program output (disposing the original when it was elsewhere). */
export function toHost(t: Tensor): Tensor {
  if (t.device === 'cpu' && t.dtype === 'float32') return t;
  const h = t.to('float32', 'cpu');
  t.dispose();
  return h;
}

export class ModelRuntime implements Disposable {
  /** Device, dtype and (on CUDA) this runtime's own stream: what its tensors and programs use. */
  readonly backend: BackendSpec;
  /** How many compiled programs (one per input shape / option set) are kept; least recently used beyond. */
  maxPrograms = Number(process.env.IDFORGE_MAX_PROGRAMS) || 12;
  readonly #programs = new Map<string, Program>();
  readonly #weights = new Map<string, Weights>();
  /** Released at dispose(), last registered first: open files, constant tensors of programs. */
  #owned: (() => void)[] = [];
  /** The CUDA stream this runtime created (released by dispose()), 0 when none. */
  #ownStream = 0;
  #disposed = false;
  /** Calls inside shared(); an exclusive() section waits for 0. */
  #calls = 0;
  /** Settles when the exclusive section running or waiting ends; new calls wait for it. */
  #change: Promise<void> | null = null;
  #drained: (() => void) | null = null;

  /**
   * @param backend a resolved device and dtype (resolveBackend); on CUDA without a stream the
   * runtime creates one of its own.
   * @param name what error messages call this model ("engine", "IdEncoder").
   */
  constructor(backend: BackendSpec, readonly name = 'model') {
    if (backend.device === 'cuda' && backend.stream === undefined) {
      this.#ownStream = call(() => native().createStream());
      streams.register(this, this.#ownStream, this);
      backend = { ...backend, stream: this.#ownStream };
    }
    this.backend = backend;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Throws E_DISPOSED once dispose() has run. */
  assertLive(): void {
    if (this.#disposed) throw new IdforgeError('E_DISPOSED', `${this.name} used after dispose()`);
  }

  /** Registers a weight group (one model component's tensors, resident on this backend once read). */
  protected addWeights(component: string, refs: Map<string, TensorRef>): Weights {
    if (this.#weights.has(component)) throw new IdforgeError('E_INTERNAL', `weight group '${component}' exists already`);
    const w = new Weights(component, refs, this.backend);
    this.#weights.set(component, w);
    return w;
  }

  /** Releases `release` when the runtime is disposed (an open model file, a constant tensor). */
  protected adopt(release: () => void): void {
    this.#owned.push(release);
  }

  /** Resident bytes per weight group. */
  residentBytes(): Record<string, number> {
    const r: Record<string, number> = {};
    for (const [k, w] of this.#weights) r[k] = w.residentBytes;
    return r;
  }

  /**
   * The program cached under `key`, compiled from `build` on first use. The key must name
   * everything the graph depends on (shapes, options). Least recently used programs beyond
   * maxPrograms are disposed: each keeps its activation arena (and on CUDA its graph), and keys
   * include sizes and guidance, so a server sweeping them stays bounded. A program evicted while
   * a run is in flight is freed by the native side when that run ends.
   */
  program(key: string, build: (g: Graph) => void): Program {
    this.assertLive();
    let p = this.#programs.get(key);
    if (p) {
      // Most recently used last: the Map's insertion order is the eviction order.
      this.#programs.delete(key);
      this.#programs.set(key, p);
      return p;
    }
    const g = new Graph();
    build(g);
    p = new Program(g, this.backend);
    this.#programs.set(key, p);
    while (this.#programs.size > this.maxPrograms) {
      const [oldest, q] = this.#programs.entries().next().value as [string, Program];
      this.#programs.delete(oldest);
      q.dispose();
    }
    return p;
  }

  get programCount(): number {
    return this.#programs.size;
  }

  /**
   * Compiles `build` without caching it, runs it once (outputs into `opts.into` where given) and
   * frees it: one-off work such as a weight merge, which must not evict the programs that run often.
   */
  async runOnce(build: (g: Graph) => void, inputs: Tensor[], opts: RunOptions = {}): Promise<Tensor[]> {
    this.assertLive();
    const g = new Graph();
    build(g);
    using p = new Program(g, this.backend, { cudaGraph: false });
    return p.run(inputs, opts);
  }

  /**
   * Runs `fn` as one call on the current weights: it waits while a weight change (exclusive) is
   * running or waiting, and a change waits for it to end. A call made from inside another call of
   * this runtime (generate decoding through decodeLatents) passes straight through.
   */
  async shared<T>(fn: () => Promise<T>): Promise<T> {
    const held = inside.getStore();
    if (held?.has(this)) return fn();
    while (this.#change) await this.#change;
    this.#calls++;
    try {
      return await inside.run(new Set([...(held ?? []), this]), fn);
    } finally {
      if (--this.#calls === 0) this.#drained?.();
    }
  }

  /**
   * Runs `fn` (a change of the resident weights) alone: after the calls in flight have finished,
   * with new calls held back until it ends. E_ARGUMENT from inside a call of this runtime (an
   * onProgress callback), which would otherwise wait for itself.
   */
  async exclusive<T>(fn: () => Promise<T>, what: string): Promise<T> {
    if (inside.getStore()?.has(this)) throw invalid(what, `called outside the ${this.name}'s own calls (not from onProgress: it would wait for that call to finish)`);
    while (this.#change) await this.#change;
    let done!: () => void;
    this.#change = new Promise<void>((resolve) => (done = resolve));
    try {
      if (this.#calls > 0) await new Promise<void>((resolve) => (this.#drained = resolve));
      this.#drained = null;
      return await fn();
    } finally {
      this.#change = null;
      done();
    }
  }

  /** Frees every compiled program (they are rebuilt on demand). */
  clearPrograms(): void {
    for (const p of this.#programs.values()) p.dispose();
    this.#programs.clear();
  }

  /** A host tensor moved into this backend's dtype, device and stream (the input is not disposed). */
  upload(t: Tensor): Tensor {
    return t.to(this.backend.dtype, this.backend.device, this.backend.stream ?? 0);
  }

  /** A float32 input tensor on this backend (in its compute dtype). */
  floats(data: Float32Array, shape: number[]): Tensor {
    return Tensor.from(data, shape, this.backend);
  }

  /** An int32 input tensor (token ids, slots) on this backend's device and stream. */
  ints(data: Int32Array, shape: number[]): Tensor {
    return Tensor.from(data, shape, { device: this.backend.device, stream: this.backend.stream ?? 0 });
  }

  dispose(): void {
    this.#disposed = true;
    this.clearPrograms();
    for (const w of this.#weights.values()) w.dispose();
    this.#weights.clear();
    for (const release of this.#owned.reverse()) release();
    this.#owned = [];
    if (this.#ownStream) {
      const id = this.#ownStream;
      this.#ownStream = 0;
      streams.unregister(this);
      call(() => native().releaseStream(id));
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
