// Stage 4 of generate(): the VAE decoder, one image at a time (its peak memory does not grow with
// numImages), pixels clamped to [0, 1].
import { toRawImage, type RawImage } from '../io/image.js';
import type { SdRuntime } from '../runtime/sd.js';
import { Tensor } from '../tensor.js';
import type { GeneratePlan } from './options.js';

/** One image [3·H·W] in [0, 1] from its latents [C·h·w] (before the VAE scaling). */
export async function decodeLatent(rt: Pick<SdRuntime, 'vaeDecode' | 'configs'>, latent: Float32Array, shape: readonly number[], signal?: AbortSignal): Promise<Float32Array> {
  const sf = rt.configs.vae.scalingFactor;
  using z = Tensor.from(latent.map((v) => v / sf), [1, ...shape.slice(1)]);
  using decoded = await rt.vaeDecode(z, signal);
  return decoded.toFloat32().map((v) => Math.min(1, Math.max(0, v / 2 + 0.5)));
}

export async function decodeImages(rt: Pick<SdRuntime, 'vaeDecode' | 'configs'>, latents: Float32Array, plan: GeneratePlan): Promise<{ images: RawImage[]; pixels: Tensor }> {
  const { width: W, height: H, numImages: N, latentShape } = plan;
  const n = latents.length / N;
  const images: RawImage[] = [];
  const px = new Float32Array(N * 3 * W * H);
  for (let k = 0; k < N; k++) {
    const p = await decodeLatent(rt, latents.subarray(k * n, (k + 1) * n), latentShape, plan.signal);
    px.set(p, k * p.length);
    images.push(toRawImage(p, W, H));
  }
  return { images, pixels: Tensor.from(px, [N, 3, H, W]) };
}
