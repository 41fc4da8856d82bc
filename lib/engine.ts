// Engine: the text → image generation pipeline (DDIM with classifier-free guidance, identities,
// attention capture) and the public API around it. The model itself (backend, stream, weights,
// programs) is the SD runtime it runs on (lib/runtime/sd.ts); SeFi-IDE learning is another client
// of that runtime (lib/learn/learn.ts), reached through learnIdentity().
import { IdforgeError, throwIfAborted } from './errors.js';
import type { BackendSpec } from './graph/program.js';
import type { Weights } from './graph/weights.js';
import type { ModelSource } from './io/checkpoint.js';
import type { ModelConfigs } from './io/configs.js';
import { toRawImage, type RawImage } from './io/image.js';
import type { GenerateOptions, GenerateResult, LearnOptions, LoadOptions, TextOptions } from './options.js';
import { toHost } from './runtime/runtime.js';
import { SdRuntime } from './runtime/sd.js';
import { DDIMScheduler } from './sched/ddim.js';
import { randn } from './sched/random.js';
import { Tensor } from './tensor.js';
import type { ClipTokenizer } from './text/tokenizer.js';
import { conditionalMaps, layerDownsampling, selectLayers, selectSteps, type AttentionMap } from './attention.js';
import type { Identity } from './identity/identity.js';
import { expandPrompt, type ExpandedPrompt } from './identity/placeholders.js';
import { argError, identityMap, imageTensorShape, oneOf, timestep, tokenIds, unetContexts, validateGenerate } from './validate.js';

export type { GenerateOptions, GenerateResult, LoadOptions, ProgressInfo, TextOptions } from './options.js';

export class Engine implements Disposable {
  /** The model this engine runs on: backend, stream, weights, programs (shared with the learner and the bench). */
  readonly runtime: SdRuntime;
  readonly scheduler: DDIMScheduler;

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

  /** The UNet's noise prediction for latents [B, C, h, w] at timestep t, with a context [B, 77, D] or separate key/value contexts. */
  async predictNoise(latents: Tensor, t: number, context: Tensor | { k: Tensor; v: Tensor }): Promise<Tensor> {
    return (await this.predictNoiseWithAttention(latents, t, context, [])).eps;
  }

  /**
   * predictNoise that also returns the softmax probabilities of the named cross-attention layers
   * (see `crossAttentionLayers`), each [B·heads, h·w, keys] float32 on the CPU.
   */
  async predictNoiseWithAttention(latents: Tensor, t: number, context: Tensor | { k: Tensor; v: Tensor }, layers: readonly string[]): Promise<{ eps: Tensor; attention: Map<string, Tensor> }> {
    const rt = this.runtime;
    rt.assertLive();
    const [b, , h, w] = imageTensorShape(latents, 'latents', this.configs.unet.inChannels, rt.latentMultiple);
    timestep(t, this.configs.scheduler.numTrainTimesteps);
    const ctxs = unetContexts(context, b, this.configs.unet.crossAttentionDim);
    const dual = ctxs.length === 2;
    const known = new Set(this.crossAttentionLayers);
    for (const l of layers) if (!known.has(l)) throw argError(`unknown cross-attention layer '${l}'`);
    const n = ctxs[0]!.shape[1]!;
    const capture = [...new Set(layers)].sort();
    await rt.preload(['unet']);
    const p = rt.unetProgram(b, h, w, n, null, { dual, capture });
    const inputs: Tensor[] = [];
    try {
      // One at a time, so that a failed upload never leaks the ones before it.
      inputs.push(rt.upload(latents));
      inputs.push(rt.floats(new Float32Array(b).fill(t), [b]));
      for (const c of ctxs) inputs.push(rt.upload(c));
      const [eps, ...maps] = await p.run(inputs);
      const attention = new Map<string, Tensor>();
      capture.forEach((l, i) => attention.set(l, toHost(maps[i]!)));
      return { eps: toHost(eps!), attention };
    } finally {
      for (const x of inputs) x.dispose();
    }
  }

  /** The VAE decoder: image [B, 3, 8h, 8w] in [−1, 1] from z [B, C, h, w] (z already divided by the scaling factor). */
  async decodeLatents(z: Tensor): Promise<Tensor> {
    this.runtime.assertLive();
    imageTensorShape(z, 'latents to decode', this.configs.vae.latentChannels, 1);
    return this.runtime.vaeDecode(z);
  }

  /** The VAE encoder: latent mean and logvar (clamped to [−30, 20] as diffusers does) of img [B, 3, H, W] in [−1, 1]. */
  async encodeImage(img: Tensor): Promise<{ mean: Tensor; logvar: Tensor }> {
    this.runtime.assertLive();
    imageTensorShape(img, 'image to encode', this.configs.vae.inChannels, this.latentFactor);
    return this.runtime.vaeEncode(img);
  }

  /** Text → image with DDIM and classifier-free guidance, optionally with identities and attention capture. */
  async generate(opts: GenerateOptions): Promise<GenerateResult> {
    const rt = this.runtime;
    rt.assertLive();
    const o = validateGenerate(opts, this.sizeMultiple);
    const warnings: string[] = [];
    const { signal } = opts;
    throwIfAborted(signal, 'generate');
    const h = o.height / this.latentFactor;
    const w = o.width / this.latentFactor;
    const ch = this.configs.unet.inChannels;
    const e = this.expand(opts.prompt, identityMap(opts));
    if (e.truncated) warnings.push('the prompt is longer than 75 tokens and was truncated');
    const cfg = o.guidanceScale > 1;
    const ids = [e.ids];
    const slots = [e.slots];
    if (cfg) {
      // The unconditional branch never sees an identity: its slots are all −1.
      const neg = this.tokenizer.encode(o.negativePrompt);
      if (neg.truncated) warnings.push('the negative prompt is longer than 75 tokens and was truncated');
      ids.unshift(neg.ids);
      slots.unshift(new Int32Array(77).fill(-1));
    }
    const withId = e.rows.length > 0;
    const dual = withId && !e.kvShared;
    let latents: Float32Array;
    if (opts.latents) {
      imageTensorShape(opts.latents, 'latents', ch, rt.latentMultiple);
      if (opts.latents.shape[0] !== 1 || opts.latents.shape[2] !== h || opts.latents.shape[3] !== w)
        throw new IdforgeError('E_SHAPE', `latents must be [1, ${ch}, ${h}, ${w}] for ${o.width}x${o.height}, got ${JSON.stringify(opts.latents.shape)}`);
      latents = opts.latents.toFloat32();
    } else {
      latents = randn(o.seed, ch * h * w);
    }
    const levels = this.configs.unet.blockOutChannels.length;
    const capLayers = opts.captureAttention ? selectLayers(opts.captureAttention.layers, this.crossAttentionLayers, h, levels) : [];
    const capSteps = opts.captureAttention ? selectSteps(opts.captureAttention.steps, o.steps) : new Set<number>();
    const reduce = opts.captureAttention?.reduce === 'mean';
    const maps: AttentionMap[] = [];
    const noiseSeed = o.seed + 1;
    const timesteps = this.scheduler.timesteps(o.steps);
    // Weights load before the clock starts, yielding between tensors so that abort works.
    await rt.preload(['text', 'unet', 'vae-decoder'], signal);
    const start = Date.now();
    const idScale = o.identityScale;
    const scaled = async (v: Float32Array): Promise<Float32Array> => {
      if (idScale === 1) return v;
      const p = await rt.wordEmbedding('person');
      const D = p.length;
      return v.map((x, i) => p[i % D]! + idScale * (x - p[i % D]!));
    };
    // One text-encoder run per distinct (stage, K|V) set, cached across steps.
    const contexts = new Map<string, Tensor>();
    const context = async (stage: number, kind: 'k' | 'v'): Promise<Tensor> => {
      const key = withId ? `${stage}:${e.kvShared ? 'k' : kind}` : 'plain';
      let c = contexts.get(key);
      if (!c) {
        c = withId ? await rt.runText(ids, { slots, vectors: await scaled(e.vectors(stage, e.kvShared ? 'k' : kind)) }) : await rt.runText(ids);
        contexts.set(key, c);
      }
      return c;
    };
    try {
      for (let i = 0; i < timesteps.length; i++) {
        throwIfAborted(signal, 'generate');
        const t = timesteps[i]!;
        const stage = withId ? e.stageFor(t, this.configs.scheduler.numTrainTimesteps) : 0;
        const capture = capSteps.has(i + 1) ? capLayers : [];
        const program = rt.unetProgram(1, h, w, 77, cfg ? o.guidanceScale : null, { dual, capture });
        const ctxK = await context(stage, 'k');
        const ctxV = dual ? await context(stage, 'v') : undefined;
        const tIn = rt.floats(new Float32Array(ids.length).fill(t), [ids.length]);
        const xIn = rt.floats(latents, [1, ch, h, w]);
        let eps: Float32Array;
        try {
          const [out, ...probs] = await program.run(ctxV ? [xIn, tIn, ctxK, ctxV] : [xIn, tIn, ctxK]);
          eps = out!.toFloat32();
          out!.dispose();
          capture.forEach((layer, j) => {
            const p = probs[j]!;
            const [bh, hw, n] = p.shape as [number, number, number];
            const blockHeads = bh / ids.length;
            const lh = h / layerDownsampling(layer, levels);
            maps.push({
              layer, step: i + 1, timestep: t, heads: reduce ? 1 : blockHeads, height: lh, width: hw / lh, tokens: n,
              data: conditionalMaps(p.toFloat32(), bh, blockHeads, hw, n, reduce),
            });
            p.dispose();
          });
        } finally {
          tIn.dispose();
          xIn.dispose();
        }
        const noise = o.eta > 0 ? randn(noiseSeed + i, latents.length) : undefined;
        latents = this.scheduler.step(eps, t, latents, { steps: o.steps, eta: o.eta, ...(noise ? { noise } : {}) }).prevSample;
        opts.onProgress?.({ step: i + 1, steps: timesteps.length, timestep: t, elapsedMs: Date.now() - start, stage });
      }
    } finally {
      for (const c of contexts.values()) c.dispose();
    }
    throwIfAborted(signal, 'generate');
    const sf = this.configs.vae.scalingFactor;
    using z = Tensor.from(latents.map((v) => v / sf), [1, ch, h, w]);
    using decoded = await this.decodeLatents(z);
    const px = decoded.toFloat32().map((v) => Math.min(1, Math.max(0, v / 2 + 0.5)));
    const pixels = Tensor.from(px, decoded.shape);
    const result: GenerateResult = { images: [toRawImage(px, o.width, o.height)], latents: Tensor.from(latents, [1, ch, h, w]), pixels, warnings };
    if (opts.captureAttention) {
      const tokens = [...e.ids].map((id, i) => (e.slots[i]! >= 0 ? '<id>' : (this.tokenizer.piece(id) ?? String(id))));
      result.attention = { maps, ids: e.ids, tokens, slots: e.slots, slotNames: e.rows.map((r) => r.name) };
    }
    return result;
  }

  /**
   * SeFi-IDE: learns an identity (S staged K/V tokens) from one face photo by optimising a small
   * token generator through the frozen text encoder and UNet (diffusion loss + λ·face-wise
   * attention loss, Adam). See lib/learn/learn.ts for every option.
   */
  async learnIdentity(face: RawImage | string | Buffer, opts: LearnOptions = {}): Promise<Identity> {
    this.runtime.assertLive();
    // Loaded on demand: learning pulls in autodiff and image augmentation that generation never needs.
    const { IdentityLearner } = await import('./learn/learn.js');
    return new IdentityLearner(this.runtime).learn(face, opts);
  }

  dispose(): void {
    this.runtime.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
