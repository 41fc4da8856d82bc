// Stage 3 of generate(): the denoising loop. One compiled step program per (batch, size,
// guidance, ...) — UNet, classifier-free guidance and the sampler update (SAMPLER_STEP) in ONE
// native call per step; the latents stay on the backend from the first step to the last, only the
// step's timesteps, its 9 sampler coefficients and (stochastic samplers) its noise are uploaded.
// The Denoiser owns the loop, the memory check and the step state (latents, the UNet input, the
// carried x0); the conditioning and the noise come from the stages before it.
import * as os from 'node:os';
import { conditionalAttentionMaps, type AttentionMap } from '../attention.js';
import { IdforgeError, throwIfAborted } from '../errors.js';
import type { Graph } from '../graph/graph.js';
import type { BackendSpec, Program } from '../graph/program.js';
import type { Weights } from '../graph/weights.js';
import type { ModelConfigs } from '../io/configs.js';
import { backends, memory } from '../native.js';
import { checkLatentsFinite } from '../numeric.js';
import { toHost } from '../runtime/runtime.js';
import { buildGuidedUNet } from '../runtime/sd.js';
import { COEFFICIENTS, packCoefficients, type Sampler } from '../sched/sampler.js';
import type { RawImage } from '../io/image.js';
import { Tensor } from '../tensor.js';
import type { PreparedLatents } from './latents.js';
import type { GeneratePlan } from './options.js';

/** What the step program needs from the model's runtime (lib/runtime/sd.ts SdRuntime). */
export interface StepHost {
  readonly configs: ModelConfigs;
  readonly backend: BackendSpec;
  readonly weights: { unet: Weights };
  program(key: string, build: (g: Graph) => void): Program;
}

export interface StepShape {
  /** Images in the batch (the UNet runs 2·batch rows with guidance). */
  batch: number;
  h: number;
  w: number;
  /** Context length (77). */
  tokens: number;
  /** Guidance scale, or null for an unguided UNet. */
  guidance: number | null;
  dual: boolean;
  noise: boolean;
  capture: readonly string[];
  /** A region table input after the contexts (lib/regions.ts; SdRuntime.regionInput). */
  regions?: boolean;
}

/**
 * The step program. Inputs: x, the UNet input (x scaled by the step's cin), the carried state
 * (previous x0), the coefficients (int32 [9], float32 bits), timesteps [rows], key context
 * [rows, tokens, D], value context (dual), region table (regions), noise (when `noise`). Outputs: next x, next state
 * (this step's x0: the denoised estimate), next UNet input, then the captured attention
 * probabilities.
 */
export function stepProgram(host: StepHost, s: StepShape): Program {
  const ch = host.configs.unet.inChannels;
  const key = `step:${s.batch}x${ch}x${s.h}x${s.w}:${s.tokens}:${s.guidance}:${s.dual}:${s.noise}:${!!s.regions}:${s.capture.join(',')}`;
  return host.program(key, (g) => {
    const lat = [s.batch, ch, s.h, s.w];
    const x = g.input(lat);
    const xin = g.input(lat);
    const state = g.input(lat);
    const coefs = g.input([COEFFICIENTS], 'int32');
    const r = buildGuidedUNet(g, host.weights.unet, host.configs, xin, s);
    const z = s.noise ? g.input(lat) : undefined;
    const [next, x0, nextIn] = g.samplerStep(x, r.eps, state, coefs, z);
    g.output(next);
    g.output(x0);
    g.output(nextIn);
    for (const l of s.capture) g.output(r.attention.get(l)!, l);
  });
}

/** The coefficients of step i as SAMPLER_STEP's int32 input (next_in: the following step's cin). */
export function coefficientTensor(sampler: Sampler, i: number, first: boolean, backend: BackendSpec): Tensor {
  const c = sampler.coefficients(i, first);
  const nextIn = i + 1 < sampler.timesteps.length ? sampler.coefficients(i + 1, false).cin : 1;
  const packed = packCoefficients({ ...c, cin: nextIn });
  return Tensor.from(new Int32Array(packed.buffer), [COEFFICIENTS], { device: backend.device, stream: backend.stream ?? 0 });
}

/** Bytes a backend can still hand out: IDFORGE_MEMORY_LIMIT (bytes) when set, else what the host / GPU reports. */
function available(device: 'cpu' | 'cuda'): number {
  const live = memory()[device];
  const limit = Number(process.env.IDFORGE_MEMORY_LIMIT);
  if (Number.isFinite(limit) && limit > 0) return limit - live;
  if (device === 'cpu') return os.freemem();
  const m = /([\d.]+) GiB\)/.exec(backends().cuda.device ?? '');
  return m ? Number(m[1]) * 2 ** 30 - live : Infinity;
}

/**
 * Refuses, before anything is allocated, a step program whose activation arena (its static
 * buffer plan) and latents would not fit: E_OOM with how many images would. A program that has
 * run holds its arena already and passes.
 */
export function checkFits(p: Program, s: StepShape, backend: BackendSpec, what: string): void {
  if (p.arenaAllocated) return;
  const elem = backend.dtype === 'float16' ? 2 : 4;
  const latents = s.batch * 4 * s.h * s.w * elem * 8; // x, input, state, noise and the outputs
  const need = p.memoryPlan.arena + latents;
  const have = available(backend.device);
  if (need <= have) return;
  const perImage = need / s.batch;
  const MiB = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  throw new IdforgeError('E_OOM', `${what}: ${s.batch} image(s) at ${s.w * 8}x${s.h * 8} need about ${MiB(need)} of ${backend.device} memory for the denoising step (its arena plan) but ${MiB(Math.max(0, have))} are available; at most ${Math.max(0, Math.floor(have / perImage))} image(s) per call fit`);
}

/** The runtime the loop runs on: the step program's host, plus uploads. */
export interface DenoiseHost extends StepHost {
  floats(data: Float32Array, shape: number[]): Tensor;
  /** Whether a preview VAE is loaded: then each step's denoised estimate is decoded for onProgress (SdRuntime.preview). */
  readonly hasPreview?: boolean;
  preview?(x: Tensor, maxSide?: number, signal?: AbortSignal): Promise<RawImage[]>;
}

/** The contexts of the step at timestep t (lib/generate/conditioning.ts Conditioning). */
export interface StepConditioning {
  /** Rows the UNet runs (2·batch with guidance). */
  readonly rows: number;
  /** Separate key and value contexts. */
  readonly dual: boolean;
  /** A region table goes with the contexts (lib/regions.ts). */
  readonly regions?: boolean;
  at(t: number): Promise<{ stage: number; k: Tensor; v?: Tensor; regions?: Tensor }>;
}

export interface Denoised {
  /** The final latents [numImages·C·h·w], or the last step's denoised estimate with `final: 'denoised'`. */
  latents: Float32Array;
  maps: AttentionMap[];
  warnings: string[];
}

export class Denoiser {
  readonly #rt: DenoiseHost;
  readonly #plan: GeneratePlan;
  readonly #shape: Omit<StepShape, 'capture'>;
  readonly #final: 'sample' | 'denoised';

  /**
   * `final` picks what the loop returns: the sample after the last step (default), or the last
   * step's denoised estimate x0 (a sampler that ends on it, e.g. LCM).
   */
  constructor(rt: DenoiseHost, plan: GeneratePlan, cond: { rows: number; dual: boolean; regions?: boolean }, opts: { final?: 'sample' | 'denoised' } = {}) {
    this.#rt = rt;
    this.#plan = plan;
    const [batch, , h, w] = plan.latentShape;
    this.#shape = { batch, h, w, tokens: 77, guidance: plan.guided ? plan.guidanceScale : null, dual: cond.dual, noise: plan.sampler.stochastic, regions: !!cond.regions };
    this.#final = opts.final ?? 'sample';
  }

  #program(capture: readonly string[]): Program {
    const p = stepProgram(this.#rt, { ...this.#shape, capture });
    checkFits(p, { ...this.#shape, capture }, this.#rt.backend, 'generate');
    return p;
  }

  /** E_OOM when the largest step program of the run would not fit: call before allocating anything for the batch. */
  checkFits(): void {
    const cap = this.#plan.capture;
    this.#program(cap && cap.steps.size ? cap.layers : []);
  }

  /**
   * Runs every planned step from the prepared latents (lib/generate/latents.ts) with the
   * conditioning's contexts, reporting to the plan's onProgress after each step and about every
   * second inside long ones.
   */
  async run({ start, noise }: PreparedLatents, cond: StepConditioning): Promise<Denoised> {
    const { sampler, timesteps, signal, capture: cap, latentShape, onProgress } = this.#plan;
    const rt = this.#rt;
    const shape = [...latentShape];
    const started = Date.now();
    const report = (step: number, timestep: number, stage: number, x: Tensor, fraction?: number, preview?: RawImage[]) =>
      onProgress?.({ step, steps: timesteps.length, timestep, elapsedMs: Date.now() - started, stage, ...(fraction !== undefined ? { fraction } : {}), ...(preview ? { preview } : {}), latents: () => x.to('float32', 'cpu') });
    const c0 = sampler.coefficients(this.#plan.start, true).cin;
    let x = rt.floats(start, shape);
    let xin = rt.floats(c0 === 1 ? start : start.map((v) => v * c0), shape);
    let state = Tensor.zeros(shape, rt.backend);
    const out: Denoised = { latents: new Float32Array(0), maps: [], warnings: [] };
    try {
      for (let i = 0; i < timesteps.length; i++) {
        throwIfAborted(signal, 'generate');
        const t = timesteps[i]!;
        const capture = cap?.steps.has(i + 1) ? cap.layers : [];
        const program = this.#program(capture);
        const { stage, k, v, regions } = await cond.at(t);
        const inputs: Tensor[] = [];
        let outs: Tensor[];
        try {
          inputs.push(coefficientTensor(sampler, this.#plan.start + i, i === 0, rt.backend));
          inputs.push(rt.floats(new Float32Array(cond.rows).fill(t), [cond.rows]));
          const z = noise(i);
          if (z) inputs.push(rt.floats(z, shape));
          const [coefs, tIn, zIn] = inputs;
          // Abort stops the native run within milliseconds; progress about every second inside long steps.
          const now = x;
          const onTick = onProgress && ((fraction: number) => report(i, t, stage, now, fraction));
          outs = await program.run([x, xin, state, coefs!, tIn!, k, ...(v ? [v] : []), ...(regions ? [regions] : []), ...(zIn ? [zIn] : [])], { signal, ...(onTick ? { onTick } : {}) });
        } finally {
          for (const u of inputs) u.dispose();
        }
        const [nx, ns, nin, ...probs] = outs;
        x.dispose();
        state.dispose();
        xin.dispose();
        [x, state, xin] = [nx!, ns!, nin!];
        capture.forEach((layer, j) => {
          using p = toHost(probs[j]!);
          const at = { layer, step: i + 1, timestep: t, images: latentShape[0], guided: this.#plan.guided, latentHeight: latentShape[2] };
          out.maps.push(...conditionalAttentionMaps(p.toFloat32(), p.shape, { ...at, levels: rt.configs.unet.blockOutChannels.length, reduce: cap!.reduce }));
        });
        // No silent black image: NaN/Inf latents are E_NUMERIC (or one warning with nonFinite: 'warn').
        if (!out.warnings.length) {
          const w = checkLatentsFinite(x, { step: i + 1, steps: timesteps.length, timestep: t, guidanceScale: this.#plan.guidanceScale, dtype: rt.backend.dtype }, this.#plan.nonFinite);
          if (w) out.warnings.push(w);
        }
        // The preview shows this step's denoised estimate (x0, the carried state) through the preview VAE.
        const preview = onProgress && rt.hasPreview ? await rt.preview!(state, undefined, signal) : undefined;
        report(i + 1, t, stage, x, undefined, preview);
      }
      out.latents = (this.#final === 'denoised' ? state : x).toFloat32();
      return out;
    } finally {
      x.dispose();
      state.dispose();
      xin.dispose();
    }
  }
}
