/**
 * A synthetic model source: the real module layout of a Stable Diffusion 1.x UNet, VAE and CLIP
 * text encoder (diffusers / transformers naming, as the loaders present it internally) with seeded
 * random weights generated on demand. Engine.fromSource runs it through exactly the code path of
 * real weights (Weights reads each TensorRef's bytes once and uploads them), so the benchmark
 * measures real SD 1.5 sizes without a 4 GB download.
 *
 * The layout mirrors diffusers' UNet2DConditionModel / AutoencoderKL and transformers'
 * CLIPTextModel module by module; test/bench.test.ts checks that, built from the tiny fixture's
 * configs, it yields exactly the fixture's tensor names and shapes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdforgeError } from '../errors.js';
import { BUNDLED_TOKENIZER_DIR, WeightMap, type Component, type ModelSource, type TensorRef } from '../io/checkpoint.js';
import { sd15Scheduler, SD15_TEXT, SD15_UNET, SD15_VAE, type ModelConfigs, type TextConfig, type UNetConfig, type VaeConfig } from '../io/configs.js';
import { f32ToF16 } from '../io/half.js';

/** How a tensor is initialised: N(0, std), or a constant (norm weights 1, norm biases 0). */
export type Init = { kind: 'normal'; std: number } | { kind: 'const'; value: number };

export interface LayoutEntry {
  name: string;
  shape: number[];
  init: Init;
}

const STD = 0.02;
const NORMAL: Init = { kind: 'normal', std: STD };
const ONES: Init = { kind: 'const', value: 1 };
const ZEROS: Init = { kind: 'const', value: 0 };

class Layout {
  readonly entries: LayoutEntry[] = [];
  add(name: string, shape: number[], init: Init = NORMAL): void {
    this.entries.push({ name, shape, init });
  }
  norm(p: string, c: number): void {
    this.add(`${p}.weight`, [c], ONES);
    this.add(`${p}.bias`, [c], ZEROS);
  }
  linear(p: string, out: number, inp: number, bias = true): void {
    this.add(`${p}.weight`, [out, inp]);
    if (bias) this.add(`${p}.bias`, [out]);
  }
  conv(p: string, out: number, inp: number, k: number): void {
    this.add(`${p}.weight`, [out, inp, k, k]);
    this.add(`${p}.bias`, [out]);
  }
}

// ---------------------------------------------------------------------------------------------
// UNet2DConditionModel

function unetResnet(l: Layout, p: string, inp: number, out: number, temb: number): void {
  l.norm(`${p}.norm1`, inp);
  l.conv(`${p}.conv1`, out, inp, 3);
  l.linear(`${p}.time_emb_proj`, out, temb);
  l.norm(`${p}.norm2`, out);
  l.conv(`${p}.conv2`, out, out, 3);
  if (inp !== out) l.conv(`${p}.conv_shortcut`, out, inp, 1);
}

// Transformer2DModel with BasicTransformerBlock(s); SD 1.x: inner dim = heads · head dim = channels.
function unetTransformer(l: Layout, cfg: UNetConfig, p: string, c: number): void {
  l.norm(`${p}.norm`, c);
  if (cfg.useLinearProjection) l.linear(`${p}.proj_in`, c, c);
  else l.conv(`${p}.proj_in`, c, c, 1);
  for (let t = 0; t < cfg.transformerLayersPerBlock; t++) {
    const b = `${p}.transformer_blocks.${t}`;
    l.norm(`${b}.norm1`, c);
    for (const [attn, kv] of [['attn1', c], ['attn2', cfg.crossAttentionDim]] as const) {
      l.linear(`${b}.${attn}.to_q`, c, c, false);
      l.linear(`${b}.${attn}.to_k`, c, kv, false);
      l.linear(`${b}.${attn}.to_v`, c, kv, false);
      l.linear(`${b}.${attn}.to_out.0`, c, c);
      if (attn === 'attn1') l.norm(`${b}.norm2`, c);
    }
    l.norm(`${b}.norm3`, c);
    // GEGLU: one projection to 2 × (4c), then back from 4c.
    l.linear(`${b}.ff.net.0.proj`, 8 * c, c);
    l.linear(`${b}.ff.net.2`, c, 4 * c);
  }
  if (cfg.useLinearProjection) l.linear(`${p}.proj_out`, c, c);
  else l.conv(`${p}.proj_out`, c, c, 1);
}

export function unetLayout(cfg: UNetConfig): LayoutEntry[] {
  const l = new Layout();
  const boc = cfg.blockOutChannels;
  const levels = boc.length;
  const temb = 4 * boc[0]!;
  l.conv('conv_in', boc[0]!, cfg.inChannels, 3);
  l.linear('time_embedding.linear_1', temb, boc[0]!);
  l.linear('time_embedding.linear_2', temb, temb);

  let out = boc[0]!;
  cfg.downBlockTypes.forEach((type, i) => {
    const inp = out;
    out = boc[i]!;
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      unetResnet(l, `down_blocks.${i}.resnets.${j}`, j === 0 ? inp : out, out, temb);
      if (type.startsWith('CrossAttn')) unetTransformer(l, cfg, `down_blocks.${i}.attentions.${j}`, out);
    }
    if (i < levels - 1) l.conv(`down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  });

  const mid = boc[levels - 1]!;
  unetResnet(l, 'mid_block.resnets.0', mid, mid, temb);
  unetTransformer(l, cfg, 'mid_block.attentions.0', mid);
  unetResnet(l, 'mid_block.resnets.1', mid, mid, temb);

  const rev = [...boc].reverse();
  let prev = rev[0]!;
  cfg.upBlockTypes.forEach((type, i) => {
    const o = rev[i]!;
    const skipIn = rev[Math.min(i + 1, levels - 1)]!;
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      const resIn = j === 0 ? prev : o;
      const skip = j === cfg.layersPerBlock ? skipIn : o;
      unetResnet(l, `up_blocks.${i}.resnets.${j}`, resIn + skip, o, temb);
      if (type.startsWith('CrossAttn')) unetTransformer(l, cfg, `up_blocks.${i}.attentions.${j}`, o);
    }
    if (i < levels - 1) l.conv(`up_blocks.${i}.upsamplers.0.conv`, o, o, 3);
    prev = o;
  });

  l.norm('conv_norm_out', boc[0]!);
  l.conv('conv_out', cfg.outChannels, boc[0]!, 3);
  return l.entries;
}

// ---------------------------------------------------------------------------------------------
// AutoencoderKL (attention under the current diffusers names, projections as [C, C])

function vaeResnet(l: Layout, p: string, inp: number, out: number): void {
  l.norm(`${p}.norm1`, inp);
  l.conv(`${p}.conv1`, out, inp, 3);
  l.norm(`${p}.norm2`, out);
  l.conv(`${p}.conv2`, out, out, 3);
  if (inp !== out) l.conv(`${p}.conv_shortcut`, out, inp, 1);
}

function vaeMid(l: Layout, p: string, c: number): void {
  vaeResnet(l, `${p}.mid_block.resnets.0`, c, c);
  const a = `${p}.mid_block.attentions.0`;
  l.norm(`${a}.group_norm`, c);
  for (const n of ['to_q', 'to_k', 'to_v', 'to_out.0']) l.linear(`${a}.${n}`, c, c);
  vaeResnet(l, `${p}.mid_block.resnets.1`, c, c);
}

export function vaeLayout(cfg: VaeConfig): LayoutEntry[] {
  const l = new Layout();
  const boc = cfg.blockOutChannels;
  const levels = boc.length;
  const lat = cfg.latentChannels;

  l.conv('encoder.conv_in', boc[0]!, cfg.inChannels, 3);
  let out = boc[0]!;
  for (let i = 0; i < levels; i++) {
    const inp = out;
    out = boc[i]!;
    for (let j = 0; j < cfg.layersPerBlock; j++) vaeResnet(l, `encoder.down_blocks.${i}.resnets.${j}`, j === 0 ? inp : out, out);
    if (i < levels - 1) l.conv(`encoder.down_blocks.${i}.downsamplers.0.conv`, out, out, 3);
  }
  vaeMid(l, 'encoder', boc[levels - 1]!);
  l.norm('encoder.conv_norm_out', boc[levels - 1]!);
  l.conv('encoder.conv_out', 2 * lat, boc[levels - 1]!, 3);
  l.conv('quant_conv', 2 * lat, 2 * lat, 1);
  l.conv('post_quant_conv', lat, lat, 1);

  const rev = [...boc].reverse();
  l.conv('decoder.conv_in', rev[0]!, lat, 3);
  vaeMid(l, 'decoder', rev[0]!);
  out = rev[0]!;
  for (let i = 0; i < levels; i++) {
    const inp = out;
    out = rev[i]!;
    for (let j = 0; j <= cfg.layersPerBlock; j++) vaeResnet(l, `decoder.up_blocks.${i}.resnets.${j}`, j === 0 ? inp : out, out);
    if (i < levels - 1) l.conv(`decoder.up_blocks.${i}.upsamplers.0.conv`, out, out, 3);
  }
  l.norm('decoder.conv_norm_out', boc[0]!);
  l.conv('decoder.conv_out', cfg.outChannels, boc[0]!, 3);
  return l.entries;
}

// ---------------------------------------------------------------------------------------------
// CLIPTextModel (position_ids is a buffer the loaders drop, so it is not listed)

export function textLayout(cfg: TextConfig): LayoutEntry[] {
  const l = new Layout();
  const d = cfg.hiddenSize;
  l.add('text_model.embeddings.token_embedding.weight', [cfg.vocabSize, d]);
  l.add('text_model.embeddings.position_embedding.weight', [cfg.maxPositionEmbeddings, d]);
  for (let i = 0; i < cfg.numHiddenLayers; i++) {
    const p = `text_model.encoder.layers.${i}`;
    for (const n of ['k_proj', 'v_proj', 'q_proj', 'out_proj']) l.linear(`${p}.self_attn.${n}`, d, d);
    l.norm(`${p}.layer_norm1`, d);
    l.linear(`${p}.mlp.fc1`, cfg.intermediateSize, d);
    l.linear(`${p}.mlp.fc2`, d, cfg.intermediateSize);
    l.norm(`${p}.layer_norm2`, d);
  }
  l.norm('text_model.final_layer_norm', d);
  return l.entries;
}

// ---------------------------------------------------------------------------------------------
// Seeded values

/**
 * 2^16 standard-normal quantiles Φ⁻¹((i + ½) / 2^16): one 32-bit random word then gives two
 * N(0, 1) samples by table look-up, ~10× faster than Box–Muller in JS (the SD 1.5 weights are a
 * billion numbers). The tails are cut at ±4.3σ, which is irrelevant for timing-only weights.
 */
let quantiles: Float32Array | undefined;

function normalQuantiles(): Float32Array {
  if (quantiles) return quantiles;
  const q = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) q[i] = inverseNormalCdf((i + 0.5) / 65536);
  quantiles = q;
  return q;
}

/** Acklam's rational approximation of Φ⁻¹ (relative error < 1.2e-9). */
function inverseNormalCdf(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  }
  if (p > 1 - lo) return -inverseNormalCdf(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}

/** FNV-1a of a string, mixed with the seed: each tensor's stream depends only on (seed, component, name). */
function tensorSeed(seed: number, key: string): number {
  let h = (0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** `n` samples of `init` from a xoshiro128** stream seeded by `seed`. */
export function sampleInit(init: Init, n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  if (init.kind === 'const') return init.value === 0 ? out : out.fill(init.value);
  const q = normalQuantiles();
  const std = init.std;
  // xoshiro128** with SplitMix32-style seeding of its four words.
  let z = seed >>> 0;
  const mix = () => {
    z = (z + 0x9e3779b9) >>> 0;
    let x = z;
    x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
    x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
    return (x ^ (x >>> 16)) | 0;
  };
  let s0 = mix(), s1 = mix(), s2 = mix(), s3 = mix();
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1;
  for (let i = 0; i < n; i += 2) {
    const m = Math.imul(s1, 5);
    const r = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    out[i] = q[r & 0xffff]! * std;
    if (i + 1 < n) out[i + 1] = q[r >>> 16]! * std;
  }
  return out;
}

class RandomTensorRef implements TensorRef {
  readonly key: string;
  constructor(
    readonly name: string,
    readonly shape: number[],
    readonly dtype: 'F32' | 'F16',
    readonly file: string,
    private readonly init: Init,
    private readonly seed: number,
  ) {
    this.key = name;
  }
  readFloat32(): Float32Array {
    return sampleInit(this.init, this.shape.reduce((a, b) => a * b, 1), this.seed);
  }
  readBytes(): Buffer {
    const f = this.readFloat32();
    const typed = this.dtype === 'F16' ? f32ToF16(f) : f;
    return Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength);
  }
}

// ---------------------------------------------------------------------------------------------
// The source

export interface RandomModelOptions {
  /** Seeds every tensor (default 0). */
  seed?: number;
  /** Stored dtype the refs report: F16 halves the host bytes when the engine computes in float16. */
  dtype?: 'F32' | 'F16';
  /** A folder with vocab.json + merges.txt (default: the bundled CLIP tokenizer, else the test fixture's). */
  tokenizerDir?: string;
  /** A name for messages and the engine's modelPath (default "random:<preset>"). */
  name?: string;
}

export type RandomPreset = 'sd15';

/** SD 1.5's configs (UNet, VAE, CLIP ViT-L/14 text tower, scheduler), as fresh mutable copies. */
export function sd15Configs(): ModelConfigs {
  return {
    unet: structuredClone({ ...SD15_UNET }) as UNetConfig,
    vae: structuredClone({ ...SD15_VAE }) as VaeConfig,
    text: structuredClone({ ...SD15_TEXT }) as TextConfig,
    scheduler: sd15Scheduler(),
  };
}

const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));

function hasTokenizer(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'vocab.json')) && fs.existsSync(path.join(dir, 'merges.txt'));
}

/** The bundled CLIP tokenizer, or the tiny fixture's (the same vocabulary) in a source checkout without assets/. */
export function defaultTokenizerDir(): string {
  const candidates = [BUNDLED_TOKENIZER_DIR, path.join(PACKAGE_ROOT, 'test', 'fixtures', 'tiny-sd', 'tokenizer')];
  const found = candidates.find(hasTokenizer);
  if (!found) throw new IdforgeError('E_NOT_FOUND', `no CLIP tokenizer (vocab.json + merges.txt) in ${candidates.join(' or ')}`);
  return found;
}

/** Every component's tensor list for `configs`. */
export function modelLayout(configs: Pick<ModelConfigs, 'unet' | 'vae' | 'text'>): Record<Component, LayoutEntry[]> {
  return { unet: unetLayout(configs.unet), vae: vaeLayout(configs.vae), text: textLayout(configs.text) };
}

/** A ModelSource with the layout of `preset` (or of explicit configs) and seeded random weights made on demand. */
export function randomModelSource(preset: RandomPreset | ModelConfigs, opts: RandomModelOptions = {}): ModelSource {
  let configs: ModelConfigs;
  if (preset === 'sd15') configs = sd15Configs();
  else if (preset && typeof preset === 'object' && 'unet' in preset) configs = preset;
  else throw new IdforgeError('E_ARGUMENT', `random model preset must be 'sd15' or a configs object, got ${JSON.stringify(preset)}`);
  const seed = opts.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new IdforgeError('E_ARGUMENT', `seed must be an integer, got ${String(seed)}`);
  const dtype = opts.dtype ?? 'F32';
  if (dtype !== 'F32' && dtype !== 'F16') throw new IdforgeError('E_ARGUMENT', `dtype must be 'F32' or 'F16', got ${String(dtype)}`);
  const name = opts.name ?? `random:${typeof preset === 'string' ? preset : 'custom'}`;
  const tokenizerDir = opts.tokenizerDir ?? defaultTokenizerDir();
  const layout = modelLayout(configs);
  const maps = {} as Record<Component, WeightMap>;
  for (const comp of ['unet', 'vae', 'text'] as const) {
    const map = new WeightMap(comp, name);
    for (const e of layout[comp]) {
      if (map.has(e.name)) throw new IdforgeError('E_INTERNAL', `random model: duplicate ${comp} tensor ${e.name}`);
      map.set(e.name, new RandomTensorRef(e.name, e.shape, dtype, name, e.init, tensorSeed(seed, `${comp}/${e.name}`)));
    }
    maps[comp] = map;
  }
  const source: ModelSource = {
    kind: 'diffusers',
    path: name,
    configs,
    tokenizerDir,
    weights: maps,
    warnings: [],
    close() {},
    [Symbol.dispose]() {},
  };
  return source;
}

/** Parameter count of a layout. */
export function paramCount(entries: readonly LayoutEntry[]): number {
  let n = 0;
  for (const e of entries) n += e.shape.reduce((a, b) => a * b, 1);
  return n;
}
