/**
 * The M² ID encoder of DreamIdentity: a ViT face backbone whose CLS features from several layers
 * ("taps") are each projected by a small MLP into one pseudo-word in CLIP's token-embedding space.
 *
 * Folder layout (test/fixtures/tiny-id-encoder): config.json + model.safetensors with timm-style
 * names — patch_embed.proj, cls_token [1,1,W], pos_embed [1,N+1,W], norm_pre, blocks.i.{norm1,
 * attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, projector.k.{fc1, fc2}. Pre-norm blocks,
 * exact (erf) GELU. Tap i (integer) = CLS state after block i (1-based, no norm); "final" = norm of
 * the CLS state after the last block. Built once per batch size as a graph and compiled to a Program.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IdforgeError } from '../errors.js';
import type { Graph, Value } from '../graph/graph.js';
import type { BackendSpec, Program } from '../graph/program.js';
import { layerNormW, linearW, toTokens, type Weights } from '../graph/weights.js';
import { safetensorsRefs, type TensorRef } from '../io/checkpoint.js';
import { readJsonFile } from '../io/configs.js';
import { expectWeight } from '../io/layout.js';
import type { RawImage } from '../io/image.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import type { DeviceOptions } from '../options.js';
import { ModelRuntime, resolveBackend } from '../runtime/runtime.js';
import { normalGenerator } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import type { PrepareFaceOptions } from '../identity/face.js';
import { Identity } from '../identity/identity.js';

export interface IdEncoderConfig {
  imageSize: number;
  patchSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  mlpHidden: number;
  eps: number;
  /** Block numbers (1-based) or 'final'. */
  taps: (number | 'final')[];
  projectorHidden: number;
  textDim: number;
  mean: [number, number, number];
  std: [number, number, number];
}

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

/** A weight held on the host in float32 (what a trainer updates and save() writes). */
export interface HostWeight {
  shape: number[];
  data: Float32Array;
}

function fmt(file: string, msg: string): IdforgeError {
  return new IdforgeError('E_MODEL_FORMAT', `${file}: ${msg}`);
}

/** Parses and checks config.json of an M² ID encoder. */
export function parseIdEncoderConfig(json: unknown, file = 'config.json'): IdEncoderConfig {
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw fmt(file, 'is not a JSON object');
  const c = json as Record<string, unknown>;
  if (c.architecture !== undefined && c.architecture !== 'm2-id-encoder')
    throw fmt(file, `architecture ${JSON.stringify(c.architecture)} is not "m2-id-encoder"`);
  const int = (v: unknown, key: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw fmt(file, `${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const imageSize = int(c.image_size, 'image_size');
  const patchSize = int(c.patch_size, 'patch_size');
  const hiddenSize = int(c.hidden_size, 'hidden_size');
  const numLayers = int(c.num_layers, 'num_layers');
  const numHeads = int(c.num_heads, 'num_heads');
  const textDim = int(c.text_dim, 'text_dim');
  if (imageSize % patchSize) throw fmt(file, `image_size ${imageSize} is not a multiple of patch_size ${patchSize}`);
  if (hiddenSize % numHeads) throw fmt(file, `hidden_size ${hiddenSize} does not split into ${numHeads} heads`);
  const ratio = c.mlp_ratio ?? 4;
  if (typeof ratio !== 'number' || !(ratio > 0) || !Number.isInteger(ratio * hiddenSize)) throw fmt(file, `mlp_ratio ${JSON.stringify(ratio)} is invalid`);
  const eps = c.layer_norm_eps ?? 1e-5;
  if (typeof eps !== 'number' || !(eps > 0)) throw fmt(file, `layer_norm_eps ${JSON.stringify(eps)} is invalid`);
  if ((c.hidden_act ?? 'gelu') !== 'gelu') throw fmt(file, `hidden_act ${JSON.stringify(c.hidden_act)} is not supported (only "gelu")`);
  if (c.pre_norm === false) throw fmt(file, 'post-norm encoders (pre_norm: false) are not supported');
  if (c.cls_token === false) throw fmt(file, 'encoders without a CLS token are not supported');
  if (!Array.isArray(c.taps) || c.taps.length === 0) throw fmt(file, 'taps must be a non-empty list');
  const taps = c.taps.map((t) => {
    if (t === 'final') return 'final' as const;
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 1 || t > numLayers) throw fmt(file, `tap ${JSON.stringify(t)} is not "final" or a block number in 1..${numLayers}`);
    return t;
  });
  const proj = (c.projector ?? {}) as Record<string, unknown>;
  if ((proj.act ?? 'gelu') !== 'gelu') throw fmt(file, `projector act ${JSON.stringify(proj.act)} is not supported (only "gelu")`);
  const projectorHidden = int(proj.hidden_size, 'projector.hidden_size');
  const norm = (c.input_normalization ?? { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }) as Record<string, unknown>;
  const triple = (v: unknown, key: string, positive: boolean): [number, number, number] => {
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0)))
      throw fmt(file, `input_normalization.${key} must be 3 ${positive ? 'positive ' : ''}numbers`);
    return v as [number, number, number];
  };
  return {
    imageSize, patchSize, hiddenSize, numLayers, numHeads, mlpHidden: ratio * hiddenSize, eps, taps, projectorHidden, textDim,
    mean: triple(norm.mean, 'mean', false), std: triple(norm.std, 'std', true),
  };
}

/** The encoder's model runtime: its weights (one group), device, stream and programs (one per batch size). */
class IdEncoderRuntime extends ModelRuntime {
  readonly weights: Weights;
  /** Over checked refs: of an open file (`close` runs at dispose) or of float32 host weights (create(), a trainer's result). */
  constructor(backend: BackendSpec, refs: Map<string, TensorRef>, close?: () => void) {
    super(backend, 'IdEncoder');
    if (close) this.adopt(close);
    this.weights = this.addWeights('id-encoder', refs);
  }
}

/** TensorRefs over float32 host arrays. */
export function hostRefs(weights: ReadonlyMap<string, HostWeight>): Map<string, TensorRef> {
  const m = new Map<string, TensorRef>();
  for (const [name, w] of weights)
    m.set(name, {
      name, shape: [...w.shape], dtype: 'F32', file: '(memory)', key: name,
      readFloat32: () => w.data.slice(),
      readBytes: () => Buffer.from(w.data.buffer, w.data.byteOffset, w.data.byteLength),
    });
  return m;
}

/** config.json of an encoder (what parseIdEncoderConfig reads back). */
export function idEncoderConfigJson(c: IdEncoderConfig): Record<string, unknown> {
  return {
    architecture: 'm2-id-encoder', image_size: c.imageSize, patch_size: c.patchSize, hidden_size: c.hiddenSize,
    num_layers: c.numLayers, num_heads: c.numHeads, mlp_ratio: c.mlpHidden / c.hiddenSize, hidden_act: 'gelu',
    layer_norm_eps: c.eps, pre_norm: true, cls_token: true, taps: [...c.taps],
    projector: { hidden_size: c.projectorHidden, act: 'gelu' }, text_dim: c.textDim,
    input_normalization: { mean: [...c.mean], std: [...c.std] },
  };
}

export interface IdEncoderCreateOptions extends IdEncoderLoadOptions {
  /**
   * A face-recognition ViT in safetensors with timm-style names (patch_embed.proj, cls_token,
   * pos_embed, [norm_pre], blocks.i.*, norm): a .safetensors file, or a folder holding
   * model.safetensors (and optionally config.json with num_heads / layer_norm_eps).
   */
  backbone: string;
  /** Where words are taken: block numbers (1-based) or 'final'. */
  taps: (number | 'final')[];
  /** The text encoder's width (768 for SD 1.5). */
  textDim: number;
  projectorHidden: number;
  /** Seed of the projector initialisation. */
  seed: number;
  /** Attention heads of the backbone (the weights do not say); default: the folder's config.json num_heads. */
  numHeads?: number;
  /** LayerNorm eps of the backbone (default: config.json layer_norm_eps, else 1e-6 as timm's ViTs). */
  eps?: number;
  /** Input normalisation (default mean = std = 0.5: faces in [−1, 1]). */
  mean?: [number, number, number];
  std?: [number, number, number];
}

/**
 * A new encoder's config and weights: the backbone's weights as they are (float32) and seeded
 * projectors — fc1 ~ N(0, 1/W) (unit-variance hidden units), fc2 ~ N(0, 0.02²) so that the first
 * words are small next to CLIP's token embeddings, zero biases.
 */
export function createIdEncoderWeights(o: IdEncoderCreateOptions): { config: IdEncoderConfig; weights: Map<string, HostWeight> } {
  if (!o || typeof o.backbone !== 'string') throw new IdforgeError('E_ARGUMENT', 'IdEncoder.create: backbone must be a path to a safetensors ViT');
  if (!Number.isInteger(o.seed)) throw new IdforgeError('E_ARGUMENT', `IdEncoder.create: seed must be an integer, got ${String(o.seed)}`);
  let file = o.backbone;
  let json: Record<string, unknown> = {};
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) {
    const cfg = path.join(file, 'config.json');
    if (fs.existsSync(cfg)) json = readJsonFile(cfg) as Record<string, unknown>;
    file = path.join(file, 'model.safetensors');
  }
  if (!fs.existsSync(file)) throw new IdforgeError('E_NOT_FOUND', `backbone not found: ${file}`);
  const st = SafetensorsFile.open(file);
  try {
    const need = (n: string): number[] => {
      if (!st.has(n)) throw fmt(file, `backbone weight "${n}" is missing (timm-style ViT names expected; see README "DreamIdentity")`);
      return [...st.info(n).shape];
    };
    const pe = need('patch_embed.proj.weight');
    const pos = need('pos_embed');
    const W = pe[0]!;
    const patch = pe[2]!;
    const grid = Math.round(Math.sqrt(pos[1]! - 1));
    if (grid * grid !== pos[1]! - 1) throw fmt(file, `pos_embed ${JSON.stringify(pos)} is not a square grid plus a CLS row`);
    let layers = 0;
    while (st.has(`blocks.${layers}.norm1.weight`)) layers++;
    const mlp = need('blocks.0.mlp.fc1.weight')[0]!;
    const heads = o.numHeads ?? json.num_heads;
    const cfgJson = {
      architecture: 'm2-id-encoder', image_size: grid * patch, patch_size: patch, hidden_size: W, num_layers: layers,
      num_heads: heads, mlp_ratio: mlp / W, layer_norm_eps: o.eps ?? json.layer_norm_eps ?? 1e-6, taps: o.taps,
      projector: { hidden_size: o.projectorHidden }, text_dim: o.textDim,
      input_normalization: { mean: o.mean ?? [0.5, 0.5, 0.5], std: o.std ?? [0.5, 0.5, 0.5] },
    };
    if (heads === undefined) throw new IdforgeError('E_ARGUMENT', 'IdEncoder.create: numHeads is required (the weights do not say; or put num_heads in the backbone folder\'s config.json)');
    const config = parseIdEncoderConfig(cfgJson, `${file} (create options)`);
    const weights = new Map<string, HostWeight>();
    for (const n of st.names()) {
      if (n === 'head.weight' || n === 'head.bias' || n.startsWith('projector.')) continue; // a classifier head or old projectors
      const info = st.info(n);
      if (!['F32', 'F16', 'BF16'].includes(info.dtype)) continue;
      weights.set(n, { shape: [...info.shape], data: st.readFloat32(n) });
    }
    const next = normalGenerator(o.seed);
    const normal = (n: number, sd: number) => Float32Array.from({ length: n }, () => next() * sd);
    const H = config.projectorHidden;
    config.taps.forEach((_, k) => {
      weights.set(`projector.${k}.fc1.weight`, { shape: [H, W], data: normal(H * W, 1 / Math.sqrt(W)) });
      weights.set(`projector.${k}.fc1.bias`, { shape: [H], data: new Float32Array(H) });
      weights.set(`projector.${k}.fc2.weight`, { shape: [config.textDim, H], data: normal(config.textDim * H, 0.02) });
      weights.set(`projector.${k}.fc2.bias`, { shape: [config.textDim], data: new Float32Array(config.textDim) });
    });
    return { config, weights };
  } finally {
    st.close();
  }
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
   * with seeded projectors, one per tap. Train it (lib/train/), save() it, load() it.
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

/**
 * The names and shapes of an encoder's weights under `c`; the patch-embedding bias and a
 * `norm_pre` are optional in checkpoints (say which are there).
 */
export function idEncoderLayout(c: IdEncoderConfig, opts: { patchBias?: boolean; normPre?: boolean } = {}): { name: string; shape: number[] }[] {
  const W = c.hiddenSize;
  const n = (c.imageSize / c.patchSize) ** 2;
  const e: [string, number[]][] = [['patch_embed.proj.weight', [W, 3, c.patchSize, c.patchSize]]];
  if (opts.patchBias ?? true) e.push(['patch_embed.proj.bias', [W]]);
  e.push(['cls_token', [1, 1, W]], ['pos_embed', [1, n + 1, W]]);
  if (opts.normPre) e.push(['norm_pre.weight', [W]], ['norm_pre.bias', [W]]);
  for (let i = 0; i < c.numLayers; i++)
    for (const [k, s] of [
      ['norm1.weight', [W]], ['norm1.bias', [W]], ['attn.qkv.weight', [3 * W, W]], ['attn.qkv.bias', [3 * W]],
      ['attn.proj.weight', [W, W]], ['attn.proj.bias', [W]], ['norm2.weight', [W]], ['norm2.bias', [W]],
      ['mlp.fc1.weight', [c.mlpHidden, W]], ['mlp.fc1.bias', [c.mlpHidden]], ['mlp.fc2.weight', [W, c.mlpHidden]], ['mlp.fc2.bias', [W]],
    ] as [string, number[]][]) e.push([`blocks.${i}.${k}`, s]);
  e.push(['norm.weight', [W]], ['norm.bias', [W]]);
  c.taps.forEach((_, k) => e.push(
    [`projector.${k}.fc1.weight`, [c.projectorHidden, W]], [`projector.${k}.fc1.bias`, [c.projectorHidden]],
    [`projector.${k}.fc2.weight`, [c.textDim, c.projectorHidden]], [`projector.${k}.fc2.bias`, [c.textDim]],
  ));
  return e.map(([name, shape]) => ({ name, shape }));
}

function checkWeights(refs: ReadonlyMap<string, TensorRef>, c: IdEncoderConfig, where: string): void {
  const layout = idEncoderLayout(c, { patchBias: refs.has('patch_embed.proj.bias'), normPre: refs.has('norm_pre.weight') || refs.has('norm_pre.bias') });
  for (const { name, shape } of layout) expectWeight(refs.get(name), name, shape, where, 'ID encoder', 'the config');
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

/** The encoder graph: image [B, 3, S, S] → taps [B, T, W], words [B, T, textDim]. */
export function buildIdEncoder(g: Graph, w: Weights, c: IdEncoderConfig, x: Value): { taps: Value; words: Value } {
  const b = x.dim(0);
  const W = c.hiddenSize;
  const patches = g.conv2d(x, w.in(g, 'patch_embed.proj.weight'), w.maybe(g, 'patch_embed.proj.bias'), { stride: c.patchSize, pad: 0 });
  const tokens = toTokens(g, patches); // [B, N, W]
  const cls = w.in(g, 'cls_token'); // [1, 1, W]
  // The program is built per batch size, so B copies of the CLS row are a static concat.
  const clsB = b === 1 ? cls : g.concat(Array.from({ length: b }, () => cls), 0);
  let h = g.add(g.concat([clsB, tokens], 1), w.in(g, 'pos_embed'));
  if (w.has('norm_pre.weight')) h = layerNormW(g, w, h, 'norm_pre', c.eps);
  const clsAt = new Map<number | 'final', Value>();
  for (let i = 0; i < c.numLayers; i++) {
    const p = `blocks.${i}`;
    const qkv = linearW(g, w, layerNormW(g, w, h, `${p}.norm1`, c.eps), `${p}.attn.qkv`);
    const q = g.slice(qkv, -1, 0, W);
    const k = g.slice(qkv, -1, W, 2 * W);
    const v = g.slice(qkv, -1, 2 * W, 3 * W);
    // Skip connections as residuals of the closing linears (added in their epilogues).
    h = linearW(g, w, g.attention(q, k, v, { heads: c.numHeads }), `${p}.attn.proj`, { residual: h });
    h = linearW(g, w, g.gelu(linearW(g, w, layerNormW(g, w, h, `${p}.norm2`, c.eps), `${p}.mlp.fc1`)), `${p}.mlp.fc2`, { residual: h });
    if (c.taps.includes(i + 1)) clsAt.set(i + 1, g.slice(h, 1, 0, 1));
  }
  if (c.taps.includes('final')) clsAt.set('final', layerNormW(g, w, g.slice(h, 1, 0, 1), 'norm', c.eps));
  const feats = c.taps.map((t) => clsAt.get(t)!); // each [B, 1, W]
  const words = feats.map((f, k) => linearW(g, w, g.gelu(linearW(g, w, f, `projector.${k}.fc1`)), `projector.${k}.fc2`));
  return {
    taps: feats.length === 1 ? feats[0]! : g.concat(feats, 1),
    words: words.length === 1 ? words[0]! : g.concat(words, 1),
  };
}
