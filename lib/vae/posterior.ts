// The VAE's latent posterior on the host, N(mean, σ²) with σ = exp(logvar / 2), and its one
// sampling rule (diffusers' DiagonalGaussianDistribution.sample() × scaling_factor), shared by
// image to image, SeFi-IDE learning and DreamIdentity encoder training.
import type { Tensor } from '../tensor.js';

export interface LatentPosterior {
  /** [C·h·w] float32. */
  mean: Float32Array;
  /** exp(logvar / 2), float32, as long as mean. */
  std: Float32Array;
  /** The latent's shape as the encoder gave it ([1, C, h, w]). */
  shape: number[];
}

/** The posterior of the VAE encoder's outputs (float32 CPU tensors, e.g. SdRuntime.vaeEncode's); disposes them. */
export function latentPosterior(enc: { mean: Tensor; logvar: Tensor }): LatentPosterior {
  try {
    return { mean: enc.mean.toFloat32(), std: enc.logvar.toFloat32().map((v) => Math.exp(0.5 * v)), shape: [...enc.mean.shape] };
  } finally {
    enc.mean.dispose();
    enc.logvar.dispose();
  }
}

/**
 * A latent sample (mean + σ·noise) × scalingFactor, written into `out` from `offset` (a fresh
 * array by default). `noise` is standard normal, as long as the mean.
 */
export function sampleLatent(p: Pick<LatentPosterior, 'mean' | 'std'>, noise: ArrayLike<number>, scalingFactor: number, out = new Float32Array(p.mean.length), offset = 0): Float32Array {
  const { mean, std } = p;
  for (let i = 0; i < mean.length; i++) out[offset + i] = (mean[i]! + std[i]! * noise[i]!) * scalingFactor;
  return out;
}
