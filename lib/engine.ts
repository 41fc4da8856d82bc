// Engine: loads an SD 1.x model (diffusers folder or single LDM .safetensors), owns the backend,
// the weights and the compiled programs, and runs text → image.
import { IdforgeError, throwIfAborted } from './errors.js';
import { describe, identityMap, validateGenerate } from './options.js';
import { Graph, type Value } from './graph/graph.js';
import { Program, type BackendSpec } from './graph/program.js';
import { Weights } from './graph/weights.js';
import { openModel, type ModelSource } from './io/checkpoint.js';
import { checkWeights } from './io/layout.js';
import { toRawImage } from './io/image.js';
import type { ConfigOverrides, ModelConfigs } from './io/configs.js';
import { backends, call, native } from './native.js';
import { checkLatentsFinite } from './numeric.js'; // [safety]
import { checkPrompt } from './io/bounds.js'; // [safety]
import { DDIMScheduler } from './sched/ddim.js';
import { randn } from './sched/random.js';
import { Tensor, numel } from './tensor.js';
import { buildTextEncoder } from './text/clip.js';
import { ClipTokenizer } from './text/tokenizer.js';
import { buildUNet, crossAttentionLayers, type CrossContext } from './unet/unet.js';
import { buildVaeDecoder, buildVaeEncoder } from './vae/vae.js';
import type { RawImage } from './io/image.js';
import { conditionalMaps, layerDownsampling, selectLayers, selectSteps, type AttentionCapture, type AttentionMap, type CaptureAttentionOptions } from './attention.js';
import { Identity } from './identity/identity.js';
import { expandPrompt, type ExpandedPrompt } from './identity/placeholders.js';

/** Engines that are never disposed still hand their CUDA stream back when collected. */
const streams = new FinalizationRegistry<number>((id) => {
  try {
    native().releaseStream(id);
  } catch {
    // the addon reports nothing useful to a finalizer
  }
});

export interface LoadOptions {
  /** 'auto' (default) takes CUDA when backends().cuda.available, else the CPU. */
  device?: 'auto' | 'cpu' | 'cuda';
  /** Compute precision: float16 on CUDA by default, float32 on the CPU (the only CPU choice). */
  dtype?: 'float32' | 'float16';
  /** Prefer `*.fp16.safetensors` files in a diffusers folder. */
  variant?: 'fp16';
  /** Pin config values (e.g. for a single-file checkpoint whose sizes cannot be derived). */
  config?: ConfigOverrides;
}

export interface ProgressInfo {
  step: number;
  steps: number;
  timestep: number;
  elapsedMs: number;
  /** The identity stage whose K/V words this step used (0 without an identity). */
  stage: number;
  /** [safety] Reports inside a long step (about every second): the fraction of step `step + 1` done. */
  fraction?: number;
}

export interface GenerateOptions {
  prompt: string;
  negativePrompt?: string;
  width?: number;
  height?: number;
  steps?: number;
  guidanceScale?: number;
  eta?: number;
  /** Seeds the documented generator (lib/sched/random.ts) for the initial latents and DDIM noise. */
  seed?: number;
  /** Initial latents [1, C, height/8, width/8]; bypasses the seed for them. */
  latents?: Tensor;
  onProgress?: (p: ProgressInfo) => void;
  signal?: AbortSignal;
  /** [safety] NaN/Inf latents after a step: 'error' (default, E_NUMERIC) or 'warn' (a warning in result.warnings). */
  nonFinite?: 'error' | 'warn';
  /** The identity that `<id>` in the prompt names. */
  identity?: Identity;
  /** Several identities, named in the prompt as `<id:name>`. */
  identities?: Record<string, Identity> | Map<string, Identity>;
  /** Return cross-attention probabilities (result.attention) for the chosen layers and steps. */
  captureAttention?: CaptureAttentionOptions;
  /**
   * Identity strength: each injected word vector becomes p + s·(v − p), p the token embedding of
   * "person". 1 (default) is the identity as learned/encoded, 0 a generic person, > 1 exaggerates.
   */
  identityScale?: number;
}

export interface TextOptions {
  identity?: Identity;
  identities?: Record<string, Identity> | Map<string, Identity>;
  /** Which stage's words to inject (SeFi-IDE identities have 5). */
  stage?: number;
  /** Inject the key ('k', default) or value ('v') words. */
  kind?: 'k' | 'v';
}

export interface GenerateResult {
  images: RawImage[];
  /** Final latents [1, C, h, w] (before the VAE scaling). */
  latents: Tensor;
  /** The decoded image in [0, 1], [1, 3, H, W] float32 on the CPU. */
  pixels: Tensor;
  warnings: string[];
  /** Present when captureAttention was given. */
  attention?: AttentionCapture;
}

export class Engine implements Disposable {
  readonly configs: ModelConfigs;
  readonly backend: BackendSpec;
  readonly tokenizer: ClipTokenizer;
  readonly scheduler: DDIMScheduler;
  readonly modelPath: string;
  readonly loadWarnings: string[];
  #source: ModelSource | null;
  #weights: { unet: Weights; vae: Weights; text: Weights } | null;
  #programs = new Map<string, Program>();
  #extra: Tensor[] = [];
  /** The CUDA stream this engine created (released by dispose()), 0 when none. */
  #ownStream = 0;
  /** Where int32 inputs (token ids, slots) are made: the engine's device and stream. */
  get #ints(): { device: 'cpu' | 'cuda'; stream: number } {
    return { device: this.backend.device, stream: this.backend.stream ?? 0 };
  }

  private constructor(source: ModelSource, backend: BackendSpec) {
    this.#source = source;
    this.modelPath = source.path;
    this.configs = source.configs;
    this.loadWarnings = [...source.warnings];
    this.tokenizer = ClipTokenizer.fromDir(source.tokenizerDir);
    this.scheduler = DDIMScheduler.fromConfig(source.configs.scheduler);
    this.loadWarnings.push(...checkWeights(source));
    // On CUDA each engine queues its work on a stream of its own (with its own cuBLAS handle and
    // error flag): two engines in one process run concurrently and never see each other's errors.
    if (backend.device === 'cuda' && backend.stream === undefined) {
      this.#ownStream = call(() => native().createStream());
      streams.register(this, this.#ownStream, this);
      backend = { ...backend, stream: this.#ownStream };
    }
    this.backend = backend;
    this.#weights = {
      unet: new Weights('unet', source.weights.unet, backend),
      vae: new Weights('vae', source.weights.vae, backend),
      text: new Weights('text_encoder', source.weights.text, backend),
    };
  }

  /** Loads a diffusers folder or a single original-layout .safetensors file. Nothing is downloaded. */
  static async load(path: string, opts: LoadOptions = {}): Promise<Engine> {
    const device = opts.device ?? 'auto';
    if (!['auto', 'cpu', 'cuda'].includes(device))
      throw new IdforgeError('E_ARGUMENT', `device must be 'auto', 'cpu' or 'cuda', got ${describe(device)}`);
    if (opts.dtype !== undefined && opts.dtype !== 'float32' && opts.dtype !== 'float16')
      throw new IdforgeError('E_ARGUMENT', `dtype must be 'float32' or 'float16', got ${describe(opts.dtype)}`);
    let dev: 'cpu' | 'cuda' = 'cpu';
    if (device === 'cuda') {
      const c = backends().cuda;
      if (!c.available) throw new IdforgeError('E_BACKEND', `device 'cuda' requested but CUDA is not available: ${c.reason}`);
      dev = 'cuda';
    } else if (device === 'auto') {
      dev = backends().cuda.available ? 'cuda' : 'cpu';
    }
    const dtype = opts.dtype ?? (dev === 'cuda' ? 'float16' : 'float32');
    if (dev === 'cpu' && dtype !== 'float32')
      throw new IdforgeError('E_ARGUMENT', "the CPU backend computes in float32 only; use dtype 'float32' or device 'cuda'");
    const source = openModel(path, { ...(opts.variant ? { variant: opts.variant } : {}), ...(opts.config ? { configOverrides: opts.config } : {}) });
    return Engine.fromSource(source, { device: dev, dtype });
  }

  /** An engine over an already opened model source (e.g. the benchmark's synthetic SD 1.5 weights). Takes ownership of it. */
  static fromSource(source: ModelSource, backend: BackendSpec): Engine {
    try {
      return new Engine(source, backend);
    } catch (e) {
      source.close();
      throw e;
    }
  }

  get disposed(): boolean {
    return !this.#weights;
  }

  /** @internal the resident weights */
  get w(): { unet: Weights; vae: Weights; text: Weights } {
    if (!this.#weights) throw new IdforgeError('E_DISPOSED', 'engine used after dispose()');
    return this.#weights;
  }

  /** The VAE's spatial downsampling factor and the UNet's; a latent side must divide the latter. */
  get latentFactor(): number {
    return 2 ** (this.configs.vae.blockOutChannels.length - 1);
  }

  get sizeMultiple(): number {
    return this.latentFactor * 2 ** (this.configs.unet.blockOutChannels.length - 1);
  }

  /** 77 token ids (BOS, content, EOS, padding); prompts past 75 tokens are truncated. */
  tokenize(text: string): Int32Array {
    this.w;
    if (typeof text !== 'string') throw new IdforgeError('E_ARGUMENT', 'tokenize expects a string');
    checkPrompt(text, 'prompt'); // [safety]
    return this.tokenizer.encode(text).ids;
  }

  /** @internal a cached program of this engine's backend. */
  program(key: string, build: (g: Graph) => void): Program {
    this.w;
    let p = this.#programs.get(key);
    if (p) {
      // Most recently used last: the Map's insertion order is the eviction order.
      this.#programs.delete(key);
      this.#programs.set(key, p);
      return p;
    }
    const g = new Graph();
    build(g);
    p = new Program(g, this.backend);
    this.#programs.set(key, p);
    // Each program keeps its activation arena (and on CUDA its graph) until disposed, and keys
    // include sizes and guidance: bound the cache so that a server sweeping them stays bounded.
    // A program evicted while a run is in flight is freed by the native side when that run ends.
    while (this.#programs.size > this.maxPrograms) {
      const [oldest, q] = this.#programs.entries().next().value as [string, Program];
      this.#programs.delete(oldest);
      q.dispose();
    }
    return p;
  }

  /** How many compiled programs (one per input shape / option set) the engine keeps; LRU beyond. */
  maxPrograms = Number(process.env.IDFORGE_MAX_PROGRAMS) || 12;

  /** Frees every compiled program (they are rebuilt on demand). */
  clearPrograms(): void {
    for (const p of this.#programs.values()) p.dispose();
    this.#programs.clear();
  }

  /** A host float32 tensor moved into this backend's dtype/device (the input is not disposed). */
  private upload(t: Tensor): Tensor {
    return t.to(this.backend.dtype, this.backend.device, this.backend.stream ?? 0);
  }

  private idsTensor(ids: Int32Array[]): Tensor {
    const flat = new Int32Array(ids.length * 77);
    ids.forEach((a, i) => flat.set(a, i * 77));
    return Tensor.from(flat, [ids.length, 77], this.#ints);
  }

  /**
   * last_hidden_state [B, 77, D] of the text encoder for token ids or prompts, on the CPU in float32.
   * With an identity, `<id>` / `<id:name>` placeholders expand to the identity's word slots whose
   * token embeddings are replaced by the identity's `kind` vectors of `stage`.
   */
  async encodeText(input: string | Int32Array | number[] | (string | Int32Array)[], opts: TextOptions = {}): Promise<Tensor> {
    this.w;
    const idMap = identityMap(opts);
    if (idMap || (typeof input === 'string' && /<id(:[^<>]*)?>/.test(input))) {
      if (typeof input !== 'string') throw new IdforgeError('E_ARGUMENT', 'identities apply to a prompt string, not to token ids');
      const e = this.expand(input, idMap);
      if (e.rows.length === 0) return toHost(await this.runText([e.ids]));
      const stage = opts.stage ?? 0;
      const kind = opts.kind ?? 'k';
      if (kind !== 'k' && kind !== 'v') throw new IdforgeError('E_ARGUMENT', `kind must be 'k' or 'v', got ${describe(kind)}`);
      return toHost(await this.runText([e.ids], { slots: [e.slots], vectors: e.vectors(stage, kind) }));
    }
    if (input === null || input === undefined || (typeof input !== 'string' && !Array.isArray(input) && !(input instanceof Int32Array)))
      throw new IdforgeError('E_ARGUMENT', 'encodeText expects a prompt, 77 token ids, or an array of those');
    if (Array.isArray(input) && input.length === 0) throw new IdforgeError('E_ARGUMENT', 'encodeText got an empty list');
    const list: (string | Int32Array | number[])[] = Array.isArray(input) && typeof input[0] !== 'number' ? (input as (string | Int32Array)[]) : [input as string | Int32Array | number[]];
    const ids = list.map((x) => {
      if (typeof x === 'string') return this.tokenize(x);
      if (!(x instanceof Int32Array) && !Array.isArray(x)) throw new IdforgeError('E_ARGUMENT', 'token ids must be an Int32Array or an array of integers');
      for (const v of x) if (!Number.isInteger(v)) throw new IdforgeError('E_ARGUMENT', `token ids must be integers, got ${describe(v)}`);
      const a = Int32Array.from(x);
      if (a.length !== 77) throw new IdforgeError('E_SHAPE', `token ids must be 77 long, got ${a.length}`);
      const vocab = this.configs.text.vocabSize;
      for (const id of a) if (id < 0 || id >= vocab) throw new IdforgeError('E_ARGUMENT', `token id ${id} is outside the vocabulary (0..${vocab - 1})`);
      return a;
    });
    return toHost(await this.runText(ids));
  }

  /** The token embedding (before positions) of a one-token word, e.g. "person". */
  async wordEmbedding(word: string): Promise<Float32Array> {
    const ids = this.tokenizer.idsFor(word);
    if (ids.length !== 1) throw new IdforgeError('E_ARGUMENT', `'${word}' is ${ids.length} tokens, not one`);
    const D = this.configs.text.hiddenSize;
    await this.w.text.preload(undefined, (n) => n.endsWith('token_embedding.weight'));
    const p = this.program('word-embedding', (g) => {
      g.output(g.embedding(g.input([1, 1], 'int32'), this.w.text.in(g, 'text_model.embeddings.token_embedding.weight')));
    });
    using id = Tensor.from(Int32Array.from(ids), [1, 1], this.#ints);
    const [out] = await p.run([id]);
    const host = toHost(out!);
    const v = host.toFloat32();
    host.dispose();
    if (v.length !== D) throw new IdforgeError('E_INTERNAL', 'word embedding has the wrong width');
    return v;
  }

  /** A prompt's placeholders expanded against the identities, checked against this model's text width. */
  private expand(prompt: string, idMap: Map<string, Identity> | undefined): ExpandedPrompt {
    const e = expandPrompt(this.tokenizer, prompt, idMap);
    if (e.rows.length && e.dim !== this.configs.text.hiddenSize)
      throw new IdforgeError('E_IDENTITY', `identity has dim ${e.dim}, the model's text width is ${this.configs.text.hiddenSize}`);
    return e;
  }

  /**
   * @internal text encoder on the backend; the result stays on the backend. With `inject`, the
   * token embeddings at rows where slots[b][i] ≥ 0 are replaced by vectors[slots[b][i]] (before the
   * position embeddings are added): the pseudo-word mechanism of both identity methods.
   */
  async runText(ids: Int32Array[], inject?: { slots: Int32Array[]; vectors: Float32Array }): Promise<Tensor> {
    const b = ids.length;
    const D = this.configs.text.hiddenSize;
    const rows = inject ? inject.vectors.length / D : 0;
    if (inject && (!Number.isInteger(rows) || rows < 1 || inject.slots.length !== b))
      throw new IdforgeError('E_SHAPE', `injected vectors must be [rows, ${D}] with one slot row per prompt`);
    await this.w.text.preload();
    const p = this.program(`text:${b}:${rows}`, (g) => {
      const x = g.input([b, 77], 'int32');
      const inj = inject ? { slots: g.input([b, 77], 'int32'), vectors: g.input([rows, D]) } : undefined;
      g.output(buildTextEncoder(g, this.w.text, this.configs.text, { ids: x, ...(inj ? { inject: inj } : {}) }));
    });
    if (inject)
      for (const v of inject.vectors)
        if (!Number.isFinite(v)) throw new IdforgeError('E_IDENTITY', 'injected word vectors must be finite');
    const inputs: Tensor[] = [];
    try {
      inputs.push(this.idsTensor(ids));
      if (inject) {
        inputs.push(this.idsTensor(inject.slots));
        inputs.push(Tensor.from(inject.vectors, [rows, D], this.backend));
      }
      const [out] = await p.run(inputs);
      return out!;
    } finally {
      for (const t of inputs) t.dispose();
    }
  }

  private checkLatents(latents: Tensor, what: string): void {
    const s = latents.shape;
    const c = this.configs.unet.inChannels;
    const f = 2 ** (this.configs.unet.blockOutChannels.length - 1);
    if (s.length !== 4 || s[1] !== c || s[2]! % f || s[3]! % f || s[2] === 0 || s[3] === 0)
      throw new IdforgeError('E_SHAPE', `${what} must be [B, ${c}, h, w] with h and w multiples of ${f}, got ${JSON.stringify(s)}`);
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
    this.checkLatents(latents, 'latents');
    if (typeof t !== 'number' || !Number.isFinite(t) || t < 0 || t >= this.configs.scheduler.numTrainTimesteps)
      throw new IdforgeError('E_ARGUMENT', `timestep must be in [0, ${this.configs.scheduler.numTrainTimesteps}), got ${describe(t)}`);
    const b = latents.shape[0]!;
    const dual = !(context instanceof Tensor);
    const ctxs = dual ? [context.k, context.v] : [context];
    const D = this.configs.unet.crossAttentionDim;
    for (const c of ctxs)
      if (!(c instanceof Tensor) || c.shape.length !== 3 || c.shape[0] !== b || c.shape[2] !== D || c.shape[1] !== ctxs[0]!.shape[1])
        throw new IdforgeError('E_SHAPE', `context must be [${b}, N, ${D}], got ${c instanceof Tensor ? JSON.stringify(c.shape) : typeof c}`);
    const known = new Set(this.crossAttentionLayers);
    for (const l of layers) if (!known.has(l)) throw new IdforgeError('E_ARGUMENT', `unknown cross-attention layer '${l}'`);
    const [, , h, w] = latents.shape as [number, number, number, number];
    const n = ctxs[0]!.shape[1]!;
    const capture = [...new Set(layers)].sort();
    await this.w.unet.preload();
    const p = this.unetProgram(b, h, w, n, null, { dual, capture });
    const inputs: Tensor[] = [];
    try {
      // One at a time, so that a failed upload never leaks the ones before it.
      inputs.push(this.upload(latents));
      inputs.push(Tensor.from(new Float32Array(b).fill(t), [b], this.backend));
      for (const c of ctxs) inputs.push(this.upload(c));
      const [eps, ...maps] = await p.run(inputs);
      const attention = new Map<string, Tensor>();
      capture.forEach((l, i) => attention.set(l, toHost(maps[i]!)));
      return { eps: toHost(eps!), attention };
    } finally {
      for (const x of inputs) x.dispose();
    }
  }

  /** The VAE decoder: image [B, 3, 8h, 8w] in [−1, 1] from z [B, C, h, w] (z already divided by the scaling factor). */
  async decodeLatents(z: Tensor, signal?: AbortSignal): Promise<Tensor> {
    const s = z.shape;
    if (s.length !== 4 || s[1] !== this.configs.vae.latentChannels || s[2] === 0 || s[3] === 0)
      throw new IdforgeError('E_SHAPE', `latents to decode must be [B, ${this.configs.vae.latentChannels}, h, w], got ${JSON.stringify(s)}`);
    await this.w.vae.preload(undefined, isDecoderWeight);
    const p = this.program(`vae-dec:${s.join('x')}`, (g) => {
      g.output(buildVaeDecoder(g, this.w.vae, this.configs.vae, g.input(s)));
    });
    using zin = this.upload(z);
    const [img] = await p.run([zin], { signal }); // [safety] abortable inside the decode
    return toHost(img!);
  }

  /** The VAE encoder: latent mean and logvar (clamped to [−30, 20] as diffusers does) of img [B, 3, H, W] in [−1, 1]. */
  async encodeImage(img: Tensor): Promise<{ mean: Tensor; logvar: Tensor }> {
    const s = img.shape;
    const f = this.latentFactor;
    if (s.length !== 4 || s[1] !== this.configs.vae.inChannels || !s[2] || !s[3] || s[2] % f || s[3] % f)
      throw new IdforgeError('E_SHAPE', `image to encode must be [B, ${this.configs.vae.inChannels}, H, W] with H, W multiples of ${f}, got ${JSON.stringify(s)}`);
    await this.w.vae.preload(undefined, (n) => !isDecoderWeight(n));
    const p = this.program(`vae-enc:${s.join('x')}`, (g) => {
      const r = buildVaeEncoder(g, this.w.vae, this.configs.vae, g.input(s), (shape) => {
        const z = Tensor.zeros(shape, this.backend);
        this.#extra.push(z);
        return z;
      });
      g.output(r.mean);
      g.output(r.logvar);
    });
    using x = this.upload(img);
    const [mean, logvar] = await p.run([x]);
    const lv = toHost(logvar!);
    const data = lv.toFloat32().map((v) => Math.min(20, Math.max(-30, v)));
    const shape = lv.shape;
    lv.dispose();
    return { mean: toHost(mean!), logvar: Tensor.from(data, shape) };
  }

  /**
   * @internal The UNet as a program: latents [b, C, h, w], timesteps, key context (and a value
   * context when dual) → eps and the captured maps. With a guidance scale the latents are
   * duplicated inside the program (unconditional first, timesteps and contexts are [2b, ..]) and
   * classifier-free guidance is folded in: → guided eps [b].
   */
  unetProgram(b: number, h: number, w: number, n: number, guidance: number | null, opts: { dual?: boolean; capture?: string[] } = {}): Program {
    const ch = this.configs.unet.inChannels;
    const D = this.configs.unet.crossAttentionDim;
    const cfg = guidance !== null;
    const dual = !!opts.dual;
    const capture = opts.capture ?? [];
    return this.program(`unet:${b}x${ch}x${h}x${w}:${n}:${guidance}:${dual}:${capture.join(',')}`, (g) => {
      const x = g.input([b, ch, h, w]);
      const bb = cfg ? 2 * b : b;
      const t = g.input([bb]);
      const k = g.input([bb, n, D]);
      const v = dual ? g.input([bb, n, D]) : k;
      const xx = cfg ? g.concat([x, x], 0) : x;
      const r = buildUNet(g, this.w.unet, this.configs.unet, xx, t, { k, v }, { capture: new Set(capture) });
      g.output(cfg ? g.cfg(r.eps, guidance) : r.eps);
      for (const l of capture) g.output(r.attention.get(l)!, l);
    });
  }

  /** @internal The guided single-image step of generate(). */
  guidedUNet(h: number, w: number, n: number, guidance: number | null, opts: { dual?: boolean; capture?: string[] } = {}): Program {
    return this.unetProgram(1, h, w, n, guidance, opts);
  }

  /** Text → image with DDIM and classifier-free guidance, optionally with identities and attention capture. */
  async generate(opts: GenerateOptions): Promise<GenerateResult> {
    this.w;
    const o = validateGenerate(opts, this.sizeMultiple, this.scheduler); // [safety] steps checked against the schedule
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
      this.checkLatents(opts.latents, 'latents');
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
    if (opts.captureAttention?.reduce !== undefined && !reduce) throw new IdforgeError('E_ARGUMENT', "captureAttention.reduce must be 'mean'");
    const maps: AttentionMap[] = [];
    const noiseSeed = o.seed + 1;
    const timesteps = this.scheduler.timesteps(o.steps);
    // Weights load before the clock starts, yielding between tensors so that abort works.
    await this.w.text.preload(signal);
    await this.w.unet.preload(signal);
    await this.w.vae.preload(signal, isDecoderWeight);
    const start = Date.now();
    const idScale = opts.identityScale ?? 1;
    if (typeof idScale !== 'number' || !Number.isFinite(idScale) || idScale < 0)
      throw new IdforgeError('E_ARGUMENT', `identityScale must be a finite number ≥ 0, got ${describe(idScale)}`);
    const scaled = async (v: Float32Array): Promise<Float32Array> => {
      if (idScale === 1) return v;
      const p = await this.wordEmbedding('person');
      const D = p.length;
      return v.map((x, i) => p[i % D]! + idScale * (x - p[i % D]!));
    };
    // One text-encoder run per distinct (stage, K|V) set, cached across steps.
    const contexts = new Map<string, Tensor>();
    const context = async (stage: number, kind: 'k' | 'v'): Promise<Tensor> => {
      const key = withId ? `${stage}:${e.kvShared ? 'k' : kind}` : 'plain';
      let c = contexts.get(key);
      if (!c) {
        c = withId ? await this.runText(ids, { slots, vectors: await scaled(e.vectors(stage, e.kvShared ? 'k' : kind)) }) : await this.runText(ids);
        contexts.set(key, c);
      }
      return c;
    };
    let numericWarned = false; // [safety]
    try {
      for (let i = 0; i < timesteps.length; i++) {
        throwIfAborted(signal, 'generate');
        const t = timesteps[i]!;
        const stage = withId ? e.stageFor(t, this.configs.scheduler.numTrainTimesteps) : 0;
        const capture = capSteps.has(i + 1) ? capLayers : [];
        const program = this.guidedUNet(h, w, 77, cfg ? o.guidanceScale : null, { dual, capture });
        const ctxK = await context(stage, 'k');
        const ctxV = dual ? await context(stage, 'v') : undefined;
        const tIn = Tensor.from(new Float32Array(ids.length).fill(t), [ids.length], this.backend);
        const xIn = Tensor.from(latents, [1, ch, h, w], this.backend);
        let eps: Float32Array;
        try {
          // [safety] abort stops the native run within ms; progress about every second inside long steps
          const onTick = (fraction: number) => opts.onProgress?.({ step: i, steps: timesteps.length, timestep: t, elapsedMs: Date.now() - start, stage, fraction });
          const [out, ...probs] = await program.run(ctxV ? [xIn, tIn, ctxK, ctxV] : [xIn, tIn, ctxK], { signal, ...(opts.onProgress ? { onTick } : {}) });
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
        // [safety] no silent black image: NaN/Inf latents are E_NUMERIC (or one warning with nonFinite: 'warn')
        const nanWarning = numericWarned ? undefined : checkLatentsFinite(latents, { step: i + 1, steps: timesteps.length, timestep: t, guidanceScale: o.guidanceScale, dtype: this.backend.dtype }, opts.nonFinite === 'warn' ? 'warn' : 'error');
        if (nanWarning) { warnings.push(nanWarning); numericWarned = true; }
        opts.onProgress?.({ step: i + 1, steps: timesteps.length, timestep: t, elapsedMs: Date.now() - start, stage });
      }
    } finally {
      for (const c of contexts.values()) c.dispose();
    }
    throwIfAborted(signal, 'generate');
    const sf = this.configs.vae.scalingFactor;
    using z = Tensor.from(latents.map((v) => v / sf), [1, ch, h, w]);
    using decoded = await this.decodeLatents(z, signal); // [safety]
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
  async learnIdentity(face: RawImage | string | Buffer, opts: import('./learn/learn.js').LearnOptions = {}): Promise<Identity> {
    this.w;
    // Measured on an H100: in float16 the face-wise attention loss (a mean of squared differences
    // of two nearly equal probability maps) loses its gradient to rounding (rel. error 0.39 against
    // the golden); every other gradient is fine. Until that loss runs in float32, learning needs a
    // float32 engine.
    if (this.backend.dtype !== 'float32')
      throw new IdforgeError('E_ARGUMENT', "learnIdentity needs a float32 engine (its attention loss is not accurate in float16): load one with { dtype: 'float32' } to learn, then generate with the identity on any engine");
    // Loaded on demand: learning pulls in autodiff and image augmentation that generation never needs.
    const { learnIdentity } = await import('./learn/learn.js');
    return learnIdentity(this, face, opts);
  }

  /** Every cross-attention layer name of this model's UNet. */
  get crossAttentionLayers(): string[] {
    return crossAttentionLayers(this.configs.unet);
  }

  /** @internal for the benchmark harness and tests */
  get programCount(): number {
    return this.#programs.size;
  }

  dispose(): void {
    for (const p of this.#programs.values()) p.dispose();
    this.#programs.clear();
    for (const t of this.#extra) t.dispose();
    this.#extra = [];
    if (this.#weights) {
      this.#weights.unet.dispose();
      this.#weights.vae.dispose();
      this.#weights.text.dispose();
      this.#weights = null;
    }
    this.#source?.close();
    this.#source = null;
    if (this.#ownStream) {
      const id = this.#ownStream;
      this.#ownStream = 0;
      streams.unregister(this);
      call(() => native().releaseStream(id));
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

const isDecoderWeight = (n: string): boolean => n.startsWith('decoder.') || n.startsWith('post_quant_conv.');

/** A float32 CPU copy of a program output (disposing the original when it was elsewhere). */
function toHost(t: Tensor): Tensor {
  if (t.device === 'cpu' && t.dtype === 'float32') return t;
  const h = t.to('float32', 'cpu');
  t.dispose();
  return h;
}

export { numel };
export type { Value, CrossContext };

