/**
 * Typed model configs, parsed from diffusers/transformers config.json files or derived from a
 * single-file checkpoint's tensor shapes. Field names are the camelCase forms of the diffusers
 * keys (`block_out_channels` -> `blockOutChannels`), so the JSON reads one-to-one.
 *
 * Defaults are Stable Diffusion 1.x's (not diffusers' class defaults: e.g. cross_attention_dim is
 * 768 here, 1280 in diffusers), because SD 1.x is the only family idforge runs.
 */
import { IdforgeError } from '../errors.js';
import { parseStrictJson, readRegularFile } from './files.js';
import { parseSchedulerConfig, type SchedulerConfig } from '../sched/config.js';
import { invalid } from '../validate.js';

/** Config and index files are kilobytes; a sharded index of a huge model a few megabytes. */
const MAX_JSON_BYTES = 64 * 2 ** 20;

export interface UNetConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  centerInputSample: boolean;
  flipSinToCos: boolean;
  freqShift: number;
  downBlockTypes: string[];
  upBlockTypes: string[];
  blockOutChannels: number[];
  layersPerBlock: number;
  downsamplePadding: number;
  midBlockScaleFactor: number;
  actFn: string;
  normNumGroups: number;
  normEps: number;
  crossAttentionDim: number;
  /** As stored. In SD 1.x configs this number is the head COUNT (a diffusers naming accident). */
  attentionHeadDim: number | number[];
  /** Heads per down block (up blocks use the reverse): resolved from num_attention_heads or attention_head_dim. */
  attentionHeads: number[];
  useLinearProjection: boolean;
  transformerLayersPerBlock: number;
  upcastAttention: boolean;
}

export interface VaeConfig {
  sampleSize: number;
  inChannels: number;
  outChannels: number;
  downBlockTypes: string[];
  upBlockTypes: string[];
  blockOutChannels: number[];
  layersPerBlock: number;
  actFn: string;
  latentChannels: number;
  normNumGroups: number;
  /** GroupNorm eps; not in config.json, fixed at 1e-6 in diffusers' AutoencoderKL. */
  normEps: number;
  scalingFactor: number;
  /**
   * Present for a tiny autoencoder (diffusers' AutoencoderTiny, TAESD): its own sizes. The fields
   * above then hold what every VAE has (channels, scalingFactor, and blockOutChannels whose length
   * gives the 2^(levels − 1) latent factor); the AutoencoderKL-only ones are unused.
   */
  tiny?: TinyVaeConfig;
}

/** diffusers' AutoencoderTiny (TAESD): conv + ReLU blocks, nearest 2x upsampling, no norms. */
export interface TinyVaeConfig {
  encoderBlockOutChannels: number[];
  decoderBlockOutChannels: number[];
  numEncoderBlocks: number[];
  numDecoderBlocks: number[];
  /** Only a decoder was given (the original taesd_decoder.safetensors alone): no image to image. */
  decoderOnly: boolean;
}

export interface TextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  maxPositionEmbeddings: number;
  hiddenAct: string;
  layerNormEps: number;
}

export interface ModelConfigs {
  unet: UNetConfig;
  vae: VaeConfig;
  text: TextConfig;
  scheduler: SchedulerConfig;
}

export type ConfigOverrides = {
  unet?: Partial<UNetConfig>;
  vae?: Partial<VaeConfig>;
  text?: Partial<TextConfig>;
  scheduler?: Partial<SchedulerConfig>;
};

/** SD 1.5's scheduler/scheduler_config.json, verbatim (the one tiny-sd ships too). */
export const SD15_SCHEDULER_JSON: Readonly<Record<string, unknown>> = Object.freeze({
  _class_name: 'PNDMScheduler',
  _diffusers_version: '0.6.0',
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  beta_start: 0.00085,
  num_train_timesteps: 1000,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  trained_betas: null,
  clip_sample: false,
});

export const SD15_UNET: Readonly<UNetConfig> = Object.freeze({
  sampleSize: 64,
  inChannels: 4,
  outChannels: 4,
  centerInputSample: false,
  flipSinToCos: true,
  freqShift: 0,
  downBlockTypes: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  upBlockTypes: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  blockOutChannels: [320, 640, 1280, 1280],
  layersPerBlock: 2,
  downsamplePadding: 1,
  midBlockScaleFactor: 1,
  actFn: 'silu',
  normNumGroups: 32,
  normEps: 1e-5,
  crossAttentionDim: 768,
  attentionHeadDim: 8,
  attentionHeads: [8, 8, 8, 8],
  useLinearProjection: false,
  transformerLayersPerBlock: 1,
  upcastAttention: false,
});

export const SD15_VAE: Readonly<VaeConfig> = Object.freeze({
  sampleSize: 512,
  inChannels: 3,
  outChannels: 3,
  downBlockTypes: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  upBlockTypes: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
  blockOutChannels: [128, 256, 512, 512],
  layersPerBlock: 2,
  actFn: 'silu',
  latentChannels: 4,
  normNumGroups: 32,
  normEps: 1e-6,
  scalingFactor: 0.18215,
});

/** CLIP ViT-L/14's text tower, as SD 1.x uses it. */
export const SD15_TEXT: Readonly<TextConfig> = Object.freeze({
  vocabSize: 49408,
  hiddenSize: 768,
  intermediateSize: 3072,
  numHiddenLayers: 12,
  numAttentionHeads: 12,
  maxPositionEmbeddings: 77,
  hiddenAct: 'quick_gelu',
  layerNormEps: 1e-5,
});

// ---------------------------------------------------------------------------------------------
// Field readers: each failure names the file and the key.

type Json = Record<string, unknown>;

class Reader {
  constructor(readonly json: Json, readonly file: string) {}
  private bad(key: string, want: string): never {
    throw new IdforgeError('E_MODEL_FORMAT', `${this.file}: "${key}" must be ${want}, got ${JSON.stringify(this.json[key])}`);
  }
  private get(key: string): unknown {
    const v = this.json[key];
    return v === null ? undefined : v;
  }
  num(key: string, def: number): number {
    const v = this.get(key);
    if (v === undefined) return def;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.bad(key, 'a finite number');
    return v;
  }
  int(key: string, def: number, min = 0): number {
    const v = this.get(key);
    if (v === undefined) return def;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) this.bad(key, `an integer >= ${min}`);
    return v;
  }
  bool(key: string, def: boolean): boolean {
    const v = this.get(key);
    if (v === undefined) return def;
    if (typeof v !== 'boolean') this.bad(key, 'true or false');
    return v;
  }
  str(key: string, def: string): string {
    const v = this.get(key);
    if (v === undefined) return def;
    if (typeof v !== 'string') this.bad(key, 'a string');
    return v;
  }
  strs(key: string, def: readonly string[]): string[] {
    const v = this.get(key);
    if (v === undefined) return [...def];
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) this.bad(key, 'an array of strings');
    return [...(v as string[])];
  }
  ints(key: string, def: readonly number[], min = 1): number[] {
    const v = this.get(key);
    if (v === undefined) return [...def];
    if (!Array.isArray(v) || v.length === 0 || !v.every((s) => Number.isSafeInteger(s) && s >= min)) this.bad(key, `a non-empty array of integers >= ${min}`);
    return [...(v as number[])];
  }
  intOrInts(key: string, def: number | readonly number[]): number | number[] {
    const v = this.get(key);
    if (v === undefined) return typeof def === 'number' ? def : [...def];
    if (Number.isSafeInteger(v) && (v as number) >= 1) return v as number;
    if (Array.isArray(v) && v.length > 0 && v.every((s) => Number.isSafeInteger(s) && s >= 1)) return [...(v as number[])];
    this.bad(key, 'a positive integer or an array of them');
  }
  numsOrNull(key: string): number[] | null {
    const v = this.get(key);
    if (v === undefined) return null;
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'number' && Number.isFinite(s))) this.bad(key, 'null or an array of numbers');
    return [...(v as number[])];
  }
}

/** Reads and parses a JSON object file: E_NOT_FOUND when absent, E_MODEL_FORMAT when not a JSON object. */
export function readJsonFile(file: string): Json {
  // A regular file of sane size only (a FIFO would hang the read); duplicate keys are refused.
  const bytes = readRegularFile(file, MAX_JSON_BYTES, 'JSON file');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: not valid UTF-8`);
  }
  const json = parseStrictJson(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text, file);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: not a JSON object`);
  }
  return json as Json;
}

function resolveHeads(headDim: number | number[], numHeads: number | number[] | undefined, blocks: number, file: string): number[] {
  // diffusers: `num_attention_heads = num_attention_heads or attention_head_dim` (SD 1.x stores the
  // head count under attention_head_dim).
  const h = numHeads ?? headDim;
  if (typeof h === 'number') return new Array<number>(blocks).fill(h);
  if (h.length !== blocks) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: attention heads ${JSON.stringify(h)} must have one entry per block (${blocks})`);
  }
  return [...h];
}

export function parseUNetConfig(json: Json, file: string): UNetConfig {
  const r = new Reader(json, file);
  const d = SD15_UNET;
  const downBlockTypes = r.strs('down_block_types', d.downBlockTypes);
  const upBlockTypes = r.strs('up_block_types', d.upBlockTypes);
  const blockOutChannels = r.ints('block_out_channels', d.blockOutChannels);
  if (downBlockTypes.length !== blockOutChannels.length || upBlockTypes.length !== blockOutChannels.length) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: down_block_types, up_block_types and block_out_channels must have the same length`);
  }
  if (typeof json.transformer_layers_per_block === 'object' && json.transformer_layers_per_block !== null) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: per-block transformer_layers_per_block (SDXL-style) is not supported`);
  }
  const attentionHeadDim = r.intOrInts('attention_head_dim', d.attentionHeadDim);
  const numHeads = json.num_attention_heads == null ? undefined : r.intOrInts('num_attention_heads', 8);
  return {
    sampleSize: r.int('sample_size', d.sampleSize, 1),
    inChannels: r.int('in_channels', d.inChannels, 1),
    outChannels: r.int('out_channels', d.outChannels, 1),
    centerInputSample: r.bool('center_input_sample', d.centerInputSample),
    flipSinToCos: r.bool('flip_sin_to_cos', d.flipSinToCos),
    freqShift: r.num('freq_shift', d.freqShift),
    downBlockTypes,
    upBlockTypes,
    blockOutChannels,
    layersPerBlock: r.int('layers_per_block', d.layersPerBlock, 1),
    downsamplePadding: r.int('downsample_padding', d.downsamplePadding),
    midBlockScaleFactor: r.num('mid_block_scale_factor', d.midBlockScaleFactor),
    actFn: r.str('act_fn', d.actFn),
    normNumGroups: r.int('norm_num_groups', d.normNumGroups, 1),
    normEps: r.num('norm_eps', d.normEps),
    crossAttentionDim: r.int('cross_attention_dim', d.crossAttentionDim, 1),
    attentionHeadDim,
    attentionHeads: resolveHeads(attentionHeadDim, numHeads, blockOutChannels.length, file),
    useLinearProjection: r.bool('use_linear_projection', d.useLinearProjection),
    transformerLayersPerBlock: r.int('transformer_layers_per_block', d.transformerLayersPerBlock, 1),
    upcastAttention: r.bool('upcast_attention', d.upcastAttention),
  };
}

export function parseVaeConfig(json: Json, file: string): VaeConfig {
  const r = new Reader(json, file);
  const d = SD15_VAE;
  const blockOutChannels = r.ints('block_out_channels', d.blockOutChannels);
  const downBlockTypes = r.strs('down_block_types', d.downBlockTypes.slice(0, blockOutChannels.length));
  const upBlockTypes = r.strs('up_block_types', d.upBlockTypes.slice(0, blockOutChannels.length));
  if (downBlockTypes.length !== blockOutChannels.length || upBlockTypes.length !== blockOutChannels.length) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: down_block_types, up_block_types and block_out_channels must have the same length`);
  }
  return {
    sampleSize: r.int('sample_size', d.sampleSize, 1),
    inChannels: r.int('in_channels', d.inChannels, 1),
    outChannels: r.int('out_channels', d.outChannels, 1),
    downBlockTypes,
    upBlockTypes,
    blockOutChannels,
    layersPerBlock: r.int('layers_per_block', d.layersPerBlock, 1),
    actFn: r.str('act_fn', d.actFn),
    latentChannels: r.int('latent_channels', d.latentChannels, 1),
    normNumGroups: r.int('norm_num_groups', d.normNumGroups, 1),
    normEps: d.normEps,
    scalingFactor: r.num('scaling_factor', d.scalingFactor),
  };
}

/**
 * An AutoencoderTiny config.json (`_class_name` "AutoencoderTiny") as a VaeConfig with `tiny` set.
 * ReLU activations, nearest 2x upsampling and the fixed tanh(z/3)·3 input clamp of diffusers'
 * DecoderTiny are the only kind there is: anything else is refused.
 */
export function parseTinyVaeConfig(json: Json, file: string, decoderOnly = false): VaeConfig {
  const r = new Reader(json, file);
  const enc = r.ints('encoder_block_out_channels', [64, 64, 64, 64]);
  const dec = r.ints('decoder_block_out_channels', [64, 64, 64, 64]);
  const numEnc = r.ints('num_encoder_blocks', [1, 3, 3, 3]);
  const numDec = r.ints('num_decoder_blocks', [3, 3, 3, 1]);
  if (enc.length !== numEnc.length || dec.length !== numDec.length || enc.length !== dec.length)
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: encoder/decoder block_out_channels and num_*_blocks must all have one length`);
  if (r.str('act_fn', 'relu') !== 'relu') throw new IdforgeError('E_MODEL_FORMAT', `${file}: act_fn ${JSON.stringify(json.act_fn)} is not supported (AutoencoderTiny uses relu)`);
  if (r.num('upsampling_scaling_factor', 2) !== 2) throw new IdforgeError('E_MODEL_FORMAT', `${file}: upsampling_scaling_factor must be 2, got ${JSON.stringify(json.upsampling_scaling_factor)}`);
  if (r.str('upsample_fn', 'nearest') !== 'nearest') throw new IdforgeError('E_MODEL_FORMAT', `${file}: upsample_fn must be "nearest", got ${JSON.stringify(json.upsample_fn)}`);
  const levels = dec.length;
  return {
    ...SD15_VAE,
    inChannels: r.int('in_channels', 3, 1),
    outChannels: r.int('out_channels', 3, 1),
    latentChannels: r.int('latent_channels', 4, 1),
    scalingFactor: r.num('scaling_factor', 1),
    blockOutChannels: [...dec].reverse(),
    downBlockTypes: new Array<string>(levels).fill('DownEncoderBlock2D'),
    upBlockTypes: new Array<string>(levels).fill('UpDecoderBlock2D'),
    normNumGroups: 1,
    actFn: 'relu',
    tiny: { encoderBlockOutChannels: enc, decoderBlockOutChannels: dec, numEncoderBlocks: numEnc, numDecoderBlocks: numDec, decoderOnly },
  };
}

export function parseTextConfig(json: Json, file: string): TextConfig {
  // CLIPTextConfig may arrive nested inside a full CLIPConfig.
  const src = json.text_config && typeof json.text_config === 'object' && !Array.isArray(json.text_config) ? (json.text_config as Json) : json;
  const r = new Reader(src, file);
  const d = SD15_TEXT;
  const hiddenSize = r.int('hidden_size', d.hiddenSize, 1);
  const numAttentionHeads = r.int('num_attention_heads', d.numAttentionHeads, 1);
  if (hiddenSize % numAttentionHeads !== 0) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numAttentionHeads}`);
  }
  return {
    vocabSize: r.int('vocab_size', d.vocabSize, 1),
    hiddenSize,
    intermediateSize: r.int('intermediate_size', d.intermediateSize, 1),
    numHiddenLayers: r.int('num_hidden_layers', d.numHiddenLayers, 1),
    numAttentionHeads,
    maxPositionEmbeddings: r.int('max_position_embeddings', d.maxPositionEmbeddings, 1),
    hiddenAct: r.str('hidden_act', d.hiddenAct),
    layerNormEps: r.num('layer_norm_eps', d.layerNormEps),
  };
}

export function sd15Scheduler(): SchedulerConfig {
  return parseSchedulerConfig({ ...SD15_SCHEDULER_JSON }, '<SD 1.5 default scheduler config>');
}

/**
 * GroupNorm group count for a single-file checkpoint, which does not store it. Rule: 32 (SD 1.x)
 * when the narrowest block has at least 128 channels, else narrowest/4 (so tiny test models with
 * 32-wide blocks get 8); then lowered until it divides every block width. Pin it with
 * configOverrides when a checkpoint was trained otherwise.
 */
export function guessNormGroups(blockOutChannels: readonly number[]): number {
  const min = Math.min(...blockOutChannels);
  let g = min >= 128 ? 32 : Math.max(1, Math.floor(min / 4));
  while (g > 1 && blockOutChannels.some((c) => c % g !== 0)) g--;
  return g;
}

/** Text attention heads for a single file (not stored): CLIP uses 64-wide heads; narrower models 8-wide. */
export function guessTextHeads(hidden: number): number {
  if (hidden % 64 === 0) return hidden / 64;
  if (hidden % 8 === 0) return hidden / 8;
  return 1;
}

const KNOWN: Record<keyof ConfigOverrides, readonly string[]> = {
  unet: Object.keys(SD15_UNET),
  vae: Object.keys(SD15_VAE),
  text: Object.keys(SD15_TEXT),
  scheduler: Object.keys(sd15Scheduler()),
};

function overrideFits(key: string, cur: unknown, v: unknown): boolean {
  const isNum = (x: unknown) => typeof x === 'number' && Number.isFinite(x);
  const isNums = (x: unknown) => Array.isArray(x) && x.every(isNum);
  if (key === 'attentionHeadDim') return isNum(v) || isNums(v);
  if (key === 'trainedBetas') return v === null || isNums(v);
  if (key === 'timestepSpacing') return v === null || typeof v === 'string';
  if (key === 'originalInferenceSteps' || key === 'timestepScaling') return v === null || isNum(v);
  if (Array.isArray(cur)) return Array.isArray(v) && v.every((x) => typeof x === typeof cur[0]) && (typeof cur[0] !== 'number' || isNums(v));
  if (typeof cur === 'number') return isNum(v);
  return typeof v === typeof cur;
}

/** Applies user overrides over parsed/derived configs; unknown components or fields are E_ARGUMENT. */
export function applyOverrides(configs: ModelConfigs, overrides: ConfigOverrides | undefined): ModelConfigs {
  if (overrides === undefined) return configs;
  if (overrides === null || typeof overrides !== 'object') throw invalid('configOverrides', 'an object', overrides);
  const out: ModelConfigs = { unet: { ...configs.unet }, vae: { ...configs.vae }, text: { ...configs.text }, scheduler: { ...configs.scheduler } };
  for (const [comp, o] of Object.entries(overrides)) {
    if (!(comp in KNOWN)) throw invalid(`configOverrides.${comp}`, 'left out: the components are unet, vae, text and scheduler');
    if (o === undefined) continue;
    if (o === null || typeof o !== 'object') throw invalid(`configOverrides.${comp}`, 'an object', o);
    const known = KNOWN[comp as keyof ConfigOverrides];
    for (const [k, v] of Object.entries(o as Record<string, unknown>)) {
      if (!known.includes(k)) throw invalid(`configOverrides.${comp}.${k}`, `left out: ${comp} has no such field (known: ${known.join(', ')})`);
      const cur = (out[comp as keyof ModelConfigs] as unknown as Record<string, unknown>)[k];
      if (!overrideFits(k, cur, v)) {
        throw invalid(`configOverrides.${comp}.${k}`, `a value like ${JSON.stringify(cur)}`, v);
      }
      (out[comp as keyof ModelConfigs] as unknown as Record<string, unknown>)[k] = Array.isArray(v) ? [...v] : v;
    }
  }
  // Keep the resolved head list consistent when only attentionHeadDim was pinned.
  const u = overrides.unet;
  if (u && u.attentionHeadDim !== undefined && u.attentionHeads === undefined) {
    out.unet.attentionHeads = resolveHeads(out.unet.attentionHeadDim, undefined, out.unet.blockOutChannels.length, 'configOverrides.unet');
  }
  return out;
}
