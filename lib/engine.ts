// Engine: the text/image → image generation pipeline (DDIM, DPM-Solver++ and Euler samplers with
// classifier-free guidance, batches, identities, attention capture) and the public API around it. The model itself (backend, stream, weights,
// programs) is the SD runtime it runs on (lib/runtime/sd.ts); SeFi-IDE learning is another client
// of that runtime (lib/learn/learn.ts), reached through learnIdentity().
import { IdforgeError, throwIfAborted } from './errors.js';
import type { BackendSpec } from './graph/program.js';
import type { Weights } from './graph/weights.js';
import type { ModelSource } from './io/checkpoint.js';
import type { ModelConfigs } from './io/configs.js';
import { decodeImage, toRawImage, toSignedCHW, type RawImage } from './io/image.js';
import type { GenerateOptions, GenerateResult, LearnOptions, LoadOptions, LoraOptions, NoiseOptions, SetLorasOptions, TextOptions } from './options.js';
import { toHost } from './runtime/runtime.js';
import { SdRuntime } from './runtime/sd.js';
import { DDIMScheduler } from './sched/ddim.js';
import { normalGenerator } from './sched/random.js';
import { makeSampler } from './sched/samplers.js';
import { checkPrompt } from './io/bounds.js';
import { checkLatentsFinite } from './numeric.js';
import { checkFits, coefficientTensor, img2imgStart, markRun, stepProgram } from './sampling.js';
import { Tensor } from './tensor.js';
import { latentPosterior, sampleLatent } from './vae/posterior.js';
import type { ClipTokenizer } from './text/tokenizer.js';
import { conditionalMaps, layerDownsampling, selectLayers, selectSteps, type AttentionMap } from './attention.js';
import type { Identity } from './identity/identity.js';
import { expandPrompt, type ExpandedPrompt } from './identity/placeholders.js';
import { IdentityLearner } from './learn/learn.js';
import { argError, identityMap, imageTensorShape, oneOf, regionList, timestep, tokenIds, unetContexts, validateGenerate, validateLoras } from './validate.js';

export type { GenerateOptions, GenerateResult, LoadOptions, LoraOptions, ProgressInfo, SetLorasOptions, TextOptions } from './options.js';

export class Engine implements Disposable {
  /** The model this engine runs on: backend, stream, weights, programs (shared with the learner and the bench). */
  readonly runtime: SdRuntime;
  readonly scheduler: DDIMScheduler;
  #learner: IdentityLearner | undefined;

  private constructor(runtime: SdRuntime) {
    this.runtime = runtime;
    this.scheduler = DDIMScheduler.fromConfig(runtime.configs.scheduler);
  }

  /** Loads a diffusers folder or a single original-layout .safetensors file. Nothing is downloaded. */
  static async load(path: string, opts: LoadOptions = {}): Promise<Engine> {
    return Engine.over(SdRuntime.load(path, opts));
  }

  /** An engine over an already opened model source (e.g. the benchmark's synthetic SD 1.5 weights). Takes ownership of it. */
  static fromSource(source: ModelSource, backend: BackendSpec): Engine {
    return Engine.over(SdRuntime.fromSource(source, backend));
  }

  private static over(runtime: SdRuntime): Engine {
    try {
      return new Engine(runtime);
    } catch (e) {
      runtime.dispose();
      throw e;
    }
  }

  get configs(): ModelConfigs {
    return this.runtime.configs;
  }

  get backend(): BackendSpec {
    return this.runtime.backend;
  }

  get tokenizer(): ClipTokenizer {
    return this.runtime.tokenizer;
  }

  get modelPath(): string {
    return this.runtime.modelPath;
  }

  get loadWarnings(): string[] {
    return this.runtime.loadWarnings;
  }

  get disposed(): boolean {
    return this.runtime.disposed;
  }

  /**
   * @deprecated the resident weights are `engine.runtime.weights`; kept for callers that build
   * graphs over them directly (test/grad.test.ts).
   */
  get w(): { unet: Weights; vae: Weights; text: Weights } {
    return this.runtime.weights;
  }

  /** The VAE's spatial downsampling factor. */
  get latentFactor(): number {
    return this.runtime.latentFactor;
  }

  /** Image sides must be multiples of this (VAE × UNet downsampling). */
  get sizeMultiple(): number {
    return this.runtime.sizeMultiple;
  }

  /** Every cross-attention layer name of this model's UNet. */
  get crossAttentionLayers(): string[] {
    return this.runtime.crossAttentionLayers;
  }

  /** How many compiled programs (one per input shape / option set) the engine keeps; LRU beyond. */
  get maxPrograms(): number {
    return this.runtime.maxPrograms;
  }

  set maxPrograms(n: number) {
    this.runtime.maxPrograms = n;
  }

  /** Compiled programs currently kept (for the benchmark harness and tests). */
  get programCount(): number {
    return this.runtime.programCount;
  }

  /** Frees every compiled program (they are rebuilt on demand). */
  clearPrograms(): void {
    this.runtime.clearPrograms();
  }

  /** 77 token ids (BOS, content, EOS, padding); prompts past 75 tokens are truncated. */
  tokenize(text: string): Int32Array {
    this.runtime.assertLive();
    if (typeof text !== 'string') throw argError('tokenize expects a string');
    checkPrompt(text, 'prompt');
    return this.tokenizer.encode(text).ids;
  }

  /**
   * last_hidden_state [B, 77, D] of the text encoder for token ids or prompts, on the CPU in float32.
   * With an identity, `<id>` / `<id:name>` placeholders expand to the identity's word slots whose
   * token embeddings are replaced by the identity's `kind` vectors of `stage`.
   */
  async encodeText(input: string | Int32Array | number[] | (string | Int32Array)[], opts: TextOptions = {}): Promise<Tensor> {
    this.runtime.assertLive();
    const idMap = identityMap(opts);
    if (idMap || (typeof input === 'string' && /<id(:[^<>]*)?>/.test(input))) {
      if (typeof input !== 'string') throw argError('identities apply to a prompt string, not to token ids');
      const e = this.expand(input, idMap);
      if (e.rows.length === 0) return toHost(await this.runtime.runText([e.ids]));
      const stage = opts.stage ?? 0;
      const kind = oneOf(opts.kind ?? 'k', 'kind', ['k', 'v'] as const);
      return toHost(await this.runtime.runText([e.ids], { slots: [e.slots], vectors: e.vectors(stage, kind) }));
    }
    if (input === null || input === undefined || (typeof input !== 'string' && !Array.isArray(input) && !(input instanceof Int32Array)))
      throw argError('encodeText expects a prompt, 77 token ids, or an array of those');
    if (Array.isArray(input) && input.length === 0) throw argError('encodeText got an empty list');
    const list: (string | Int32Array | number[])[] = Array.isArray(input) && typeof input[0] !== 'number' ? (input as (string | Int32Array)[]) : [input as string | Int32Array | number[]];
    const ids = list.map((x) => (typeof x === 'string' ? this.tokenize(x) : tokenIds(x, this.configs.text.vocabSize)));
    return toHost(await this.runtime.runText(ids));
  }

  /** The token embedding (before positions) of a one-token word, e.g. "person". */
  async wordEmbedding(word: string): Promise<Float32Array> {
    return this.runtime.wordEmbedding(word);
  }

  /** A prompt's placeholders expanded against the identities, checked against this model's text width. */
  private expand(prompt: string, idMap: Map<string, Identity> | undefined): ExpandedPrompt {
    const e = expandPrompt(this.tokenizer, prompt, idMap);
    if (e.rows.length && e.dim !== this.configs.text.hiddenSize)
      throw new IdforgeError('E_IDENTITY', `identity has dim ${e.dim}, the model's text width is ${this.configs.text.hiddenSize}`);
    return e;
  }

  /**
   * The UNet's noise prediction for latents [B, C, h, w] at timestep t, with a context [B, 77, D] or
   * separate key/value contexts; `regions` confine token indices to boxes of the image.
   */
  async predictNoise(latents: Tensor, t: number, context: Tensor | { k: Tensor; v: Tensor }, opts: NoiseOptions = {}): Promise<Tensor> {
    return (await this.predictNoiseWithAttention(latents, t, context, [], opts)).eps;
  }

  /**
   * predictNoise that also returns the softmax probabilities of the named cross-attention layers
   * (see `crossAttentionLayers`), each [B·heads, h·w, keys] float32 on the CPU.
   */
  async predictNoiseWithAttention(latents: Tensor, t: number, context: Tensor | { k: Tensor; v: Tensor }, layers: readonly string[], opts: NoiseOptions = {}): Promise<{ eps: Tensor; attention: Map<string, Tensor> }> {
    const rt = this.runtime;
    rt.assertLive();
    const [b, , h, w] = imageTensorShape(latents, 'latents', this.configs.unet.inChannels, rt.latentMultiple);
    timestep(t, this.configs.scheduler.numTrainTimesteps);
    const ctxs = unetContexts(context, b, this.configs.unet.crossAttentionDim);
    const dual = ctxs.length === 2;
    const known = new Set(this.crossAttentionLayers);
    for (const l of layers) if (!known.has(l)) throw argError(`unknown cross-attention layer '${l}'`);
    const n = ctxs[0]!.shape[1]!;
    const regions = opts?.regions === undefined ? [] : regionList(opts.regions, n);  // none: the plain program
    const capture = [...new Set(layers)].sort();
    return rt.shared(async () => {
      await rt.preload(['unet']);
      const p = rt.unetProgram(b, h, w, n, null, { dual, capture, regions: regions.length > 0 });
      const inputs: Tensor[] = [];
      try {
        // One at a time, so that a failed upload never leaks the ones before it.
        inputs.push(rt.upload(latents));
        inputs.push(rt.floats(new Float32Array(b).fill(t), [b]));
        for (const c of ctxs) inputs.push(rt.upload(c));
        if (regions.length) inputs.push(rt.regionInput(regions, n, b, false));
        const [eps, ...maps] = await p.run(inputs);
        const attention = new Map<string, Tensor>();
        capture.forEach((l, i) => attention.set(l, toHost(maps[i]!)));
        return { eps: toHost(eps!), attention };
      } finally {
        for (const x of inputs) x.dispose();
      }
    });
  }

  /** The VAE decoder: image [B, 3, 8h, 8w] in [−1, 1] from z [B, C, h, w] (z already divided by the scaling factor). */
  async decodeLatents(z: Tensor, signal?: AbortSignal): Promise<Tensor> {
    this.runtime.assertLive();
    imageTensorShape(z, 'latents to decode', this.configs.vae.latentChannels, 1);
    return this.runtime.vaeDecode(z, signal);
  }

  /** The VAE encoder: latent mean and logvar (clamped to [−30, 20] as diffusers does) of img [B, 3, H, W] in [−1, 1]. */
  async encodeImage(img: Tensor): Promise<{ mean: Tensor; logvar: Tensor }> {
    this.runtime.assertLive();
    imageTensorShape(img, 'image to encode', this.configs.vae.inChannels, this.latentFactor);
    return this.runtime.vaeEncode(img);
  }

  /**
   * Text → image (or image → image) with a sampler and classifier-free guidance, optionally with
   * identities and attention capture; `numImages` images run as one batch. Each denoising step is
   * one native call (lib/sampling.ts): the latents stay on the backend until the VAE decodes them.
   */
  async generate(opts: GenerateOptions): Promise<GenerateResult> {
    const rt = this.runtime;
    rt.assertLive();
    const init = opts?.image !== undefined ? await decodeImage(opts.image, 'image') : undefined;
    const o = validateGenerate(opts, this.sizeMultiple, init);
    const warnings: string[] = [];
    const { signal } = opts;
    throwIfAborted(signal, 'generate');
    const h = o.height / this.latentFactor;
    const w = o.width / this.latentFactor;
    const ch = this.configs.unet.inChannels;
    const N = o.numImages;
    const n = ch * h * w;
    const e = this.expand(opts.prompt, identityMap(opts));
    if (e.truncated) warnings.push('the prompt is longer than 75 tokens and was truncated');
    const cfg = o.guidanceScale > 1;
    // Text rows: [negative × N, prompt × N] with guidance (the unconditional rows first, as CFG
    // reads them), else [prompt × N]. The unconditional branch never sees an identity.
    const ids: Int32Array[] = Array.from({ length: N }, () => e.ids);
    const slots: Int32Array[] = Array.from({ length: N }, () => e.slots);
    if (cfg) {
      const neg = this.tokenizer.encode(o.negativePrompt);
      if (neg.truncated) warnings.push('the negative prompt is longer than 75 tokens and was truncated');
      ids.unshift(...Array.from({ length: N }, () => neg.ids));
      slots.unshift(...Array.from({ length: N }, () => new Int32Array(77).fill(-1)));
    }
    const withId = e.rows.length > 0;
    const dual = withId && !e.kvShared;
    const sampler = makeSampler(o.sampler, this.configs.scheduler, o.steps, { eta: o.eta });
    const start = init ? img2imgStart(o.steps, o.strength, sampler.timesteps.length) : 0;
    const timesteps = sampler.timesteps.slice(start);
    // Image i draws from its own generator, seeded with seed + i: its initial noise, then (image
    // to image below strength 1) the VAE posterior sample, then each step's noise.
    const gens = Array.from({ length: N }, (_, i) => normalGenerator(o.seed + i));
    const draw = (i: number) => Float32Array.from({ length: n }, gens[i]!);
    const noise0 = new Float32Array(N * n);
    if (opts.latents) {
      imageTensorShape(opts.latents, 'latents', ch, rt.latentMultiple);
      if (opts.latents.shape[0] !== N || opts.latents.shape[2] !== h || opts.latents.shape[3] !== w)
        throw new IdforgeError('E_SHAPE', `latents must be [${N}, ${ch}, ${h}, ${w}] for ${N} image(s) of ${o.width}x${o.height}, got ${JSON.stringify(opts.latents.shape)}`);
      noise0.set(opts.latents.toFloat32());
    }
    // Drawn even when latents are given, so that the later draws do not depend on it.
    for (let i = 0; i < N; i++) {
      const z = draw(i);
      if (!opts.latents) noise0.set(z, i * n);
    }
    const stochastic = sampler.stochastic;
    let stepNoise: Float32Array | undefined;
    if (opts.stepNoise !== undefined) {
      const want = [timesteps.length, N, ch, h, w];
      const s = opts.stepNoise.shape;
      if (s.length !== 5 || s.some((d, i) => d !== want[i]))
        throw new IdforgeError('E_SHAPE', `stepNoise must be [steps run, numImages, C, h, w] = ${JSON.stringify(want)}, got ${JSON.stringify(s)}`);
      if (stochastic) stepNoise = opts.stepNoise.toFloat32();
      else warnings.push(`stepNoise is ignored: sampler ${o.sampler}${o.sampler === 'ddim' ? ' with eta 0' : ''} adds no noise`);
    }
    const levels = this.configs.unet.blockOutChannels.length;
    const capLayers = opts.captureAttention ? selectLayers(opts.captureAttention.layers, this.crossAttentionLayers, h, levels) : [];
    const capSteps = opts.captureAttention ? selectSteps(opts.captureAttention.steps, timesteps.length) : new Set<number>();
    const reduce = opts.captureAttention?.reduce === 'mean';
    const idScale = o.identityScale;
    const maps: AttentionMap[] = [];
    // Weights load before the clock starts, yielding between tensors so that abort works.
    await rt.preload(['text', 'unet', 'vae-decoder'], signal);
    // The activation memory N images need is checked before anything is allocated for them.
    const shape = { batch: N, h, w, tokens: 77, guidance: cfg ? o.guidanceScale : null, dual, noise: stochastic };
    const largest = capLayers.length && capSteps.size ? capLayers : [];
    checkFits(stepProgram(rt, { ...shape, capture: largest }), { ...shape, capture: largest }, this.backend, 'generate');
    // The starting latents: noise × init_noise_sigma, or (image to image) the image's latents
    // noised to the first timestep run. Strength 1 starts from pure noise, as diffusers'
    // inpainting pipeline does (is_strength_max), so that it equals text-to-image.
    let lat = noise0.map((v) => v * sampler.initNoiseSigma);
    if (init && o.strength < 1) {
      const { a, b } = sampler.noiseScales(start);
      const x0 = await this.imageLatents(init, N, draw);
      lat = noise0.map((z, i) => a * x0[i]! + b * z);
    }
    const start0 = Date.now();
    // identityScale interpolates the identity's vectors from the word "person" (looked up once).
    const person = withId && idScale !== 1 ? await rt.wordEmbedding('person') : undefined;
    const scaled = (v: Float32Array): Float32Array => {
      if (!person) return v;
      const D = person.length;
      return v.map((x, i) => person[i % D]! + idScale * (x - person[i % D]!));
    };
    // One text-encoder run per distinct (stage, K|V) set, cached across steps.
    const contexts = new Map<string, Tensor>();
    const context = async (stage: number, kind: 'k' | 'v'): Promise<Tensor> => {
      const key = withId ? `${stage}:${e.kvShared ? 'k' : kind}` : 'plain';
      let c = contexts.get(key);
      if (!c) {
        c = withId ? await rt.runText(ids, { slots, vectors: scaled(e.vectors(stage, e.kvShared ? 'k' : kind)) }) : await rt.runText(ids);
        contexts.set(key, c);
      }
      return c;
    };
    const c0 = sampler.coefficients(start, true).cin;
    let x = rt.floats(lat, [N, ch, h, w]);
    let xin = rt.floats(c0 === 1 ? lat : lat.map((v) => v * c0), [N, ch, h, w]);
    let state = Tensor.zeros([N, ch, h, w], this.backend);
    let numericWarned = false;
    try {
      for (let i = 0; i < timesteps.length; i++) {
        throwIfAborted(signal, 'generate');
        const t = timesteps[i]!;
        const stage = withId ? e.stageFor(t, this.configs.scheduler.numTrainTimesteps) : 0;
        const capture = capSteps.has(i + 1) ? capLayers : [];
        const program = stepProgram(rt, { ...shape, capture });
        checkFits(program, { ...shape, capture }, this.backend, 'generate');
        const ctxK = await context(stage, 'k');
        const ctxV = dual ? await context(stage, 'v') : undefined;
        const inputs: Tensor[] = [];
        let outs: Tensor[];
        try {
          inputs.push(coefficientTensor(sampler, start + i, i === 0, this.backend));
          inputs.push(rt.floats(new Float32Array(ids.length).fill(t), [ids.length]));
          if (stochastic) {
            const z = stepNoise ? stepNoise.subarray(i * N * n, (i + 1) * N * n) : new Float32Array(N * n);
            if (!stepNoise) for (let j = 0; j < N; j++) z.set(draw(j), j * n);
            inputs.push(rt.floats(z, [N, ch, h, w]));
          }
          const [coefs, tIn, zIn] = inputs;
          // Abort stops the native run within milliseconds; progress about every second inside long steps.
          const onTick = (fraction: number) => opts.onProgress?.({ step: i, steps: timesteps.length, timestep: t, elapsedMs: Date.now() - start0, stage, fraction, latents: () => x.to('float32', 'cpu') });
          outs = await program.run([x, xin, state, coefs!, tIn!, ctxK, ...(ctxV ? [ctxV] : []), ...(zIn ? [zIn] : [])], { signal, ...(opts.onProgress ? { onTick } : {}) });
          markRun(program);
        } finally {
          for (const v of inputs) v.dispose();
        }
        const [nx, ns, nin, ...probs] = outs;
        x.dispose();
        state.dispose();
        xin.dispose();
        x = nx!;
        state = ns!;
        xin = nin!;
        capture.forEach((layer, j) => {
          const p = toHost(probs[j]!);
          const [bh, hw, tokens] = p.shape as [number, number, number];
          const heads = bh / ids.length;
          const lh = h / layerDownsampling(layer, levels);
          const all = p.toFloat32();
          p.dispose();
          // Rows are [uncond × N, cond × N] with guidance: image k's conditional block is row N + k.
          const per = heads * hw * tokens;
          for (let k = 0; k < N; k++) {
            const block = all.subarray((cfg ? N + k : k) * per, (cfg ? N + k + 1 : k + 1) * per);
            maps.push({
              layer, step: i + 1, timestep: t, image: k, heads: reduce ? 1 : heads, height: lh, width: hw / lh, tokens,
              data: conditionalMaps(block, heads, heads, hw, tokens, reduce),
            });
          }
        });
        // No silent black image: NaN/Inf latents are E_NUMERIC (or one warning with nonFinite: 'warn').
        const nanWarning = numericWarned ? undefined : checkLatentsFinite(x, { step: i + 1, steps: timesteps.length, timestep: t, guidanceScale: o.guidanceScale, dtype: this.backend.dtype }, opts.nonFinite === 'warn' ? 'warn' : 'error');
        if (nanWarning) {
          warnings.push(nanWarning);
          numericWarned = true;
        }
        const now = x;
        opts.onProgress?.({ step: i + 1, steps: timesteps.length, timestep: t, elapsedMs: Date.now() - start0, stage, latents: () => now.to('float32', 'cpu') });
      }
    } catch (err) {
      x.dispose();
      throw err;
    } finally {
      for (const c of contexts.values()) c.dispose();
      state.dispose();
      xin.dispose();
    }
    const final = x.toFloat32();
    x.dispose();
    throwIfAborted(signal, 'generate');
    const sf = this.configs.vae.scalingFactor;
    // One image at a time through the VAE: its peak memory does not grow with numImages.
    const images: RawImage[] = [];
    const px = new Float32Array(N * 3 * o.width * o.height);
    for (let k = 0; k < N; k++) {
      using z = Tensor.from(final.subarray(k * n, (k + 1) * n).map((v) => v / sf), [1, ch, h, w]);
      using decoded = await this.decodeLatents(z, signal);
      const p = decoded.toFloat32().map((v) => Math.min(1, Math.max(0, v / 2 + 0.5)));
      px.set(p, k * p.length);
      images.push(toRawImage(p, o.width, o.height));
    }
    const result: GenerateResult = { images, latents: Tensor.from(final, [N, ch, h, w]), pixels: Tensor.from(px, [N, 3, o.height, o.width]), warnings };
    if (opts.captureAttention) {
      const tokens = [...e.ids].map((id, i) => (e.slots[i]! >= 0 ? '<id>' : (this.tokenizer.piece(id) ?? String(id))));
      result.attention = { maps, ids: e.ids, tokens, slots: e.slots, slotNames: e.rows.map((r) => r.name) };
    }
    return result;
  }

  /**
   * Image-to-image: the init image's latents for each of N images, each a sample of the VAE
   * posterior (mean + exp(logvar/2)·noise, noise from `draw(image)`) times the scaling factor.
   */
  private async imageLatents(img: RawImage, N: number, draw: (i: number) => Float32Array): Promise<Float32Array> {
    const { width: W, height: H } = img;
    using x = Tensor.from(toSignedCHW(img), [1, 3, H, W]);
    const post = latentPosterior(await this.encodeImage(x));
    const n = post.mean.length;
    const out = new Float32Array(N * n);
    for (let k = 0; k < N; k++) sampleLatent(post, draw(k), this.configs.vae.scalingFactor, out, k * n);
    return out;
  }

  /**
   * Makes these LoRA files (kohya / A1111 or diffusers / PEFT naming; UNet and text-encoder parts;
   * LoCon convs) the active set for the calls that follow: W' = W + scale·(alpha/rank)·up@down,
   * merged on this engine's device, several files adding up; `[]` restores the base weights
   * exactly. Calls in flight finish on the weights they started with (the merge waits for them)
   * and calls made meanwhile start after it. A key naming no module of this model, or a shape that
   * does not fit, is E_MODEL_FORMAT naming the key and the expected shape, unless `strict: false`
   * (then skipped and listed in `warnings`).
   */
  async setLoras(loras: readonly LoraOptions[], opts: SetLorasOptions = {}): Promise<{ warnings: string[] }> {
    this.runtime.assertLive();
    const v = validateLoras(loras, opts);
    return { warnings: await this.runtime.setLoras(v.loras, v.strict) };
  }

  /** The LoRA files active now (setLoras), with their scales. */
  get loras(): readonly { path: string; scale: number }[] {
    return this.runtime.loras;
  }

  /**
   * SeFi-IDE: learns an identity (S staged K/V tokens) from one face photo by optimising a small
   * token generator through the frozen text encoder and UNet (diffusion loss + λ·face-wise
   * attention loss, Adam). See lib/learn/learn.ts for every option.
   */
  async learnIdentity(face: RawImage | string | Buffer, opts: LearnOptions = {}): Promise<Identity> {
    this.runtime.assertLive();
    return this.runtime.shared(() => this.learner.learn(face, opts));
  }

  /** The SeFi-IDE learner over this engine's runtime (one per engine: the same weights, programs and stream). */
  get learner(): IdentityLearner {
    return (this.#learner ??= new IdentityLearner(this.runtime));
  }

  dispose(): void {
    this.runtime.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
