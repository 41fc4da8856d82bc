/**
 * The M² ID encoder of DreamIdentity: a ViT face backbone whose CLS features from several layers
 * ("taps") are each projected by a small MLP into one pseudo-word in CLIP's token-embedding space.
 * This is the pipeline (load, create, encode faces into Identities, save); its config, weights,
 * graph and runtime are the encoder-*.ts and config.ts beside it. Built once per batch size as a
 * graph and compiled to a Program.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IdforgeError } from '../errors.js';
import type { BackendSpec, Program } from '../graph/program.js';
import { safetensorsRefs } from '../io/checkpoint.js';
import { readJsonFile } from '../io/configs.js';
import type { RawImage } from '../io/image.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { resolveBackend, type DeviceOptions } from '../runtime/runtime.js';
import { Tensor } from '../tensor.js';
import type { PrepareFaceOptions } from '../identity/face.js';
import { Identity } from '../identity/identity.js';
import { idEncoderConfigJson, parseIdEncoderConfig, type IdEncoderConfig } from './config.js';
import { buildIdEncoder } from './encoder-graph.js';
import { IdEncoderRuntime } from './encoder-runtime.js';
import { checkWeights, createIdEncoderWeights, hostRefs, type HostWeight, type IdEncoderCreateOptions } from './encoder-weights.js';

/** Device and dtype: the rule every model follows (default 'auto'; float16 on CUDA, float32 on the CPU). */
export type IdEncoderLoadOptions = DeviceOptions;

export interface EncodeOptions extends Omit<PrepareFaceOptions, 'size'> {
  /** Name stored in the Identity. */
  name?: string;
  /** Receives preparation warnings (e.g. the centre-crop fallback). */
  onWarning?: (message: string) => void;
}

export interface IdFeatures {
  /** [B, taps, width] CLS features at the taps. */
  taps: Float32Array;
  /** [B, taps, textDim] pseudo-words. */
  words: Float32Array;
  batch: number;
}

export class IdEncoder implements Disposable {
  readonly #rt: IdEncoderRuntime;

  private constructor(readonly config: IdEncoderConfig, rt: IdEncoderRuntime, readonly dir: string) {
    this.#rt = rt;
  }

  /** Device, dtype and (on CUDA) the encoder's own stream. */
  get backend(): BackendSpec {
    return this.#rt.backend;
  }

  /** Opens an encoder folder (config.json + model.safetensors) and checks every weight's shape. */
  static async load(dir: string, opts: IdEncoderLoadOptions = {}): Promise<IdEncoder> {
    const backend = resolveBackend(opts);
    if (typeof dir !== 'string' || !fs.existsSync(dir)) throw new IdforgeError('E_NOT_FOUND', `ID encoder folder not found: ${String(dir)}`);
    const cfgFile = path.join(dir, 'config.json');
    const modelFile = path.join(dir, 'model.safetensors');
    if (!fs.existsSync(cfgFile)) throw new IdforgeError('E_NOT_FOUND', `${dir}: no config.json (an ID encoder folder holds config.json + model.safetensors)`);
    const config = parseIdEncoderConfig(readJsonFile(cfgFile), cfgFile);
    const st = SafetensorsFile.open(modelFile);
    try {
      const refs = safetensorsRefs(st);
      checkWeights(refs, config, st.path);
      return new IdEncoder(config, new IdEncoderRuntime(backend, refs, () => st.close()), dir);
    } catch (e) {
      st.close();
      throw e;
    }
  }

  /** An encoder over float32 host weights (checked against the config like a loaded one). */
  static fromWeights(config: IdEncoderConfig, weights: ReadonlyMap<string, HostWeight>, opts: IdEncoderLoadOptions = {}, dir = '(memory)'): IdEncoder {
    const backend = resolveBackend(opts);
    const refs = hostRefs(weights);
    checkWeights(refs, config, dir);
    return new IdEncoder(config, new IdEncoderRuntime(backend, refs), dir);
  }

  /**
   * A new, untrained encoder: a face-recognition ViT backbone (safetensors, timm-style names)
   * with seeded projectors, one per tap. Train it (trainEncoder, lib/dreamidentity/train.ts), save() it, load() it.
   */
  static create(opts: IdEncoderCreateOptions): IdEncoder {
    const { config, weights } = createIdEncoderWeights(opts);
    return IdEncoder.fromWeights(config, weights, opts);
  }

  /** Writes config.json + model.safetensors (float32): the folder IdEncoder.load reads. */
  save(dir: string): void {
    this.#rt.assertLive();
    saveIdEncoder(dir, this.config, this.hostWeights());
  }

  /** Number of words an identity from this encoder has (one per tap). */
  get words(): number {
    return this.config.taps.length;
  }

  get textDim(): number {
    return this.config.textDim;
  }

  get disposed(): boolean {
    return this.#rt.disposed;
  }

  #program(batch: number): Program {
    return this.#rt.program(`id-encoder:${batch}`, (g) => {
      const x = g.input([batch, 3, this.config.imageSize, this.config.imageSize], 'float', 'image');
      const { taps, words } = buildIdEncoder(g, this.#rt.weights, this.config, x);
      g.output(taps, 'taps');
      g.output(words, 'words');
    });
  }

  /** Tap features and words for a batch of faces [B, 3, size, size] already normalised (x/255 − mean)/std. */
  async encodeFeatures(images: Tensor): Promise<IdFeatures> {
    const s = this.config.imageSize;
    const shape = images.shape;
    if (shape.length !== 4 || shape[1] !== 3 || shape[2] !== s || shape[3] !== s || shape[0] === 0)
      throw new IdforgeError('E_SHAPE', `ID encoder input must be [B, 3, ${s}, ${s}], got ${JSON.stringify(shape)}`);
    const b = shape[0]!;
    const p = this.#program(b);
    const own = images.device !== this.backend.device || images.dtype !== this.backend.dtype;
    const input = own ? this.#rt.upload(images) : images;
    try {
      const outs = await p.run([input]);
      try {
        return { taps: outs[0]!.toFloat32(), words: outs[1]!.toFloat32(), batch: b };
      } finally {
        for (const t of outs) t.dispose();
      }
    } finally {
      if (own) input.dispose();
    }
  }

  /** (x/255 − mean)/std of a size×size RGB image, as CHW float32. */
  normalize(img: RawImage): Float32Array {
    const s = this.config.imageSize;
    if (img.width !== s || img.height !== s) throw new IdforgeError('E_SHAPE', `face must be ${s}×${s}, got ${img.width}×${img.height}`);
    const out = new Float32Array(3 * s * s);
    const { mean, std } = this.config;
    for (let c = 0; c < 3; c++) {
      const m = mean[c]!, sd = std[c]!;
      for (let i = 0; i < s * s; i++) out[c * s * s + i] = (img.data[i * 3 + c]! / 255 - m) / sd;
    }
    return out;
  }

  /**
   * An Identity (S=1, M = taps, k = v, method 'dreamidentity') from a face. A Tensor [B, 3, size, size]
   * (already normalised) gives one Identity per row; an image (RawImage, file path, encoded Buffer) is
   * decoded, aligned with `landmarks` (detected by default: E_NO_FACE when there is none, see
   * PrepareFaceOptions; 'centre' for a centre crop), resized and normalised first.
   */
  async encode(face: Tensor, opts?: EncodeOptions): Promise<Identity[]>;
  async encode(face: RawImage | string | Buffer, opts?: EncodeOptions): Promise<Identity>;
  async encode(face: RawImage | string | Buffer | Tensor, opts: EncodeOptions = {}): Promise<Identity | Identity[]> {
    if (face instanceof Tensor) {
      const f = await this.encodeFeatures(face);
      return Array.from({ length: f.batch }, (_, i) => this.#identity(f.words, i, opts.name));
    }
    // face.ts (and sharp) load on demand: tensor inputs and servers without image I/O never need them.
    const { prepareFace } = await import('../identity/face.js');
    // Default: landmarks from the face detector (lib/faces); 'centre' or 5 given points skip it.
    const { name: _n, onWarning: _w, ...choice } = opts;
    const prepared = await prepareFace(face, { ...choice, landmarks: opts.landmarks ?? 'detect', size: this.config.imageSize });
    for (const w of prepared.warnings) opts.onWarning?.(w);
    const s = this.config.imageSize;
    const t = Tensor.from(this.normalize(prepared.image), [1, 3, s, s]);
    try {
      const f = await this.encodeFeatures(t);
      return this.#identity(f.words, 0, opts.name);
    } finally {
      t.dispose();
    }
  }

  /** Float32 host copies of every weight (name → shape, values) in the file's order: what a trainer starts from. */
  hostWeights(): Map<string, HostWeight> {
    const m = new Map<string, HostWeight>();
    for (const [name, r] of this.#rt.weights.refs) m.set(name, { shape: [...r.shape], data: r.readFloat32() });
    return m;
  }

  #identity(words: Float32Array, row: number, name: string | undefined): Identity {
    const M = this.words;
    const D = this.config.textDim;
    return new Identity({
      k: words.slice(row * M * D, (row + 1) * M * D), stages: 1, words: M, dim: D, method: 'dreamidentity',
      ...(name !== undefined ? { name } : {}),
    });
  }

  dispose(): void {
    this.#rt.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Writes an encoder folder (config.json + model.safetensors, float32) from a config and host weights. */
export function saveIdEncoder(dir: string, config: IdEncoderConfig, weights: ReadonlyMap<string, HostWeight>): void {
  fs.mkdirSync(dir, { recursive: true });
  const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [n, w] of weights) tensors[n] = { dtype: 'F32', shape: [...w.shape], data: w.data };
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  const cfg = path.join(dir, 'config.json');
  fs.writeFileSync(`${cfg}.tmp`, JSON.stringify(idEncoderConfigJson(config), null, 2));
  fs.renameSync(`${cfg}.tmp`, cfg);
}
