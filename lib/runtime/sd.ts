/**
 * The SD 1.x runtime: an opened model (configs, tokenizer, the text encoder's, UNet's and VAE's
 * weights) on a ModelRuntime, and the programs every SD pipeline runs: text encoding (with
 * pseudo-word injection), the UNet step, the VAE decoder and encoder, and a word's token
 * embedding. Pipelines (lib/engine.ts generation, lib/learn/ SeFi-IDE learning, lib/bench/) ask it
 * for these; a pipeline with a graph of its own (the learning loss) compiles it through program()
 * over `weights`.
 */
import { IdforgeError } from '../errors.js';
import type { Graph, Value } from '../graph/graph.js';
import type { BackendSpec, Program } from '../graph/program.js';
import type { Weights } from '../graph/weights.js';
import { openModel, openVae, type ModelSource, type VaeSource } from '../io/checkpoint.js';
import { checkLora, readLora } from '../io/lora.js';
import type { ConfigOverrides, ModelConfigs, VaeConfig } from '../io/configs.js';
import { toRawImage, type RawImage } from '../io/image.js';
import { checkConfigs } from '../io/bounds.js';
import { checkWeights, vaeLayout } from '../io/layout.js';
import { Tensor } from '../tensor.js';
import { buildTextEncoder } from '../text/clip.js';
import { regionColumns, regionTable, type Region } from '../regions.js';
import { ClipTokenizer } from '../text/tokenizer.js';
import { buildUNet, crossAttentionLayers } from '../unet/unet.js';
import { buildTinyEncoder } from '../vae/taesd.js';
import { buildDecoder, buildVaeEncoder } from '../vae/vae.js';
import { LoraMerger } from './lora.js';
import { ModelRuntime, resolveBackend, toHost, type DeviceOptions } from './runtime.js';
import { invalid } from '../validate.js';

export interface LoadOptions extends DeviceOptions {
  /** Prefer `*.fp16.safetensors` files in a diffusers folder. */
  variant?: 'fp16';
  /** Pin config values (e.g. for a single-file checkpoint whose sizes cannot be derived). */
  config?: ConfigOverrides;
  /**
   * A VAE in place of the model's: a diffusers VAE folder (AutoencoderKL, or AutoencoderTiny: TAESD,
   * a fast decoder whose scaling factor is 1), or the original taesd_decoder.safetensors (+ encoder).
   */
  vae?: string;
  /** A VAE (typically TAESD) that decodes a small preview of each step's denoised estimate for onProgress. */
  previewVae?: string;
}

/** The three weight groups of an SD 1.x model. */
export interface SdWeights {
  text: Weights;
  unet: Weights;
  vae: Weights;
}

/** Token-embedding replacement of the text encoder: rows where slots[b][i] ≥ 0 take vectors[slots[b][i]]. */
export interface TextInjection {
  slots: Int32Array[];
  /** [rows, D] row-major. */
  vectors: Float32Array;
}

/** What a UNet step program is built for, besides the latent shape. */
export interface UNetProgramOptions {
  /** Separate key and value contexts (identities whose K and V words differ). */
  dual?: boolean;
  /** Cross-attention layers whose probabilities are extra outputs, in this order. */
  capture?: readonly string[];
  /** A region table input (lib/regions.ts) after the contexts. */
  regions?: boolean;
}

/**
 * The UNet around latents x [b, C, h, w] as generation runs it: graph inputs timesteps, key
 * context [rows, tokens, D], (dual) value context and (regions) the int32 region table
 * [rows, regionColumns(tokens)], created here in that order; with a guidance
 * scale, x is duplicated inside the graph (rows = 2b, unconditional first) and classifier-free
 * guidance folded in → eps [b] and the captured maps. Shared by unetProgram and generate()'s step
 * program (lib/sampling.ts).
 */
export function buildGuidedUNet(
  g: Graph, weights: Weights, configs: ModelConfigs, x: Value,
  s: { tokens: number; guidance: number | null; dual: boolean; capture: readonly string[]; regions?: boolean },
): { eps: Value; attention: Map<string, Value> } {
  const cfg = s.guidance !== null;
  const rows = cfg ? 2 * x.dim(0) : x.dim(0);
  const D = configs.unet.crossAttentionDim;
  const t = g.input([rows]);
  const k = g.input([rows, s.tokens, D]);
  const v = s.dual ? g.input([rows, s.tokens, D]) : k;
  const regions = s.regions ? g.input([rows, regionColumns(s.tokens)], 'int32', 'regions') : undefined;
  const r = buildUNet(g, weights, configs.unet, cfg ? g.concat([x, x], 0) : x, t, { k, v, ...(regions ? { regions } : {}) }, { capture: new Set(s.capture) });
  return { eps: cfg ? g.cfg(r.eps, s.guidance!) : r.eps, attention: r.attention };
}

const isDecoderWeight = (n: string): boolean => n.startsWith('decoder.') || n.startsWith('post_quant_conv.');

/** The longer side of a step preview, in pixels. */
const PREVIEW_SIDE = 256;

export class SdRuntime extends ModelRuntime {
  readonly configs: ModelConfigs;
  readonly tokenizer: ClipTokenizer;
  readonly modelPath: string;
  /** Notes from opening the model (layout quirks, unused weights). */
  readonly loadWarnings: string[];
  readonly #weights: SdWeights;
  /** The VAE that decodes step previews (LoadOptions.previewVae), when there is one. */
  readonly #preview: { config: VaeConfig; weights: Weights } | undefined;

  private constructor(source: ModelSource, backend: BackendSpec, preview?: VaeSource) {
    super(backend, 'engine');
    this.adopt(() => source.close());
    if (preview) this.adopt(() => { for (const f of preview.files) f.close(); });
    try {
      this.modelPath = source.path;
      this.configs = source.configs;
      this.loadWarnings = [...source.warnings];
      this.tokenizer = ClipTokenizer.fromDir(source.tokenizerDir);
      this.loadWarnings.push(...checkWeights(source));
      this.#weights = {
        unet: this.addWeights('unet', source.weights.unet),
        vae: this.addWeights('vae', source.weights.vae),
        text: this.addWeights('text_encoder', source.weights.text),
      };
      if (preview) this.#preview = this.#previewVae(preview);
    } catch (e) {
      this.dispose(); // closes the source and hands the stream back
      throw e;
    }
  }

  /** Opens a diffusers folder or a single original-layout .safetensors file (and the VAEs `vae` / `previewVae` name). Nothing is downloaded. */
  static load(path: string, opts: LoadOptions = {}): SdRuntime {
    const backend = resolveBackend(opts);
    const variant = opts.variant ? { variant: opts.variant } : {};
    const source = openModel(path, { ...variant, ...(opts.config ? { configOverrides: opts.config } : {}), ...(opts.vae !== undefined ? { vae: opts.vae } : {}) });
    let preview: VaeSource | undefined;
    try {
      if (opts.previewVae !== undefined) preview = openVae(opts.previewVae, variant);
    } catch (e) {
      source.close();
      throw e;
    }
    return SdRuntime.fromSource(source, backend, preview);
  }

  /** A runtime over an already opened model source (e.g. the benchmark's synthetic SD 1.5), and a preview VAE. Takes ownership of both. */
  static fromSource(source: ModelSource, backend: BackendSpec, preview?: VaeSource): SdRuntime {
    try {
      return new SdRuntime(source, backend, preview);
    } catch (e) {
      source.close(); // idempotent: the constructor may have closed it already
      for (const f of preview?.files ?? []) f.close();
      throw e;
    }
  }

  /** The preview VAE's weights, checked like the model's own VAE (config bounds, every weight's shape). */
  #previewVae(v: VaeSource): { config: VaeConfig; weights: Weights } {
    checkConfigs({ ...this.configs, vae: v.config }, undefined);
    for (const e of vaeLayout(v.config)) {
      const r = v.weights.get(e.name);
      if (!r || r.shape.length !== e.shape.length || r.shape.some((d, i) => d !== e.shape[i]))
        throw new IdforgeError('E_MODEL_FORMAT', `${v.path}: the preview VAE's weight '${e.name}' is ${r ? JSON.stringify(r.shape) : 'missing'}, its config implies ${JSON.stringify(e.shape)}`);
    }
    if (v.config.latentChannels !== this.configs.unet.inChannels || v.config.blockOutChannels.length !== this.configs.vae.blockOutChannels.length)
      throw new IdforgeError('E_MODEL_FORMAT', `${v.path}: the preview VAE takes ${v.config.latentChannels}-channel latents at 1/${2 ** (v.config.blockOutChannels.length - 1)} scale; this model's are ${this.configs.unet.inChannels}-channel at 1/${this.latentFactor}`);
    this.loadWarnings.push(...v.warnings);
    return { config: v.config, weights: this.addWeights('preview-vae', v.weights) };
  }

  #lora: LoraMerger | undefined;
  #loras: readonly { path: string; scale: number }[] = [];

  /** The LoRA files merged into the resident weights (setLoras), in order. */
  get loras(): readonly { path: string; scale: number }[] {
    return this.#loras;
  }

  /**
   * Merges these LoRA files into the resident UNet and text-encoder weights, in place of the set
   * merged before (lib/runtime/lora.ts); [] restores the base weights exactly. The files are read
   * and checked first; the merge then waits for the calls in flight and holds new ones back
   * (ModelRuntime.exclusive). Returns what `strict: false` skipped.
   */
  async setLoras(loras: readonly { path: string; scale: number }[], strict = true): Promise<string[]> {
    const w = this.weights;
    const targets = this.#loraTargets();
    const files = loras.map((l) => ({ file: readLora(l.path, targets, { strict }), scale: l.scale }));
    return this.exclusive(async () => {
      this.#lora ??= new LoraMerger({ weights: { unet: w.unet, text: w.text }, runOnce: (b, i, o) => this.runOnce(b, i, o) });
      this.#loras = [];
      await this.#lora.apply(files);
      this.#loras = loras.map((l) => ({ ...l }));
      return files.flatMap((f) => f.file.warnings);
    }, 'setLoras');
  }

  /** setLoras' checks of one file's header against this model's weights, merging nothing (lib/io/lora.ts checkLora). */
  checkLora(path: string, strict = true): string[] {
    return checkLora(path, this.#loraTargets(), { strict });
  }

  #loraTargets() {
    return { unet: this.weights.unet.refs, text: this.weights.text.refs };
  }

  /** Whether a preview VAE was loaded (LoadOptions.previewVae). */
  get hasPreview(): boolean {
    return this.#preview !== undefined;
  }

  /** The resident weights, for graphs a pipeline builds itself (through program()). */
  get weights(): SdWeights {
    this.assertLive();
    return this.#weights;
  }

  /** The VAE's spatial downsampling factor. */
  get latentFactor(): number {
    return 2 ** (this.configs.vae.blockOutChannels.length - 1);
  }

  /** The UNet's downsampling: a latent side must be a multiple of it. */
  get latentMultiple(): number {
    return 2 ** (this.configs.unet.blockOutChannels.length - 1);
  }

  /** Image sides must be multiples of this (VAE × UNet downsampling). */
  get sizeMultiple(): number {
    return this.latentFactor * this.latentMultiple;
  }

  /** The model's native image side: latent factor × UNet sample size (512 for SD 1.5). */
  get nativeSize(): number {
    return this.latentFactor * this.configs.unet.sampleSize;
  }

  /** Every cross-attention layer name of the UNet. */
  get crossAttentionLayers(): string[] {
    return crossAttentionLayers(this.configs.unet);
  }

  /**
   * Uploads the weights that the named parts need before their first use, one tensor at a time
   * (so that an abort can interrupt it): 'vae-decoder' and 'vae-encoder' are the VAE's halves.
   */
  async preload(parts: readonly ('text' | 'unet' | 'vae-decoder' | 'vae-encoder')[], signal?: AbortSignal): Promise<void> {
    for (const p of parts) {
      if (p === 'text') await this.weights.text.preload(signal);
      else if (p === 'unet') await this.weights.unet.preload(signal);
      else await this.weights.vae.preload(signal, p === 'vae-decoder' ? isDecoderWeight : (n) => !isDecoderWeight(n));
    }
  }

  /**
   * The text encoder's last_hidden_state [B, 77, D] for token ids, left on the backend. With
   * `inject`, the token embeddings at rows where slots[b][i] ≥ 0 are replaced by
   * vectors[slots[b][i]] (before the position embeddings are added): the pseudo-word mechanism
   * of both identity methods.
   */
  async runText(ids: Int32Array[], inject?: TextInjection): Promise<Tensor> {
    return this.shared(() => this.#runText(ids, inject));
  }

  async #runText(ids: Int32Array[], inject?: TextInjection): Promise<Tensor> {
    const b = ids.length;
    const D = this.configs.text.hiddenSize;
    const rows = inject ? inject.vectors.length / D : 0;
    if (inject && (!Number.isInteger(rows) || rows < 1 || inject.slots.length !== b))
      throw new IdforgeError('E_SHAPE', `injected vectors must be [rows, ${D}] with one slot row per prompt`);
    await this.preload(['text']);
    const p = this.program(`text:${b}:${rows}`, (g) => {
      const x = g.input([b, 77], 'int32');
      const inj = inject ? { slots: g.input([b, 77], 'int32'), vectors: g.input([rows, D]) } : undefined;
      g.output(buildTextEncoder(g, this.weights.text, this.configs.text, { ids: x, ...(inj ? { inject: inj } : {}) }));
    });
    if (inject)
      for (const v of inject.vectors)
        if (!Number.isFinite(v)) throw new IdforgeError('E_IDENTITY', 'injected word vectors must be finite');
    const inputs: Tensor[] = [];
    try {
      // One at a time, so that a failed upload never leaks the ones before it.
      inputs.push(this.#idsTensor(ids));
      if (inject) {
        inputs.push(this.#idsTensor(inject.slots));
        inputs.push(this.floats(inject.vectors, [rows, D]));
      }
      const [out] = await p.run(inputs);
      return out!;
    } finally {
      for (const t of inputs) t.dispose();
    }
  }

  #idsTensor(ids: Int32Array[]): Tensor {
    const flat = new Int32Array(ids.length * 77);
    ids.forEach((a, i) => flat.set(a, i * 77));
    return this.ints(flat, [ids.length, 77]);
  }

  /** The token embedding (before positions) of a one-token word, e.g. "person", float32. */
  async wordEmbedding(word: string): Promise<Float32Array> {
    return this.shared(() => this.#wordEmbedding(word));
  }

  async #wordEmbedding(word: string): Promise<Float32Array> {
    const ids = this.tokenizer.idsFor(word);
    if (ids.length !== 1) throw invalid('word', `one token (it is ${ids.length})`, word);
    const D = this.configs.text.hiddenSize;
    const table = 'text_model.embeddings.token_embedding.weight';
    await this.weights.text.preload(undefined, (n) => n === table);
    const p = this.program('word-embedding', (g) => {
      g.output(g.embedding(g.input([1, 1], 'int32'), this.weights.text.in(g, table)));
    });
    using id = this.ints(Int32Array.from(ids), [1, 1]);
    const [out] = await p.run([id]);
    using host = toHost(out!);
    const v = host.toFloat32();
    if (v.length !== D) throw new IdforgeError('E_INTERNAL', 'word embedding has the wrong width');
    return v;
  }

  /**
   * The UNet step program: latents [b, C, h, w], timesteps, key context [·, n, D] (and a value
   * context when dual, then the region table (regionInput) with `regions`) → eps and the captured
   * maps. With a guidance scale the latents are duplicated inside the program (unconditional first;
   * timesteps, contexts and the region table are [2b, ..]) and
   * classifier-free guidance is folded in: → guided eps [b]. Call preload(['unet']) first to
   * upload the weights with abort checks; otherwise building uploads them.
   */
  unetProgram(b: number, h: number, w: number, n: number, guidance: number | null, opts: UNetProgramOptions = {}): Program {
    const ch = this.configs.unet.inChannels;
    const dual = !!opts.dual;
    const capture = opts.capture ?? [];
    const regions = !!opts.regions;
    return this.program(`unet:${b}x${ch}x${h}x${w}:${n}:${guidance}:${dual}:${regions}:${capture.join(',')}`, (g) => {
      const r = buildGuidedUNet(g, this.weights.unet, this.configs, g.input([b, ch, h, w]), { tokens: n, guidance, dual, capture, regions });
      g.output(r.eps);
      for (const l of capture) g.output(r.attention.get(l)!, l);
    });
  }

  /**
   * The region table input of a UNet program of `rows` rows over `keys` tokens: every row confines
   * `regions`, or with guidance only the conditional rows (the second half; the unconditional
   * branch is left as it is).
   */
  regionInput(regions: readonly Region[], keys: number, rows: number, guided: boolean): Tensor {
    const confined = Array.from({ length: rows }, (_, i) => !guided || i >= rows / 2);
    return this.ints(regionTable(regions, keys, confined), [rows, regionColumns(keys)]);
  }

  /** The VAE decoder: image [B, 3, 8h, 8w] in [−1, 1] from z [B, C, h, w] (already divided by the scaling factor), float32 on the CPU. */
  async vaeDecode(z: Tensor, signal?: AbortSignal): Promise<Tensor> {
    return this.shared(() => this.#vaeDecode(z, signal));
  }

  async #vaeDecode(z: Tensor, signal?: AbortSignal): Promise<Tensor> {
    const s = z.shape;
    await this.preload(['vae-decoder']);
    const p = this.program(`vae-dec:${s.join('x')}`, (g) => {
      g.output(buildDecoder(g, this.weights.vae, this.configs.vae, g.input(s)));
    });
    using zin = this.upload(z);
    const [img] = await p.run([zin], { signal }); // abortable inside the decode
    return toHost(img!);
  }

  /**
   * Small previews of latents x [B, C, h, w] in the UNet's latent space (a step's denoised
   * estimate, on this backend): averaged over f×f cells so that the longer side is at most
   * `maxSide` pixels, then decoded by the preview VAE. One RGB image per row.
   */
  async preview(x: Tensor, maxSide = PREVIEW_SIDE, signal?: AbortSignal): Promise<RawImage[]> {
    return this.shared(() => this.#decodePreview(x, maxSide, signal));
  }

  async #decodePreview(x: Tensor, maxSide: number, signal?: AbortSignal): Promise<RawImage[]> {
    const v = this.#preview;
    if (!v) throw new IdforgeError('E_ARGUMENT', 'no preview VAE: load the engine with previewVae');
    const [b, c, h, w] = x.shape as [number, number, number, number];
    const f = Math.max(1, Math.ceil((Math.max(h, w) * this.latentFactor) / maxSide));
    const ph = Math.max(1, Math.floor(h / f)), pw = Math.max(1, Math.floor(w / f));
    const src = x.toFloat32();
    const small = new Float32Array(b * c * ph * pw);
    const k = 1 / (f * f * v.config.scalingFactor);
    for (let p = 0; p < b * c; p++)
      for (let i = 0; i < ph; i++)
        for (let j = 0; j < pw; j++) {
          let s = 0;
          for (let di = 0; di < f; di++) for (let dj = 0; dj < f; dj++) s += src[(p * h + i * f + di) * w + j * f + dj]!;
          small[(p * ph + i) * pw + j] = s * k;
        }
    await v.weights.preload(signal, isDecoderWeight);
    const shape = [b, c, ph, pw];
    const prog = this.program(`preview-dec:${shape.join('x')}`, (g) => g.output(buildDecoder(g, v.weights, v.config, g.input(shape))));
    using z = this.floats(small, shape);
    const [out] = await prog.run([z], { signal });
    using img = toHost(out!);
    const px = img.toFloat32();
    const H = img.shape[2]!, W = img.shape[3]!, n = 3 * H * W;
    return Array.from({ length: b }, (_, i) => toRawImage(px.subarray(i * n, (i + 1) * n).map((u) => Math.min(1, Math.max(0, u / 2 + 0.5))), W, H));
  }

  /**
   * The VAE encoder: latent mean and logvar (clamped to [−30, 20] as diffusers does) of img [B, 3, H, W] in [−1, 1], float32 on the CPU.
   * A tiny autoencoder (TAESD) is deterministic: its latents come back as the mean with logvar −∞ (a sample is the mean).
   */
  async vaeEncode(img: Tensor): Promise<{ mean: Tensor; logvar: Tensor }> {
    return this.shared(() => this.#vaeEncode(img));
  }

  async #vaeEncode(img: Tensor): Promise<{ mean: Tensor; logvar: Tensor }> {
    const s = img.shape;
    const tiny = this.configs.vae.tiny;
    if (tiny?.decoderOnly) throw new IdforgeError('E_ARGUMENT', `the VAE of this engine has no encoder (only taesd_decoder.safetensors was found): image to image needs taesd_encoder.safetensors beside it`);
    await this.preload(['vae-encoder']);
    if (tiny) {
      const p = this.program(`vae-enc:${s.join('x')}`, (g) => g.output(buildTinyEncoder(g, this.weights.vae, this.configs.vae, g.input(s))));
      using x = this.upload(img);
      const [lat] = await p.run([x]);
      const mean = toHost(lat!);
      return { mean, logvar: Tensor.from(new Float32Array(mean.size).fill(-Infinity), mean.shape) };
    }
    const p = this.program(`vae-enc:${s.join('x')}`, (g) => {
      const r = buildVaeEncoder(g, this.weights.vae, this.configs.vae, g.input(s), (shape) => {
        const z = Tensor.zeros(shape, this.backend);
        this.adopt(() => z.dispose());
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
}
