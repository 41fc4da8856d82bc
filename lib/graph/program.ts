import { IdforgeError, throwIfAborted } from '../errors.js';
import { callAsync, call, cancelToken, native, type NativeProgram, type OpTiming } from '../native.js';
import { Tensor } from '../tensor.js';
import type { Graph } from './graph.js';

/** Where and in what precision a program runs. */
export interface BackendSpec {
  device: 'cpu' | 'cuda';
  dtype: 'float32' | 'float16';
  /**
   * CUDA only: the stream its tensors and programs run on (an id from the addon's createStream()).
   * Each Engine takes one, so engines run concurrently and report their own kernel errors;
   * absent or 0 is the default stream.
   */
  stream?: number;
}

/** Compile options. */
export interface ProgramOptions {
  /**
   * Capture the run into a CUDA graph (after one eager run) and replay it: one launch per run
   * instead of one per op. Default: IDFORGE_CUDA_GRAPH (0/1) when set, else on for CUDA; a no-op
   * on the CPU.
   */
  cudaGraph?: boolean;
}

/** Per-run options of Program.run. */
export interface RunOptions {
  /**
   * Aborts the run at its next native check (between ops and between chunks of long CPU ops);
   * a run that has begun an in-place update (ADAM_STEP) finishes it instead of stopping half-way.
   */
  signal?: AbortSignal | undefined;
  /** Called about every tickMs while the run is in flight with the fraction of its ops done. */
  onTick?: ((fraction: number) => void) | undefined;
  tickMs?: number;
  /**
   * Per output, a tensor of this backend to write it to instead of a fresh one (undefined: fresh);
   * run() then returns that very tensor for it. It may be one of the run's inputs only where the
   * op computing the output updates in place (ADAM_STEP) and no later op reads that input: an
   * optimizer step on resident parameters without a copy. Anything else is E_ARGUMENT / E_SHAPE.
   */
  into?: (Tensor | undefined)[];
}

/** A compiled graph: one native call per run(). */
export class Program implements Disposable {
  #p: NativeProgram | null;
  #ran = false;
  readonly inputShapes: number[][];
  readonly outputNames: (string | undefined)[];
  readonly opNames: string[];
  readonly opShapes: { in: number[][]; out: number[][] }[];

  constructor(graph: Graph, readonly backend: BackendSpec, options: ProgramOptions = {}) {
    if (graph.outputs.length === 0) throw new IdforgeError('E_INTERNAL', 'a program needs at least one output');
    const desc = {
      device: backend.device,
      dtype: backend.dtype,
      ...(backend.stream !== undefined ? { stream: backend.stream } : {}),
      values: graph.values,
      consts: [...graph.consts].map(([id, t]) => [id, t.handle] as [number, typeof t.handle]),
      inputs: graph.inputs.map((v) => v.id),
      outputs: graph.outputs.map((v) => v.id),
      ops: graph.ops,
      ...(options.cudaGraph === undefined ? {} : { cudaGraph: options.cudaGraph }),
    };
    this.#p = call(() => native().compile(desc));
    this.inputShapes = graph.inputs.map((v) => [...v.shape]);
    this.outputNames = graph.outputs.map((v) => graph.names.get(v.id));
    this.opNames = graph.ops.map((o) => o.op);
    this.opShapes = graph.ops.map((o) => ({
      in: o.in.map((i) => graph.values[i]!.shape),
      out: o.out.map((i) => graph.values[i]!.shape),
    }));
  }

  /**
   * The static buffer plan: `arena` bytes hold every intermediate (allocated on the first run and
   * kept until dispose()); `intermediates` is what one buffer per intermediate would take.
   */
  get memoryPlan(): { arena: number; intermediates: number } {
    const p = this.#p;
    return { arena: p?.arenaBytes ?? 0, intermediates: p?.intermediateBytes ?? 0 };
  }

  get disposed(): boolean {
    return !this.#p;
  }

  /** Whether a run has completed: the arena is then allocated (and kept until dispose()). */
  get arenaAllocated(): boolean {
    return this.#ran;
  }

  /**
   * Runs the graph; inputs in graph.input() order. Returns outputs in graph.output() order.
   * `signal` stops the run within milliseconds (E_ABORTED); `onTick(fraction)` is called about
   * every `tickMs` (default 1000) while the run is in flight, with the fraction of its ops done.
   */
  async run(inputs: Tensor[], opts: RunOptions = {}): Promise<Tensor[]> {
    return (await this.runProfiled(inputs, false, opts)).outputs;
  }

  async runProfiled(inputs: Tensor[], profile = true, opts: RunOptions = {}): Promise<{ outputs: Tensor[]; timings?: OpTiming[] }> {
    const p = this.#p;
    if (!p) throw new IdforgeError('E_DISPOSED', 'program used after dispose()');
    const handles = inputs.map((t) => t.handle);
    const { signal, onTick } = opts;
    throwIfAborted(signal, 'the run');
    const cancel = cancelToken(signal);
    const timer = onTick ? setInterval(() => onTick(p.progress), opts.tickMs ?? 1000) : undefined;
    try {
      const into = opts.into;
      const r = await callAsync(() => p.run(handles, profile, cancel.token, into?.map((t) => t?.handle)));
      this.#ran = true;
      const outputs = r.outputs.map((h, k) => {
        const t = into?.[k];
        if (!t) return new Tensor(h);
        h.dispose(); // a second handle on the caller's tensor
        return t;
      });
      return { outputs, ...(r.timings ? { timings: r.timings } : {}) };
    } finally {
      if (timer) clearInterval(timer);
      cancel.release();
    }
  }

  dispose(): void {
    this.#p?.dispose();
    this.#p = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
