// The one file that loads the native addon (a local build or the prebuilt platform package) and
// types its surface. Everything else goes through Tensor / Program wrappers.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdforgeError, fromNative } from './errors.js';
import { platformKey, platformPackage } from './platform.js';

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int32' | 'int64' | 'uint8';
export type DeviceName = 'cpu' | 'cuda';

export interface NativeTensor {
  readonly shape: number[];
  readonly dtype: DType;
  readonly device: DeviceName;
  readonly nbytes: number;
  readonly disposed: boolean;
  read(dtype?: DType): ArrayBuffer;
  /** Elements that are NaN or ±Inf, counted on the tensor's device (0 for integer dtypes). */
  countNonFinite(): number;
  to(dtype: DType, device?: DeviceName, stream?: number): NativeTensor;
  copyFrom(src: NativeTensor): void;
  dispose(): void;
}

export interface NativeOp {
  op: string;
  in: number[];
  out: number[];
  attrs?: Record<string, number | boolean | number[]>;
}

export interface ProgramDesc {
  device: DeviceName;
  dtype: 'float32' | 'float16';
  /** CUDA stream id (createStream()); 0 or absent: the default stream. */
  stream?: number;
  values: { dtype: 'float' | DType; shape: number[] }[];
  consts: [number, NativeTensor][];
  inputs: number[];
  outputs: number[];
  ops: NativeOp[];
  /** CUDA only: capture the op sequence as a CUDA graph and replay it (default on; IDFORGE_CUDA_GRAPH=0 turns it off). */
  cudaGraph?: boolean;
}

export interface OpTiming { op: string; index: number; ms: number }

export interface NativeProgram {
  readonly constBytes: number;
  /** Bytes of the one arena that holds every intermediate (planned by lifetimes). */
  readonly arenaBytes: number;
  /** What the intermediates would take with a buffer each. */
  readonly intermediateBytes: number;
  /** Fraction of the running (or last) run's ops done. */
  readonly progress: number;
  /**
   * `cancel`: a token whose cancel() stops the run at its next check (E_ABORTED). `into`: per
   * output, a tensor to write it to (undefined: a fresh one); see Program.run.
   */
  run(inputs: NativeTensor[], profile?: boolean, cancel?: NativeCancel, into?: (NativeTensor | undefined)[]): Promise<{ outputs: NativeTensor[]; timings?: OpTiming[] }>;
  dispose(): void;
}

/** A cancellation token shared with native runs (native/cancel.h). */
export interface NativeCancel {
  cancel(): void;
  readonly cancelled: boolean;
}

export interface CudaStatus { compiled: boolean; available: boolean; device?: string; reason?: string }
/** The CPU kernel variants: 'avx512' | 'avx2' | 'sse2' on x86-64, 'neon' on arm64. */
export type CpuIsa = 'avx512' | 'avx2' | 'sse2' | 'neon';
/**
 * The CPU backend: always available; `isa` is the kernel variant chosen for this process (the best
 * the CPU and OS support, or the lower one IDFORGE_CPU_ISA forces), `supported` every variant this
 * CPU can run, best first.
 */
export interface CpuStatus { available: true; isa: CpuIsa; supported: CpuIsa[] }
export interface Backends { cpu: CpuStatus; cuda: CudaStatus }

interface Addon {
  NativeTensor: { prototype: NativeTensor };
  NativeCancel: new () => NativeCancel;
  createTensor(dtype: DType, shape: number[], device: DeviceName, data?: ArrayBufferView, srcDtype?: DType, stream?: number): NativeTensor;
  compile(desc: ProgramDesc): NativeProgram;
  backends(): Backends;
  memory(): { cpu: number; cuda: number };
  /** The chosen CPU kernels' FMA peak, measured for about `seconds` on every backend thread. */
  cpuPeak(seconds?: number): { gflops: number; threads: number; isa: CpuIsa };
  /** A new CUDA stream context (stream, cuBLAS handle, error flag); E_BACKEND without CUDA. */
  createStream(): number;
  /** Waits for the stream's work and recycles it. */
  releaseStream(id: number): void;
}

let addon: Addon | undefined;

/**
 * The loaded addon, from the first of: IDFORGE_ADDON (a .node file), a local build
 * (<package>/build/Release: `npx idforge build`, or a clone's `npm install`), the prebuilt platform
 * package (@idforge/<platform>, an optional dependency). A local build comes first because it only
 * exists when someone built it on purpose (a developer's rebuilt addon must not lose to a prebuilt
 * one). Throws E_BACKEND saying how to build from source when none loads.
 */
export function native(): Addon {
  if (addon) return addon;
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  const attempt = (what: string, load: () => Addon): Addon | undefined => {
    try {
      return load();
    } catch (e) {
      tried.push(`${what}: ${(e as Error).message.split('\n')[0]}`);
      return undefined;
    }
  };
  const file = process.env.IDFORGE_ADDON;
  const pkg = platformPackage();
  addon = file
    ? attempt(`IDFORGE_ADDON=${file}`, () => require(path.resolve(file)) as Addon)
    : (attempt(`local build (${root}/build/Release)`, () => (require('node-gyp-build') as (dir: string) => Addon)(root)) ??
      attempt(`prebuilt package ${pkg}`, () => require(`${pkg}/idforge.node`) as Addon));
  if (!addon)
    throw new IdforgeError(
      'E_BACKEND',
      `the idforge native addon could not be loaded for ${platformKey()} (tried ${tried.join('; ')}). ` +
        `No prebuilt package serves this platform here: build from source with \`npx idforge build\` ` +
        '(needs a C++17 compiler; CMake optional, nvcc for CUDA)',
    );
  return addon;
}

/** Calls into the addon, turning native errors into IdforgeError. */
export function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw fromNative(e);
  }
}

export async function callAsync<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw fromNative(e);
  }
}

/**
 * Which backends this build has and can use here. E_BACKEND when IDFORGE_CPU_ISA names a variant
 * that does not exist or that this CPU lacks (the message lists what it has).
 */
export function backends(): Backends {
  return call(() => native().backends());
}

/** Live bytes of native tensor memory per device (weights, activations, outputs). */
export function memory(): { cpu: number; cuda: number } {
  return native().memory();
}

/**
 * A native cancellation token tied to `signal`: when the signal fires, runs holding the token stop
 * at their next check (between ops, and between parallel chunks of a long CPU op), so an abort
 * takes effect within milliseconds instead of at the end of a step. Call release() after the run
 * (it removes the listener). Without a signal: no token.
 */
export function cancelToken(signal: AbortSignal | undefined): { token: NativeCancel | undefined; release(): void } {
  if (!signal) return { token: undefined, release: () => {} };
  const token = new (native().NativeCancel)();
  const onAbort = () => token.cancel();
  if (signal.aborted) token.cancel();
  else signal.addEventListener('abort', onAbort, { once: true });
  return { token, release: () => signal.removeEventListener('abort', onAbort) };
}
