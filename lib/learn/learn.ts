/**
 * SeFi-IDE per-identity learning (IdentityLearner, a client of the SD runtime): from one face
 * photo, learn 5 per-stage (K, V) token pairs produced by a small generator
 * (lib/learn/generator.ts) through the frozen text encoder and UNet. One Program per (latent size, λ) computes, in one native call, both text-encoder passes
 * (the stage's K token and V token injected at the `<id>` slot), the UNet with keys from the K
 * context and values from the V context, the loss
 *   L = mean((ε_θ(z_t, t, c_K, c_V) − ε)²) + λ · mean_layers mean((A − A_ref)²)
 * and its gradients w.r.t. the two injected vectors (lib/graph/autodiff.ts). A is the
 * cross-attention map (all 77 tokens) at each layer whose resolution is latent/2, A_ref the map of
 * the same template with the init word ("person") in place of V*, taken with the queries of the
 * target pass and treated as a constant. The generator's backward and Adam run in TypeScript.
 *
 * Data: the face is centre-cropped to a square and resized to the model's native size
 * (latentFactor · unet.sampleSize: 512 for SD 1.5, 128 for the tiny test model). Augmentation is
 * applied to the image before VAE encoding: horizontal flip (p = 0.5), colour jitter (brightness,
 * contrast, saturation ×[0.9, 1.1]) and a random scale s ∈ [0.1, 1] (the face is shrunk by s and
 * pasted at a random place on a canvas of its mean colour). To keep a step to one UNet
 * forward/backward, a pool of augmented images (min(steps, 8)) is VAE-encoded once up front; each
 * step draws one, samples z0 = (mean + σ·ε)·scaling_factor afresh, a timestep t ∈ [0, 1000) and
 * the noise; the stage is floor(t·S/1000).
 */
import { IdforgeError, throwIfAborted } from '../errors.js';
import { grad } from '../graph/autodiff.js';
import type { Graph } from '../graph/graph.js';
import type { Program } from '../graph/program.js';
import type { Weights } from '../graph/weights.js';
import type { ModelConfigs, UNetConfig } from '../io/configs.js';
import { resolveLearn, type AugmentOptions, type LearnOptions } from './options.js';
import { toHost } from '../runtime/runtime.js';
import type { SdRuntime } from '../runtime/sd.js';
import { crossAttentionLayers } from '../unet/unet.js';
import { layerDownsampling } from '../attention.js';
import { Identity, stageIndex } from '../identity/identity.js';
import { centreCrop, chooseFace, cropAroundFace, decodeFace } from '../identity/face.js';
import { expandPrompt } from '../identity/placeholders.js';
import type { RawImage } from '../io/image.js';
import { DDIMScheduler } from '../sched/ddim.js';
import { Xoshiro128, randn } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import { buildTextEncoder } from '../text/clip.js';
import { latentPosterior, sampleLatent } from '../vae/posterior.js';
import { argError } from '../validate.js';
import { buildUNetLoss } from './objective.js';
import { TokenGenerator } from './generator.js';

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
  if (face === undefined || face === null) throw argError('a face image is required (a RawImage, a file path or an encoded Buffer)', 'learnIdentity');
  const img = await decodeFace(face as RawImage | string | Buffer);
  const size = rt.nativeSize;
  const min = Math.min(64, size);
  if (Math.min(img.width, img.height) < min)
    throw new IdforgeError('E_SHAPE', `learnIdentity: the face image is ${img.width}x${img.height}; it needs at least ${min}x${min} pixels`);
  const detect = opts.face !== false && (opts.face !== undefined || PERSON_WORDS.has((opts.init ?? 'person').trim().toLowerCase()));
  if (!detect) return centreCrop(img, size);
  const warnings: string[] = [];
  const found = await chooseFace(img, face, opts.face || {}, warnings);
  for (const w of warnings) opts.onWarning?.(w);
  return found ? cropAroundFace(img, found, size) : centreCrop(img, size);
}

interface Sample {
  template: number;
  t: number;
  noiseSeed: number;
}

/**
 * The learning graph: (ids, slots, vK, vV, refContext, z_t, t, ε) → loss, lossDiff, lossAtt,
 * dvK, dvV. Exported for the memory planner (lib/learn/plan.ts).
 */
export function buildLearnGraph(g: Graph, w: { text: Weights; unet: Weights }, configs: Pick<ModelConfigs, 'text' | 'unet'>, layers: readonly string[], h: number, wd: number, lambda: number): void {
  const D = configs.text.hiddenSize;
  const C = configs.unet.inChannels;
  const ids = g.input([1, 77], 'int32');
  const slots = g.input([1, 77], 'int32');
  const vk = g.input([1, D]);
  const vv = g.input([1, D]);
  const ref = g.input([1, 77, configs.unet.crossAttentionDim]);
  const x = g.input([1, C, h, wd]);
  const t = g.input([1]);
  const eps = g.input([1, C, h, wd]);
  const ck = buildTextEncoder(g, w.text, configs.text, { ids, inject: { slots, vectors: vk } });
  const cv = buildTextEncoder(g, w.text, configs.text, { ids, inject: { slots, vectors: vv } });
  const r = buildUNetLoss(g, w.unet, configs.unet, { x, t, ctx: { k: ck, v: cv }, epsTarget: eps, ...(layers.length ? { reference: { context: ref, layers } } : {}) });
  const lossAtt = r.lossAtt ?? g.scale(r.lossDiff!, 0);
  const loss = g.add(r.lossDiff!, g.scale(lossAtt, lambda));
  const [dk, dv] = grad(g, loss, [vk, vv], { stop: r.stop });
  g.output(loss, 'loss');
  g.output(r.lossDiff!, 'lossDiff');
  g.output(lossAtt, 'lossAtt');
  g.output(dk!, 'dk');
  g.output(dv!, 'dv');
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
        if (ref.tokenCount !== e.tokenCount) throw argError(`the init word '${init}' must be a single token`, 'learnIdentity');
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

interface StepResult { loss: number; lossDiff: number; lossAtt: number; dk: Float32Array; dv: Float32Array }

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
export class IdentityLearner {
  readonly #alphasCumprod: Float32Array;

  constructor(readonly runtime: SdRuntime) {
    this.#alphasCumprod = DDIMScheduler.fromConfig(runtime.configs.scheduler).alphasCumprod;
  }

  /** Learns a SeFi-IDE identity (S stages × 1 word, separate K and V) from one face image. */
  async learn(face: RawImage | string | Buffer, opts: LearnOptions = {}): Promise<Identity> {
    const rt = this.runtime;
    rt.assertLive();
    // Measured on an H100: in float16 the face-wise attention loss (a mean of squared differences
    // of two nearly equal probability maps) loses its gradient to rounding (rel. error 0.39 against
    // the golden); every other gradient is fine. Until that loss runs in float32, learning needs a
    // float32 runtime.
    if (rt.backend.dtype !== 'float32')
      throw argError("learnIdentity needs a float32 engine (its attention loss is not accurate in float16): load one with { dtype: 'float32' } to learn, then generate with the identity on any engine");
    const o = resolveLearn(opts, SEFI_TEMPLATES);
    const { signal } = opts;
    throwIfAborted(signal, 'learnIdentity');
    const img = await prepareLearningImage(rt, face, { ...opts, init: o.init });
    const rng = new Xoshiro128(o.seed);
    const rnd = () => rng.nextDouble();
    const e0 = await this.runtime.wordEmbedding(o.init);
    const D = e0.length;
    const gen = new TokenGenerator(e0, { dim: D, stages: o.stages }, o.seed);
    const sf = rt.configs.vae.scalingFactor;
    const pool = await this.#encodePool(img, o.augment.flip || o.augment.jitter || o.augment.scale ? o.augment : null, Math.min(o.steps, 8), rnd);
    const shape = pool[0]!.shape;
    const prog = this.#program(shape[2]!, shape[3]!, o.lambda);
    using prompts = await Prompts.build(rt, o.templates, o.init);
    const T = rt.configs.scheduler.numTrainTimesteps;
    const start = Date.now();
    for (let step = 0; step < o.steps; step++) {
      throwIfAborted(signal, 'learnIdentity');
      const p = pool[Math.floor(rnd() * pool.length)]!;
      const zs = randn(o.seed * 7919 + step * 2 + 1, p.mean.length);
      const z0 = sampleLatent(p, zs, sf);
      const s: Sample = { template: Math.floor(rnd() * o.templates.length), t: Math.floor(rnd() * T), noiseSeed: o.seed * 7919 + step * 2 + 2 };
      const stage = stageIndex(s.t, o.stages, T);
      const { out, tape } = gen.forward();
      const vk = Float32Array.from(out.subarray(stage * D, (stage + 1) * D));
      const vv = Float32Array.from(out.subarray((o.stages + stage) * D, (o.stages + stage + 1) * D));
      const r = await this.#step(prog, prompts, s, z0, shape, vk, vv);
      if (!Number.isFinite(r.loss)) throw new IdforgeError('E_INTERNAL', `learnIdentity: the loss became ${r.loss} at step ${step + 1}`);
      const dOut = new Float64Array(out.length);
      dOut.set(r.dk, stage * D);
      dOut.set(r.dv, (o.stages + stage) * D);
      gen.adam(gen.backward(tape, dOut), o.lr);
      opts.onProgress?.({ step: step + 1, steps: o.steps, loss: r.loss, lossDiff: r.lossDiff, lossAtt: r.lossAtt, elapsedMs: Date.now() - start });
    }
    throwIfAborted(signal, 'learnIdentity');
    const v = gen.vectors();
    return new Identity({ k: v.k, v: v.v, stages: o.stages, words: 1, dim: D, method: 'sefi-ide', ...(opts.name !== undefined ? { name: opts.name } : {}) });
  }

  /**
   * The learning loss of an identity on a fixed batch (no augmentation, latent = the VAE mean):
   * `count` samples (template, timestep, noise) drawn from `seed`. For tests and monitoring.
   */
  async loss(face: RawImage | string | Buffer, identity: Identity, opts: LossOptions = {}): Promise<{ loss: number; lossDiff: number; lossAtt: number }> {
    const rt = this.runtime;
    const img = await prepareLearningImage(rt, face, opts);
    const [p] = await this.#encodePool(img, null, 1, () => 0);
    const z0 = p!.mean.map((m) => m * rt.configs.vae.scalingFactor);
    const prog = this.#program(p!.shape[2]!, p!.shape[3]!, opts.lambda ?? 0.003);
    const templates = opts.templates ?? SEFI_TEMPLATES;
    using prompts = await Prompts.build(rt, templates, opts.init ?? 'person');
    const rng = new Xoshiro128(opts.seed ?? 1);
    const T = rt.configs.scheduler.numTrainTimesteps;
    const n = opts.count ?? 8;
    const D = identity.dim;
    const acc = { loss: 0, lossDiff: 0, lossAtt: 0 };
    for (let i = 0; i < n; i++) {
      const s: Sample = { template: Math.floor(rng.nextDouble() * templates.length), t: Math.floor(rng.nextDouble() * T), noiseSeed: 1000003 + i };
      const stage = identity.stageFor(s.t, T);
      const vk = identity.kData.slice(stage * identity.words * D, stage * identity.words * D + D);
      const vv = identity.vData.slice(stage * identity.words * D, stage * identity.words * D + D);
      const r = await this.#step(prog, prompts, s, z0, p!.shape, vk, vv);
      acc.loss += r.loss / n;
      acc.lossDiff += r.lossDiff / n;
      acc.lossAtt += r.lossAtt / n;
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

  /** The init word's token embedding (it must be one token). */
  #program(h: number, w: number, lambda: number): Program {
    const rt = this.runtime;
    const layers = attentionLossLayersOf(rt.configs.unet);
    return rt.program(`learn:${h}x${w}:${lambda}:${layers.join(',')}`, (g) => buildLearnGraph(g, rt.weights, rt.configs, layers, h, w, lambda));
  }

  async #step(prog: Program, prompts: Prompts, s: Sample, z0: Float32Array, shape: number[], vk: Float32Array, vv: Float32Array): Promise<StepResult> {
    const rt = this.runtime;
    const a = this.#alphasCumprod[s.t]!;
    const eps = randn(s.noiseSeed, z0.length);
    const zt = new Float32Array(z0.length);
    const sa = Math.sqrt(a);
    const sb = Math.sqrt(1 - a);
    for (let i = 0; i < zt.length; i++) zt[i] = sa * z0[i]! + sb * eps[i]!;
    const D = vk.length;
    const inputs = [
      rt.ints(prompts.ids[s.template]!, [1, 77]),
      rt.ints(prompts.slots[s.template]!, [1, 77]),
      rt.floats(vk, [1, D]),
      rt.floats(vv, [1, D]),
    ];
    const owned = [...inputs];
    inputs.push(prompts.refs[s.template]!);
    const rest = [rt.floats(zt, shape), rt.floats(new Float32Array([s.t]), [1]), rt.floats(eps, shape)];
    owned.push(...rest);
    inputs.push(...rest);
    try {
      const vals = (await prog.run(inputs)).map((o) => {
        using h = toHost(o);
        return h.toFloat32();
      });
      return { loss: vals[0]![0]!, lossDiff: vals[1]![0]!, lossAtt: vals[2]![0]!, dk: vals[3]!, dv: vals[4]! };
    } finally {
      owned.forEach((x) => x.dispose());
    }
  }

  /** VAE-encodes `count` augmented copies of the face once, up front (a step then costs one UNet forward/backward). */
  async #encodePool(img: RawImage, aug: Required<AugmentOptions> | null, count: number, rnd: () => number): Promise<{ mean: Float32Array; std: Float32Array; shape: number[] }[]> {
    const pool = [];
    const S = img.width;
    for (let i = 0; i < count; i++) {
      using x = Tensor.from(augmentImage(img, aug, rnd), [1, 3, S, S]);
      pool.push(latentPosterior(await this.runtime.vaeEncode(x)));
    }
    return pool;
  }
}
