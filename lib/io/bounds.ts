/**
 * Sane bounds on every model config value, checked before any layout or graph is built: a
 * config.json with `layers_per_block: 1e5` or a zero VAE scaling factor is refused here with a
 * typed error naming the component, the field and the value, instead of exhausting the heap or
 * producing NaN images. The bounds are generous (several times SD 1.x's sizes); a model past them
 * is not one idforge can run anyway. (The weight-memory estimate built on them: layout.ts.)
 */
import { IdforgeError } from '../errors.js';
import type { SchedulerConfig } from '../sched/config.js';
import type { ModelConfigs, TextConfig, UNetConfig, VaeConfig } from './configs.js';
import { invalid, shown, text } from '../validate.js';

/** camelCase field → the config.json key it came from (what a user can find in the file). */
const snake = (k: string): string => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

class Check {
  constructor(readonly what: string, readonly cfg: object) {}
  fail(key: string, want: string, value: unknown = (this.cfg as Record<string, unknown>)[key]): never {
    throw new IdforgeError('E_MODEL_FORMAT', `${this.what}: ${snake(key)} ${JSON.stringify(value)} ${want}`);
  }
  private v(key: string): unknown {
    return (this.cfg as Record<string, unknown>)[key];
  }
  int(key: string, lo: number, hi: number): number {
    const v = this.v(key);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi) this.fail(key, `is outside ${lo}..${hi}`);
    return v;
  }
  ints(key: string, lo: number, hi: number, maxLen: number): number[] {
    const v = this.v(key);
    if (!Array.isArray(v) || v.length < 1 || v.length > maxLen) this.fail(key, `must list 1..${maxLen} values`);
    for (const x of v) if (!Number.isSafeInteger(x) || x < lo || x > hi) this.fail(key, `holds ${JSON.stringify(x)}, outside ${lo}..${hi}`);
    return v as number[];
  }
  /** A finite number in (lo, hi] (lo exclusive: eps and scaling factors must be > 0). */
  positive(key: string, hi: number): number {
    const v = this.v(key);
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > hi) this.fail(key, `must be a number > 0 and ≤ ${hi}`);
    return v;
  }
  finite(key: string, lo: number, hi: number): void {
    const v = this.v(key);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi) this.fail(key, `must be a number in [${lo}, ${hi}]`);
  }
  oneOf(key: string, allowed: readonly string[]): void {
    const v = this.v(key);
    if (typeof v !== 'string' || !allowed.includes(v)) this.fail(key, `is not supported (idforge runs: ${allowed.join(', ')})`);
  }
  each(key: string, allowed: readonly string[]): void {
    const v = this.v(key) as unknown[];
    for (const x of v) if (typeof x !== 'string' || !allowed.includes(x)) this.fail(key, `holds ${JSON.stringify(x)}, not one of ${allowed.join(', ')}`);
  }
  divides(groupsKey: string, groups: number, widthsKey: string, widths: number[]): void {
    for (const c of widths) if (c % groups) this.fail(groupsKey, `does not divide ${snake(widthsKey)} entry ${c}`);
  }
}

/** Activations the graphs implement ("swish" is diffusers' other name for SiLU). */
export const UNET_ACTIVATIONS = ['silu', 'swish'] as const;
export const TEXT_ACTIVATIONS = ['quick_gelu', 'gelu'] as const;

export const LIMITS = {
  levels: 8, width: 8192, layersPerBlock: 16, transformerLayers: 32, channels: 64, heads: 256, sampleSize: 4096,
  textLayers: 128, vocab: 1_000_000, textWidth: 16384, ffWidth: 65536, positions: 4096, trainTimesteps: 100_000,
} as const;

export function checkUNetConfig(cfg: UNetConfig, what = 'unet config'): void {
  const c = new Check(what, cfg);
  const widths = c.ints('blockOutChannels', 1, LIMITS.width, LIMITS.levels);
  c.int('layersPerBlock', 1, LIMITS.layersPerBlock);
  c.int('transformerLayersPerBlock', 1, LIMITS.transformerLayers);
  c.int('inChannels', 1, LIMITS.channels);
  c.int('outChannels', 1, LIMITS.channels);
  c.int('crossAttentionDim', 1, LIMITS.width);
  c.int('sampleSize', 1, LIMITS.sampleSize);
  c.int('downsamplePadding', 0, 2);
  const groups = c.int('normNumGroups', 1, 1024);
  c.divides('normNumGroups', groups, 'blockOutChannels', widths);
  c.positive('normEps', 1);
  c.finite('freqShift', -1e3, 1e3);
  c.positive('midBlockScaleFactor', 1e3);
  c.oneOf('actFn', UNET_ACTIVATIONS);
  c.each('downBlockTypes', ['CrossAttnDownBlock2D', 'DownBlock2D']);
  c.each('upBlockTypes', ['CrossAttnUpBlock2D', 'UpBlock2D']);
  const heads = c.ints('attentionHeads', 1, LIMITS.heads, LIMITS.levels);
  if (heads.length !== widths.length) c.fail('attentionHeads', `must have one entry per block (${widths.length})`);
  // Up blocks use the heads in reverse; every attention block's width must split into its heads.
  widths.forEach((w, i) => {
    if (w % heads[i]! || w % heads[heads.length - 1 - i]!) c.fail('attentionHeads', `do not divide block_out_channels entry ${w}`, heads);
  });
}

export function checkVaeConfig(cfg: VaeConfig, what = 'vae config'): void {
  if (cfg.tiny) return checkTinyVaeConfig(cfg, what);
  const c = new Check(what, cfg);
  const widths = c.ints('blockOutChannels', 1, LIMITS.width, LIMITS.levels);
  c.int('layersPerBlock', 1, LIMITS.layersPerBlock);
  c.int('inChannels', 1, LIMITS.channels);
  c.int('outChannels', 1, LIMITS.channels);
  c.int('latentChannels', 1, LIMITS.channels);
  c.int('sampleSize', 1, 4 * LIMITS.sampleSize);
  const groups = c.int('normNumGroups', 1, 1024);
  c.divides('normNumGroups', groups, 'blockOutChannels', widths);
  c.positive('normEps', 1);
  // The latents are divided by it before decoding: 0 or a denormal gives Inf, and so NaN pixels.
  c.positive('scalingFactor', 1e3);
  if (cfg.scalingFactor < 1e-6) c.fail('scalingFactor', 'is too small (latents / scaling_factor overflows)');
  c.oneOf('actFn', UNET_ACTIVATIONS);
  c.each('downBlockTypes', ['DownEncoderBlock2D']);
  c.each('upBlockTypes', ['UpDecoderBlock2D']);
}

function checkTinyVaeConfig(cfg: VaeConfig, what: string): void {
  const c = new Check(what, cfg);
  c.int('inChannels', 1, LIMITS.channels);
  c.int('outChannels', 1, LIMITS.channels);
  c.int('latentChannels', 1, LIMITS.channels);
  c.positive('scalingFactor', 1e3);
  if (cfg.scalingFactor < 1e-6) c.fail('scalingFactor', 'is too small (latents / scaling_factor overflows)');
  const t = new Check(`${what} (AutoencoderTiny)`, cfg.tiny!);
  t.ints('encoderBlockOutChannels', 1, LIMITS.width, LIMITS.levels);
  t.ints('decoderBlockOutChannels', 1, LIMITS.width, LIMITS.levels);
  t.ints('numEncoderBlocks', 1, LIMITS.layersPerBlock, LIMITS.levels);
  t.ints('numDecoderBlocks', 1, LIMITS.layersPerBlock, LIMITS.levels);
}

export function checkTextConfig(cfg: TextConfig, what = 'text_encoder config'): void {
  const c = new Check(what, cfg);
  c.int('vocabSize', 1, LIMITS.vocab);
  const hidden = c.int('hiddenSize', 1, LIMITS.textWidth);
  c.int('intermediateSize', 1, LIMITS.ffWidth);
  c.int('numHiddenLayers', 1, LIMITS.textLayers);
  const heads = c.int('numAttentionHeads', 1, LIMITS.heads);
  if (hidden % heads) c.fail('numAttentionHeads', `does not divide hidden_size ${hidden}`);
  // Prompts are always 77 tokens (CLIP's context): fewer positions cannot encode one.
  c.int('maxPositionEmbeddings', 77, LIMITS.positions);
  c.positive('layerNormEps', 1);
  c.oneOf('hiddenAct', TEXT_ACTIVATIONS);
}

export function checkSchedulerConfig(cfg: SchedulerConfig, what = 'scheduler config'): void {
  const c = new Check(what, cfg);
  const n = c.int('numTrainTimesteps', 1, LIMITS.trainTimesteps);
  c.positive('betaStart', 1);
  c.positive('betaEnd', 1);
  if (cfg.betaStart >= 1 || cfg.betaEnd >= 1) c.fail('betaEnd', 'must be < 1 (a beta of 1 leaves no signal)', [cfg.betaStart, cfg.betaEnd]);
  if (cfg.trainedBetas) {
    if (cfg.trainedBetas.length !== n) c.fail('trainedBetas', `must have num_train_timesteps (${n}) entries`, `[${cfg.trainedBetas.length} values]`);
    for (const b of cfg.trainedBetas) if (!(b > 0 && b < 1)) c.fail('trainedBetas', 'must all be in (0, 1)', b);
  }
}

/** Every bound above (the weight-memory estimate is layout.ts's checkWeightMemory). Throws E_MODEL_FORMAT. */
export function checkConfigs(configs: ModelConfigs, files?: Record<'unet' | 'vae' | 'text' | 'scheduler', string>): void {
  checkUNetConfig(configs.unet, files ? `${files.unet} (unet)` : undefined);
  checkVaeConfig(configs.vae, files ? `${files.vae} (vae)` : undefined);
  checkTextConfig(configs.text, files ? `${files.text} (text encoder)` : undefined);
  checkSchedulerConfig(configs.scheduler, files ? `${files.scheduler} (scheduler)` : undefined);
}

// ---------------------------------------------------------------------------------------------
// Argument bounds of a run (used by the options validation)

/** Longer prompts are refused before tokenizing (they would be truncated to 75 tokens anyway). */
export const MAX_PROMPT_CHARS = 20_000;
/** Guidance scales past this overflow the guided noise prediction (u + s·(c − u)) in float16. */
export const MAX_GUIDANCE = 100;

export function checkPrompt(p: unknown, name: string): string {
  const s = text(p, name);
  if (s.length > MAX_PROMPT_CHARS) throw invalid(name, `at most ${MAX_PROMPT_CHARS} characters (only the first 75 tokens are used)`, shown(`${s.length} characters`));
  return s;
}
