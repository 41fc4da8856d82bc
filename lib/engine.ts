// Engine: the public API over one SD model — text/image → image generation (DDIM, DPM-Solver++ and
// Euler samplers with classifier-free guidance, batches, identities, attention capture: the
// stages in lib/generate/), the model's building blocks (text encoder, UNet, VAE), and SeFi-IDE
// learning (lib/learn/, through `learner`). The model itself (backend, stream, weights, programs)
// is the SD runtime it runs on (lib/runtime/sd.ts), shared by all of them.
import { throwIfAborted } from './errors.js';
import { Conditioning, expandFor } from './generate/conditioning.js';
import { decodeImages } from './generate/decode.js';
import { Denoiser } from './generate/denoiser.js';
import { prepareLatents } from './generate/latents.js';
import { identityMap, resolveGenerate, type GenerateOptions, type GenerateResult } from './generate/options.js';
import type { BackendSpec } from './graph/program.js';
import type { Identity } from './identity/identity.js';
import { checkPrompt } from './io/bounds.js';
import type { ModelSource } from './io/checkpoint.js';
import type { ModelConfigs } from './io/configs.js';
import type { RawImage } from './io/image.js';
import { regionList, type Region } from './regions.js';
import { IdentityLearner } from './learn/learn.js';
import type { LearnOptions } from './learn/options.js';
import { toHost } from './runtime/runtime.js';
import { resolveLoras, type LoraOptions, type SetLorasOptions } from './runtime/lora.js';
import { SdRuntime, type LoadOptions } from './runtime/sd.js';
import { DDIMScheduler } from './sched/ddim.js';
import { Tensor } from './tensor.js';
import type { ClipTokenizer } from './text/tokenizer.js';
import { imageTensorShape, invalid, oneOf, shown } from './validate.js';

export type { GenerateOptions, GenerateResult, ProgressInfo } from './generate/options.js';
export type { LoadOptions } from './runtime/sd.js';
export type { LoraOptions, SetLorasOptions } from './runtime/lora.js';

export interface TextOptions {
  identity?: Identity;
  identities?: Record<string, Identity> | Map<string, Identity>;
  /** Which stage's words to inject (SeFi-IDE identities have 5). */
  stage?: number;
  /** Inject the key ('k', default) or value ('v') words. */
  kind?: 'k' | 'v';
}

/** Engine.predictNoise's options. */
export interface NoiseOptions {
  /** Token indices of the context confined to boxes of the image (fractions [x0, y0, x1, y1)), on every row. */
  regions?: Region[];
}

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
    if (typeof text !== 'string') throw invalid('text', 'a string (tokenize takes a prompt)', text);
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
      if (typeof input !== 'string') throw invalid('input', 'a prompt string when identities are given (they apply to placeholders, not to token ids)', input);
      const e = expandFor(this.runtime, input, idMap);
      if (e.rows.length === 0) return toHost(await this.runtime.runText([e.ids]));
      const stage = opts.stage ?? 0;
      const kind = oneOf(opts.kind ?? 'k', 'kind', ['k', 'v'] as const);
      return toHost(await this.runtime.runText([e.ids], { slots: [e.slots], vectors: e.vectors(stage, kind) }));
    }
    if (input === null || input === undefined || (typeof input !== 'string' && !Array.isArray(input) && !(input instanceof Int32Array)))
      throw invalid('input', 'a prompt, 77 token ids, or an array of those (encodeText)', input);
    if (Array.isArray(input) && input.length === 0) throw invalid('input', 'a non-empty list (encodeText)', input);
    const list: (string | Int32Array | number[])[] = Array.isArray(input) && typeof input[0] !== 'number' ? (input as (string | Int32Array)[]) : [input as string | Int32Array | number[]];
    const ids = list.map((x) => (typeof x === 'string' ? this.tokenize(x) : tokenIds(x, this.configs.text.vocabSize)));
    return toHost(await this.runtime.runText(ids));
  }

  /** The token embedding (before positions) of a one-token word, e.g. "person". */
  async wordEmbedding(word: string): Promise<Float32Array> {
    return this.runtime.wordEmbedding(word);
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
    for (const l of layers) if (!known.has(l)) throw invalid('layers', `cross-attention layers of this UNet (see crossAttentionLayers)`, l);
    const n = ctxs[0]!.shape[1]!;
    const regions = opts?.regions === undefined ? [] : regionList(opts.regions, n); // none: the plain program
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
   * identities and attention capture; `numImages` images run as one batch. The recipe, in
   * diffusers' order: the plan (every option checked once), the conditioning, the latents, the
   * denoising loop (one native call per step, lib/generate/denoiser.ts), the VAE decode.
   */
  async generate(opts: GenerateOptions): Promise<GenerateResult> {
    // One call on one set of weights: a LoRA merge (setLoras) waits for it, or it for the merge.
    return this.runtime.shared(() => this.#generate(opts));
  }

  async #generate(opts: GenerateOptions): Promise<GenerateResult> {
    const rt = this.runtime;
    rt.assertLive();
    const plan = await resolveGenerate(opts, rt); // nothing below reads `opts`
    throwIfAborted(plan.signal, 'generate');
    // 1. The conditioning: prompt rows and identity words now, text-encoder runs on first use.
    using cond = new Conditioning(rt, plan);
    // Weights load before the clock starts, yielding between tensors so that abort works.
    await rt.preload(['text', 'unet', 'vae-decoder'], plan.signal);
    // The activation memory N images need is checked before anything is allocated for them.
    const denoiser = new Denoiser(rt, plan, cond);
    denoiser.checkFits();
    // 2. The starting latents and each step's noise.
    const latents = await prepareLatents(rt, plan);
    // 3. The denoising loop.
    const out = await denoiser.run(latents, cond);
    throwIfAborted(plan.signal, 'generate');
    // 4. The VAE decode.
    const { images, pixels } = await decodeImages(rt, out.latents, plan);
    const result: GenerateResult = { images, latents: Tensor.from(out.latents, [...plan.latentShape]), pixels, warnings: [...cond.warnings, ...plan.warnings, ...out.warnings] };
    if (plan.capture) result.attention = { maps: out.maps, ...cond.attentionTokens() };
    return result;
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
    const v = resolveLoras(loras, opts);
    return { warnings: await this.runtime.setLoras(v.loras, v.strict) };
  }

  /**
   * setLoras' checks of these files against this model (every key names a module, every pair fits
   * its weight), on their headers alone: nothing is merged and no values are read. Returns what
   * `strict: false` would skip; E_MODEL_FORMAT otherwise, as setLoras would throw it.
   */
  checkLoras(loras: readonly LoraOptions[], opts: SetLorasOptions = {}): { warnings: string[] } {
    this.runtime.assertLive();
    const v = resolveLoras(loras, opts);
    return { warnings: v.loras.flatMap((l) => this.runtime.checkLora(l.path, v.strict)) };
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

/** The diffusion timestep of predictNoise: a number in [0, T). */
function timestep(t: unknown, numTrainTimesteps: number): number {
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0 || t >= numTrainTimesteps)
    throw invalid('timestep', `a number in [0, ${numTrainTimesteps})`, t);
  return t;
}

/** 77 token ids, integers inside the vocabulary, as an Int32Array. */
function tokenIds(x: unknown, vocabSize: number): Int32Array {
  if (!(x instanceof Int32Array) && !Array.isArray(x)) throw invalid('token ids', 'an Int32Array or an array of integers', x);
  for (const v of x) if (!Number.isInteger(v)) throw invalid('token ids', 'integers', v);
  const a = Int32Array.from(x as ArrayLike<number>);
  if (a.length !== 77) throw invalid('token ids', '77 long', shown(`${a.length}`), { code: 'E_SHAPE' });
  for (const id of a) if (id < 0 || id >= vocabSize) throw invalid('a token id', `inside the vocabulary (0..${vocabSize - 1})`, id);
  return a;
}

/** A UNet context [b, N, D], or key and value contexts of one shape: → [context] or [k, v]. */
function unetContexts(context: Tensor | { k: Tensor; v: Tensor }, b: number, D: number): Tensor[] {
  const ctxs = context instanceof Tensor ? [context] : [context?.k, context?.v];
  for (const c of ctxs)
    if (!(c instanceof Tensor) || c.shape.length !== 3 || c.shape[0] !== b || c.shape[2] !== D || c.shape[1] !== ctxs[0]!.shape[1])
      throw invalid('context', `[${b}, N, ${D}] (key and value contexts of one shape)`, c instanceof Tensor ? c.shape : c, { code: 'E_SHAPE' });
  return ctxs as Tensor[];
}
