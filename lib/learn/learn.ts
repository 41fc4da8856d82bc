/**
 * SeFi-IDE per-identity learning (IdentityLearner, a client of the SD runtime): from one face
 * photo, learn 5 per-stage (K, V) token pairs produced by a small generator
 * (lib/learn/generator.ts) through the frozen text encoder and UNet. A learning step is ONE native
 * call on the engine's device, in float32 (lib/learn/token-trainer.ts): the generator, both
 * text-encoder passes (the stage's K token and V token injected at the `<id>` slot), the UNet
 * with keys from the K context and values from the V context, the loss
 *   L = mean((ε_θ(z_t, t, c_K, c_V) − ε)²) + λ · mean_layers mean((A − A_ref)²),
 * its gradients with respect to the generator's weights and Adam, in place.
 *
 * Data: the face is centre-cropped to a square and resized to the model's native size
 * (latentFactor · unet.sampleSize: 512 for SD 1.5, 128 for the tiny test model). Augmentation is
 * applied to the image before VAE encoding: horizontal flip (p = 0.5), colour jitter (brightness,
 * contrast, saturation ×[0.9, 1.1]) and a random scale s ∈ [0.1, 1] (the face is shrunk by s and
 * pasted at a random place on a canvas of its mean colour). To keep a step to one UNet
 * forward/backward, a pool of 8 augmented images (1 without augmentation) is VAE-encoded, each on
 * its first draw, and kept in the latent cache; each step draws one, samples
 * z0 = (mean + σ·ε)·scaling_factor afresh, a template, a timestep t ∈ [0, 1000) and the noise; the
 * stage is floor(t·S/1000).
 *
 * Resumable (lib/optim/resume.ts, shared with trainEncoder): step k draws from the step stream of
 * (seed, k) alone, pool image i is augmented from its own stream, and with `checkpoint` a folder
 * holds checkpoints and the latent cache, so N steps + resume + M steps learn exactly what N + M
 * steps do.
 */
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { IdforgeError, throwIfAborted } from '../errors.js';
import type { Program } from '../graph/program.js';
import type { UNetConfig } from '../io/configs.js';
import { LatentCache, loadWeights, readCheckpoint, saveWeights, stepRandom, writeCheckpoint } from '../optim/resume.js';
import { toHost } from '../runtime/runtime.js';
import type { SdRuntime } from '../runtime/sd.js';
import { crossAttentionLayers } from '../unet/unet.js';
import { layerDownsampling } from '../attention.js';
import { Identity, stageIndex } from '../identity/identity.js';
import { centreCrop, chooseFace, cropAroundFace, decodeFace } from '../identity/face.js';
import { expandPrompt } from '../identity/placeholders.js';
import type { RawImage } from '../io/image.js';
import { addNoise } from '../sched/betas.js';
import { DDIMScheduler } from '../sched/ddim.js';
import { Xoshiro128, randn } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import { latentPosterior, sampleLatent, type LatentPosterior } from '../vae/posterior.js';
import { invalid, shown } from '../validate.js';
import { resolveLearn, type AugmentOptions, type LearnOptions } from './options.js';
import { TokenTrainer, buildLearnLoss, type LearnSample } from './token-trainer.js';

export type { AugmentOptions, LearnOptions, LearnProgress } from './options.js';

/** The seven training templates of SeFi-IDE; `<id>` is the identity placeholder V*. */
export const SEFI_TEMPLATES: readonly string[] = Object.freeze([
  'a photo of a face of <id>',
  'a photo of a rendering of a face of <id>',
  'a close-up photo of the face of <id>',
  'a photo of the cool face of <id>',
  'a rendition of the face of <id>',
  'an illustration of a face of <id>',
  'a depiction of a face of <id>',
]);

/** Cross-attention layers whose maps have side latent/2 (the face-wise attention loss layers). */
export function attentionLossLayersOf(cfg: UNetConfig): string[] {
  const levels = cfg.blockOutChannels.length;
  return crossAttentionLayers(cfg).filter((l) => layerDownsampling(l, levels) === 2);
}

/** RGB bytes → [3, S, S] in [−1, 1], with the chosen augmentations. */
function augmentImage(img: RawImage, aug: Required<AugmentOptions> | null, rnd: () => number): Float32Array {
  const S = img.width;
  const n = S * S;
  const src = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) src[c * n + i] = img.data[i * 3 + c]! / 255;
  if (!aug) return src.map((v) => v * 2 - 1);
  let out = src;
  if (aug.flip && rnd() < 0.5) {
    out = new Float32Array(3 * n);
    for (let c = 0; c < 3; c++) for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) out[c * n + y * S + x] = src[c * n + y * S + (S - 1 - x)]!;
  }
  if (aug.jitter) {
    const br = 0.9 + 0.2 * rnd();
    const ct = 0.9 + 0.2 * rnd();
    const sat = 0.9 + 0.2 * rnd();
    let mean = 0;
    for (let i = 0; i < 3 * n; i++) mean += out[i]!;
    mean /= 3 * n;
    const j = new Float32Array(3 * n);
    for (let i = 0; i < n; i++) {
      const gray = 0.299 * out[i]! + 0.587 * out[n + i]! + 0.114 * out[2 * n + i]!;
      for (let c = 0; c < 3; c++) {
        let v = out[c * n + i]! * br;
        v = (v - mean) * ct + mean;
        v = (v - gray * br) * sat + gray * br;
        j[c * n + i] = Math.min(1, Math.max(0, v));
      }
    }
    out = j;
  }
  if (aug.scale) {
    const s = aug.scale[0] + (aug.scale[1] - aug.scale[0]) * rnd();
    const side = Math.max(1, Math.round(S * s));
    if (side < S) {
      const ox = Math.floor(rnd() * (S - side + 1));
      const oy = Math.floor(rnd() * (S - side + 1));
      const sc = new Float32Array(3 * n);
      for (let c = 0; c < 3; c++) {
        let m = 0;
        for (let i = 0; i < n; i++) m += out[c * n + i]!;
        sc.fill(m / n, c * n, (c + 1) * n);
        // Box-filtered downscale: each target pixel averages its source footprint.
        for (let y = 0; y < side; y++)
          for (let x = 0; x < side; x++) {
            const y0 = Math.floor((y * S) / side);
            const y1 = Math.max(y0 + 1, Math.floor(((y + 1) * S) / side));
            const x0 = Math.floor((x * S) / side);
            const x1 = Math.max(x0 + 1, Math.floor(((x + 1) * S) / side));
            let acc = 0;
            for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) acc += out[c * n + yy * S + xx]!;
            sc[c * n + (oy + y) * S + ox + x] = acc / ((y1 - y0) * (x1 - x0));
          }
      }
      out = sc;
    }
  }
  return out.map((v) => v * 2 - 1);
}

/** Init words that name a person: the photo is then cropped around the detected face. */
const PERSON_WORDS = new Set(['person', 'man', 'woman', 'boy', 'girl', 'child', 'kid', 'baby', 'lady', 'guy', 'human', 'face', 'people', 'gentleman']);

/** The photo-crop options of learn / loss. */
export type CropOptions = Pick<LearnOptions, 'face' | 'init' | 'onWarning'>;

/**
 * Decodes and checks the photo, then crops a square around the detected face (init names a person,
 * or `face` options given) or the photo's centre, at the model's native size.
 */
export async function prepareLearningImage(rt: SdRuntime, face: RawImage | string | Buffer, opts: CropOptions = {}): Promise<RawImage> {
  if (face === undefined || face === null) throw invalid('the face image', 'a RawImage, a file path or an encoded Buffer', face, { where: 'learnIdentity' });
  const img = await decodeFace(face as RawImage | string | Buffer);
  const size = rt.nativeSize;
  const min = Math.min(64, size);
  if (Math.min(img.width, img.height) < min)
    throw invalid('the face image', `at least ${min}x${min} pixels`, shown(`${img.width}x${img.height}`), { where: 'learnIdentity', code: 'E_SHAPE' });
  const detect = opts.face !== false && (opts.face !== undefined || PERSON_WORDS.has((opts.init ?? 'person').trim().toLowerCase()));
  if (!detect) return centreCrop(img, size);
  const warnings: string[] = [];
  const found = await chooseFace(img, face, opts.face || {}, warnings);
  for (const w of warnings) opts.onWarning?.(w);
  return found ? cropAroundFace(img, found, size) : centreCrop(img, size);
}

/** Per-template token ids, slot rows and reference contexts (the init word in place of V*), on the backend. */
class Prompts implements Disposable {
  readonly ids: Int32Array[] = [];
  readonly slots: Int32Array[] = [];
  readonly refs: Tensor[] = [];
  static async build(rt: SdRuntime, templates: readonly string[], init: string): Promise<Prompts> {
    const p = new Prompts();
    const tok = rt.tokenizer;
    try {
      const D = rt.configs.text.hiddenSize;
      const dummy = new Identity({ k: new Float32Array(D), stages: 1, words: 1, dim: D, method: 'custom' });
      for (const tp of templates) {
        const e = expandPrompt(tok, tp, new Map([['id', dummy]]));
        const ref = tok.encode(tp.replace('<id>', init));
        if (ref.tokenCount !== e.tokenCount) throw invalid('init', 'a word of a single token', init, { where: 'learnIdentity' });
        p.ids.push(e.ids);
        p.slots.push(e.slots);
        p.refs.push(await rt.runText([ref.ids]));
      }
    } catch (e) {
      p.dispose();
      throw e;
    }
    return p;
  }
  dispose(): void {
    for (const r of this.refs) r.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The learning loss of an identity on a fixed batch: see IdentityLearner.loss. */
export interface LossOptions extends CropOptions {
  count?: number;
  seed?: number;
  lambda?: number;
  init?: string;
  templates?: readonly string[];
}

/**
 * SeFi-IDE learning on an SD runtime: a client of the runtime (its text encoder, VAE encoder,
 * word embeddings, and the learning program it compiles over the runtime's weights), of no
 * other pipeline.
 */
/** The augmented pool's size, and the step-stream id its images are augmented from (image i: stepRandom(seed, i, POOL_STREAM)). */
const POOL = 8;
const POOL_STREAM = 1;

/** A decoded photo's fingerprint (checkpoints and the latent cache are refused for another photo). */
function imageHash(img: RawImage): string {
  return `${img.width}x${img.height}:${createHash('sha256').update(img.data).digest('hex')}`;
}

/**
 * SeFi-IDE learning on an SD runtime: a client of the runtime (its text encoder, VAE encoder,
 * word embeddings, and the learning programs it compiles over the runtime's weights), of no
 * other pipeline.
 */
export class IdentityLearner {
  readonly #alphasCumprod: Float32Array;

  constructor(readonly runtime: SdRuntime) {
    this.#alphasCumprod = DDIMScheduler.fromConfig(runtime.configs.scheduler).alphasCumprod;
  }

  /**
   * Learns a SeFi-IDE identity (S stages × 1 word, separate K and V) from one face image. With
   * `checkpoint` (a folder) the run is resumable: see LearnOptions.checkpoint.
   */
  async learn(face: RawImage | string | Buffer, opts: LearnOptions = {}): Promise<Identity> {
    const rt = this.runtime;
    rt.assertLive();
    // Measured on an H100: in float16 the face-wise attention loss (a mean of squared differences
    // of two nearly equal probability maps) loses its gradient to rounding (rel. error 0.39 against
    // the golden); every other gradient is fine. Until that loss runs in float32, learning needs a
    // float32 runtime.
    if (rt.backend.dtype !== 'float32')
      throw invalid('the engine', "float32 (learning's attention loss is not accurate in float16): load one with { dtype: 'float32' } to learn, then generate with the identity on any engine", shown(`a ${rt.backend.dtype} engine`), { where: 'learnIdentity' });
    const o = resolveLearn(opts, SEFI_TEMPLATES);
    const { signal } = opts;
    throwIfAborted(signal, 'learnIdentity');
    const img = await prepareLearningImage(rt, face, { ...opts, init: o.init });
    const e0 = await rt.wordEmbedding(o.init);
    const aug = o.augment.flip || o.augment.jitter || o.augment.scale ? o.augment : null;
    // What a checkpoint must have been made with (the seed is checked apart: a call without one takes the checkpoint's).
    const fingerprint = JSON.stringify({ generator: 1, init: o.init, stages: o.stages, lr: o.lr, lambda: o.lambda, templates: o.templates, augment: aug, dim: e0.length, vocab: rt.tokenizer.vocabHash, image: imageHash(img) });
    const dir = o.checkpoint;
    const ck = dir !== undefined && o.resume
      ? readCheckpoint(dir, { fingerprint, seed: opts.seed === undefined ? undefined : o.seed, where: 'learnIdentity', option: 'checkpoint', covers: 'photo, init, stages, lr, lambda, templates, augment, seed, model' }, (d) => loadWeights(path.join(d, 'generator.safetensors')))
      : undefined;
    const seed = ck?.seed ?? o.seed;
    using trainer = new TokenTrainer(rt, { init: e0, stages: o.stages, lambda: o.lambda, layers: attentionLossLayersOf(rt.configs.unet), seed, ...(ck ? { weights: ck.model } : {}) });
    if (ck) trainer.setOptimizerState(ck.optimizer);
    const cache = new LatentCache(dir === undefined ? undefined : path.join(dir, 'cache', 'latents.safetensors'), `${fingerprint}:${seed}`);
    using prompts = await Prompts.build(rt, o.templates, o.init);
    const identity = async () => {
      const { k, v } = await trainer.tokens();
      return new Identity({ k, v, stages: o.stages, words: 1, dim: e0.length, method: 'sefi-ide', ...(opts.name !== undefined ? { name: opts.name } : {}) });
    };
    let saved = ck?.step ?? 0;
    const save = async (step: number) => {
      const id = await identity();
      writeCheckpoint(dir!, { step, seed, fingerprint }, trainer.optimizerState(), (d) => {
        saveWeights(path.join(d, 'generator.safetensors'), trainer.hostWeights());
        id.save(path.join(d, 'identity.safetensors'), { vocabHash: rt.tokenizer.vocabHash });
      });
      cache.save();
      saved = step;
    };
    const T = rt.configs.scheduler.numTrainTimesteps;
    const shape = [1, rt.configs.unet.inChannels, rt.nativeSize / rt.latentFactor, rt.nativeSize / rt.latentFactor];
    const start = Date.now();
    let step = saved;
    try {
      for (; step < o.steps; step++) {
        throwIfAborted(signal, 'learnIdentity');
        const r = stepRandom(seed, step);
        // Without augmentation the pool's images are one image: it is encoded once.
        const i = Math.floor(r.nextDouble() * (aug ? POOL : 1));
        const p = await cache.posterior(String(i), () => this.#encode(img, aug, stepRandom(seed, i, POOL_STREAM)));
        const template = Math.floor(r.nextDouble() * o.templates.length);
        const t = Math.floor(r.nextDouble() * T);
        const z0 = sampleLatent(p, randn(r.next(), p.mean.length), rt.configs.vae.scalingFactor);
        const noise = randn(r.next(), z0.length);
        const stage = stageIndex(t, o.stages, T);
        const v = await trainer.trainStep(this.#sample(prompts, template, stage, t, z0, noise, shape), o.lr);
        opts.onProgress?.({ step: step + 1, steps: o.steps, loss: v.loss, lossDiff: v.lossDiff, lossAtt: v.lossAtt, elapsedMs: Date.now() - start });
        if (dir !== undefined && ((step + 1) % o.checkpointEvery === 0 || step + 1 === o.steps)) await save(step + 1);
      }
    } catch (e) {
      // An abort keeps what was learned: a checkpoint of the steps done (a later call resumes).
      if (dir !== undefined && (e as IdforgeError).code === 'E_ABORTED' && step > saved) {
        try {
          await save(step);
        } catch (w) {
          opts.onWarning?.(`learnIdentity: the checkpoint of step ${step} could not be written: ${(w as Error).message}`);
        }
      }
      throw e;
    }
    throwIfAborted(signal, 'learnIdentity');
    return identity();
  }

  /**
   * The learning loss of an identity on a fixed batch (no augmentation, latent = the VAE mean):
   * `count` samples (template, timestep, noise) drawn from `seed`. For tests and monitoring.
   */
  async loss(face: RawImage | string | Buffer, identity: Identity, opts: LossOptions = {}): Promise<{ loss: number; lossDiff: number; lossAtt: number }> {
    const rt = this.runtime;
    const img = await prepareLearningImage(rt, face, opts);
    const p = await this.#encode(img, null, new Xoshiro128(0));
    const z0 = p.mean.map((m) => m * rt.configs.vae.scalingFactor);
    const rows = identity.stages * identity.words;
    const D = identity.dim;
    const prog = this.#lossProgram(p.shape, rows, D, opts.lambda ?? 0.003);
    const templates = opts.templates ?? SEFI_TEMPLATES;
    using prompts = await Prompts.build(rt, templates, opts.init ?? 'person');
    using k = rt.floats(identity.kData, [rows, D]);
    using v = rt.floats(identity.vData, [rows, D]);
    const rng = new Xoshiro128(opts.seed ?? 1);
    const T = rt.configs.scheduler.numTrainTimesteps;
    const n = opts.count ?? 8;
    const acc = { loss: 0, lossDiff: 0, lossAtt: 0 };
    for (let i = 0; i < n; i++) {
      const template = Math.floor(rng.nextDouble() * templates.length);
      const t = Math.floor(rng.nextDouble() * T);
      // The first word of the stage (SeFi-IDE identities have one).
      const s = this.#sample(prompts, template, identity.stageFor(t, T) * identity.words, t, z0, randn(1000003 + i, z0.length), p.shape);
      const owned = [rt.ints(s.ids, [1, 77]), rt.ints(s.slots, [1, 77]), rt.floats(s.zt, s.shape), rt.floats(new Float32Array([t]), [1]), rt.floats(s.noise, s.shape)];
      try {
        const [ids, slots, zt, tt, eps] = owned as [Tensor, Tensor, Tensor, Tensor, Tensor];
        const outs = (await prog.run([ids, slots, s.reference, zt, tt, eps, k, v])).map((o) => {
          using h = toHost(o);
          return h.toFloat32()[0]!;
        });
        acc.loss += outs[0]! / n;
        acc.lossDiff += outs[1]! / n;
        acc.lossAtt += outs[2]! / n;
      } finally {
        owned.forEach((x) => x.dispose());
      }
    }
    return acc;
  }

  /** The identity the generator produces before any step: every token = the init word's embedding. */
  async initialIdentity(opts: { stages?: number; init?: string } = {}): Promise<Identity> {
    const e0 = await this.runtime.wordEmbedding(opts.init ?? 'person');
    const S = opts.stages ?? 5;
    const k = new Float32Array(S * e0.length);
    for (let s = 0; s < S; s++) k.set(e0, s * e0.length);
    return new Identity({ k, v: k.slice(), stages: S, words: 1, dim: e0.length, method: 'sefi-ide' });
  }

  /** The loss of given token sets [rows, D] (no gradients): IdentityLearner.loss's program. */
  #lossProgram(shape: number[], rows: number, D: number, lambda: number): Program {
    const rt = this.runtime;
    const layers = attentionLossLayersOf(rt.configs.unet);
    const [, C, h, w] = shape as [number, number, number, number];
    return rt.program(`learn-loss:${h}x${w}:${rows}x${D}:${lambda}:${layers.join(',')}`, (g) => {
      const ids = g.input([1, 77], 'int32');
      const slots = g.input([1, 77], 'int32');
      const reference = g.input([1, 77, rt.configs.unet.crossAttentionDim]);
      const x = g.input([1, C, h, w]);
      const t = g.input([1]);
      const eps = g.input([1, C, h, w]);
      const k = g.input([rows, D]);
      const v = g.input([rows, D]);
      const r = buildLearnLoss(g, rt.weights, rt.configs, layers, lambda, { ids, slots, k, v, reference, x, t, eps });
      g.output(r.loss, 'loss');
      g.output(r.lossDiff, 'lossDiff');
      g.output(r.lossAtt, 'lossAtt');
    });
  }

  /** A step's data: the template's ids, its slot row pointing at token row `row`, z_t = add_noise(z0, noise, t). */
  #sample(prompts: Prompts, template: number, row: number, t: number, z0: Float32Array, noise: Float32Array, shape: number[]): LearnSample {
    const slots = prompts.slots[template]!.map((s) => (s < 0 ? -1 : row + s));
    return { ids: prompts.ids[template]!, slots, reference: prompts.refs[template]!, zt: addNoise(this.#alphasCumprod, z0, noise, [t]), t, noise, shape };
  }

  /** The VAE posterior of the face, augmented from `rng` (aug null: as it is). */
  async #encode(img: RawImage, aug: Required<AugmentOptions> | null, rng: Xoshiro128): Promise<LatentPosterior> {
    const S = img.width;
    using x = Tensor.from(augmentImage(img, aug, () => rng.nextDouble()), [1, 3, S, S]);
    return latentPosterior(await this.runtime.vaeEncode(x));
  }
}
