// The denoising loop of generate(): one compiled step program per (batch, size, guidance, ...) —
// UNet, classifier-free guidance and the sampler update (SAMPLER_STEP) in ONE native call per
// step; the latents stay on the backend from the first step to the last, only the step's
// timesteps, its 9 sampler coefficients and (stochastic samplers) its noise are uploaded.
import * as os from 'node:os';
import { IdforgeError } from './errors.js';
import type { Graph } from './graph/graph.js';
import type { BackendSpec, Program } from './graph/program.js';
import type { Weights } from './graph/weights.js';
import type { ModelConfigs } from './io/configs.js';
import { backends, memory } from './native.js';
import { buildGuidedUNet } from './runtime/sd.js';
import { COEFFICIENTS, packCoefficients, type Sampler } from './sched/sampler.js';
import { Tensor } from './tensor.js';

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
 * [rows, tokens, D], value context (dual), region table (regions), noise (when `noise`). Outputs: next x, next state,
 * next UNet input, then the captured attention probabilities.
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

/**
 * The first step image-to-image runs: diffusers' StableDiffusionImg2ImgPipeline.get_timesteps,
 * init_timestep = min(int(steps·strength), steps), start = steps − init_timestep. E_ARGUMENT
 * naming `strength` when that leaves no step.
 */
export function img2imgStart(steps: number, strength: number, scheduled: number): number {
  const init = Math.min(Math.floor(steps * strength), steps);
  const start = Math.max(steps - init, 0);
  if (start >= scheduled)
    throw new IdforgeError('E_ARGUMENT', `strength ${strength} with ${steps} steps leaves no denoising step (int(steps·strength) = ${init}); use strength ≥ ${(1 / steps).toPrecision(3)} or more steps`);
  return start;
}

const programsRun = new WeakSet<Program>();

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
 * buffer plan) and latents would not fit: E_OOM with how many images would.
 */
export function checkFits(p: Program, s: StepShape, backend: BackendSpec, what: string): void {
  if (programsRun.has(p)) return; // its arena is already allocated
  const elem = backend.dtype === 'float16' ? 2 : 4;
  const latents = s.batch * 4 * s.h * s.w * elem * 8; // x, input, state, noise and the outputs
  const need = p.memoryPlan.arena + latents;
  const have = available(backend.device);
  if (need <= have) return;
  const perImage = need / s.batch;
  const MiB = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  throw new IdforgeError('E_OOM', `${what}: ${s.batch} image(s) at ${s.w * 8}x${s.h * 8} need about ${MiB(need)} of ${backend.device} memory for the denoising step (its arena plan) but ${MiB(Math.max(0, have))} are available; at most ${Math.max(0, Math.floor(have / perImage))} image(s) per call fit`);
}

export function markRun(p: Program): void {
  programsRun.add(p);
}

