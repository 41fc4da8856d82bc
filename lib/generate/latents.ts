// Stage 2 of generate(): the starting latents and every step's noise, from one seeded generator per
// image (seed + i) drawn in a fixed order — its initial noise, then (image to image) its VAE
// posterior sample, then each step's noise — so that image i equals a one-image call with seed + i.
import { toSignedCHW, type RawImage } from '../io/image.js';
import type { SdRuntime } from '../runtime/sd.js';
import { normalGenerator } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import { latentPosterior, sampleLatent } from '../vae/posterior.js';
import type { GeneratePlan } from './options.js';

export interface PreparedLatents {
  /**
   * [numImages·C·h·w]: the noise × init_noise_sigma, or (image to image) the image's latents
   * noised to the first timestep run.
   */
  start: Float32Array;
  /** Step i's noise for a stochastic sampler (call once per step, in order), else undefined. */
  noise(i: number): Float32Array | undefined;
}

export async function prepareLatents(rt: Pick<SdRuntime, 'vaeEncode' | 'configs'>, plan: GeneratePlan): Promise<PreparedLatents> {
  const [N, ch, h, w] = plan.latentShape;
  const n = ch * h * w;
  const gens = Array.from({ length: N }, (_, i) => normalGenerator(plan.seed + i));
  const draw = (i: number) => Float32Array.from({ length: n }, gens[i]!);
  const noise0 = plan.latents ? plan.latents.slice() : new Float32Array(N * n);
  for (let i = 0; i < N; i++) {
    const z = draw(i); // drawn even when latents are given, so that the later draws do not depend on them
    if (!plan.latents) noise0.set(z, i * n);
  }
  const { sampler } = plan;
  let start = noise0.map((v) => v * sampler.initNoiseSigma);
  // Strength 1 starts from pure noise, as diffusers' inpainting pipeline does (is_strength_max),
  // so that it equals text-to-image.
  if (plan.init && plan.strength < 1) {
    const { a, b } = sampler.noiseScales(plan.start);
    const x0 = await imageLatents(rt, plan.init, N, draw);
    start = noise0.map((z, i) => a * x0[i]! + b * z);
  }
  const noise = (i: number): Float32Array | undefined => {
    if (!sampler.stochastic) return undefined;
    if (plan.stepNoise) return plan.stepNoise.subarray(i * N * n, (i + 1) * N * n);
    const z = new Float32Array(N * n);
    for (let j = 0; j < N; j++) z.set(draw(j), j * n);
    return z;
  };
  return { start, noise };
}

/** The init image's latents for each of N images: a VAE posterior sample each (noise from `draw(image)`). */
async function imageLatents(rt: Pick<SdRuntime, 'vaeEncode' | 'configs'>, img: RawImage, N: number, draw: (i: number) => Float32Array): Promise<Float32Array> {
  using x = Tensor.from(toSignedCHW(img), [1, 3, img.height, img.width]);
  const post = latentPosterior(await rt.vaeEncode(x));
  const n = post.mean.length;
  const out = new Float32Array(N * n);
  for (let k = 0; k < N; k++) sampleLatent(post, draw(k), rt.configs.vae.scalingFactor, out, k * n);
  return out;
}
