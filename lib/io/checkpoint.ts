/**
 * Opens a Stable Diffusion 1.x model from local files — a diffusers folder or an original
 * CompVis/LDM single `.safetensors` file — and presents both the same way: typed configs, a
 * tokenizer folder, and per-component maps from internal tensor names (current diffusers naming)
 * to lazily read tensors. Nothing is read beyond headers and configs until a tensor is asked for.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdforgeError } from '../errors.js';
import {
  applyOverrides, guessNormGroups, guessTextHeads, parseTextConfig, parseTinyVaeConfig, parseUNetConfig,
  parseVaeConfig, readJsonFile, sd15Scheduler, SD15_TEXT, SD15_UNET, SD15_VAE,
  type ConfigOverrides, type ModelConfigs, type TextConfig, type UNetConfig, type VaeConfig,
} from './configs.js';
import { checkConfigs } from './bounds.js';
import { entryExists, fileError, openRegularFile } from './files.js';
import {
  convertLdmText, convertLdmUnet, convertLdmVae, isDroppedBuffer, isVaeAttentionProjection, LDM_TEXT_PREFIX,
  LDM_UNET_PREFIX, LDM_VAE_PREFIX, modernVaeName, type KeyMapping,
} from './ldm.js';
import { isPickleName, pickleRefusal, SafetensorsFile, type StDType } from './safetensors.js';
import { parseSchedulerConfig, type SchedulerConfig } from '../sched/config.js';
import { ORIGINAL_TAESD, originalTaesdName } from './taesd.js';
import { invalid, options, text } from '../validate.js';

export type Component = 'unet' | 'vae' | 'text';

export interface TensorRef {
  /** Internal name (current diffusers naming within the component). */
  name: string;
  /** Internal shape, e.g. [C, C] for a VAE attention projection stored as [C, C, 1, 1]. */
  shape: number[];
  dtype: StDType;
  /** The file holding the tensor, and its name there. */
  file: string;
  key: string;
  /** Values as float32, row-major in `shape` (reshaping never moves data). */
  readFloat32(): Float32Array;
  /** The stored bytes, in the stored dtype. */
  readBytes(): Buffer;
}

/** A component's weights; knows where they came from so a missing name can say so. */
export class WeightMap extends Map<string, TensorRef> {
  constructor(readonly component: Component, readonly source: string) {
    super();
  }
}

/** The tensor `name` of `component`, or E_MODEL_FORMAT naming the component, key and source. */
export function requireWeight(map: Map<string, TensorRef>, name: string, component: string): TensorRef {
  const t = map.get(name);
  if (t) return t;
  const from = map instanceof WeightMap ? ` (loaded from ${map.source})` : '';
  throw new IdforgeError('E_MODEL_FORMAT', `${component} weight "${name}" is missing from the checkpoint${from}`);
}

export interface ModelSource extends Disposable {
  kind: 'diffusers' | 'ldm';
  path: string;
  configs: { unet: UNetConfig; vae: VaeConfig; text: TextConfig; scheduler: SchedulerConfig };
  /** Folder with vocab.json + merges.txt. */
  tokenizerDir: string;
  weights: { unet: Map<string, TensorRef>; vae: Map<string, TensorRef>; text: Map<string, TensorRef> };
  warnings: string[];
  close(): void;
}

export interface OpenModelOptions {
  /** Prefer `*.fp16.safetensors` weights in a diffusers folder. */
  variant?: 'fp16';
  /** Pins config fields (e.g. norm groups a single file cannot state). */
  configOverrides?: ConfigOverrides;
  /** Another VAE in place of the model's (openVae: an AutoencoderKL or AutoencoderTiny folder, or the original TAESD files). */
  vae?: string;
}

/** Where the package ships SD 1.x's CLIP tokenizer (same relative path from lib/io and dist/io). */
export const BUNDLED_TOKENIZER_DIR = fileURLToPath(new URL('../../assets/clip-tokenizer/', import.meta.url));

class FileTensorRef implements TensorRef {
  readonly file: string;
  constructor(
    readonly name: string,
    readonly shape: number[],
    readonly dtype: StDType,
    private readonly st: SafetensorsFile,
    readonly key: string,
  ) {
    this.file = st.path;
  }
  readFloat32(): Float32Array {
    return this.st.readFloat32(this.key);
  }
  readBytes(): Buffer {
    return this.st.readBytes(this.key);
  }
}

function makeRef(name: string, st: SafetensorsFile, key: string, squeeze1x1: boolean): TensorRef {
  const info = st.info(key);
  let shape = info.shape;
  if (squeeze1x1 && shape.length === 4) {
    if (shape[2] !== 1 || shape[3] !== 1) {
      throw new IdforgeError('E_MODEL_FORMAT', `${st.path}: tensor "${key}" has shape ${JSON.stringify(shape)}; expected [C, C, 1, 1] or [C, C]`);
    }
    shape = [shape[0]!, shape[1]!];
  }
  return new FileTensorRef(name, [...shape], info.dtype, st, key);
}

/** TensorRefs over every tensor of an open safetensors file, under its own names (the ID encoder, CLIP). */
export function safetensorsRefs(st: SafetensorsFile): Map<string, TensorRef> {
  return new Map(st.names().map((n) => [n, makeRef(n, st, n, false)]));
}

class Source implements ModelSource {
  private closed = false;
  constructor(
    readonly kind: 'diffusers' | 'ldm',
    readonly path: string,
    readonly configs: ModelConfigs,
    readonly tokenizerDir: string,
    readonly weights: { unet: WeightMap; vae: WeightMap; text: WeightMap },
    readonly warnings: string[],
    private readonly files: SafetensorsFile[],
  ) {}
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const f of this.files) f.close();
  }
  /** This model with another VAE in place of its own (which is never read): takes over both sources' files. */
  withVae(v: VaeSource): Source {
    this.closed = true; // the files now belong to the new source
    const note = `${this.path}: using the VAE ${v.path} (${v.config.tiny ? 'AutoencoderTiny' : 'AutoencoderKL'}) in place of the model's`;
    return new Source(this.kind, this.path, { ...this.configs, vae: v.config }, this.tokenizerDir, { ...this.weights, vae: v.weights },
      [...this.warnings, note, ...v.warnings], [...this.files, ...v.files]);
  }
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Opens a diffusers folder or an LDM single `.safetensors` file. */
export function openModel(p: string, opts: OpenModelOptions = {}): ModelSource {
  text(p, 'model path', { nonEmpty: true });
  options(opts, 'options', 'openModel');
  if (opts.variant !== undefined && opts.variant !== 'fp16') throw invalid('variant', "'fp16' or left out", opts.variant, { where: 'openModel' });
  const src = openModelFiles(p, opts);
  if (opts.vae === undefined) return src;
  try {
    return src.withVae(openVae(opts.vae, opts.variant ? { variant: opts.variant } : {}));
  } catch (e) {
    src.close();
    throw e;
  }
}

function openModelFiles(p: string, opts: OpenModelOptions): Source {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (e) {
    throw fileError(p, e, 'file or folder');
  }
  if (st.isDirectory()) {
    if (fs.existsSync(path.join(p, 'model_index.json')) || isDir(path.join(p, 'unet'))) return openDiffusers(p, opts);
    throw new IdforgeError(
      'E_MODEL_FORMAT',
      `${p}: not a model folder: expected a diffusers pipeline folder (model_index.json with unet/, vae/, ` +
        `text_encoder/, tokenizer/, scheduler/) or pass a single-file .safetensors checkpoint`,
    );
  }
  if (isPickleName(p)) throw pickleRefusal(p);
  return openLdm(p, opts);
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function hasTokenizer(dir: string): boolean {
  const files = [path.join(dir, 'vocab.json'), path.join(dir, 'merges.txt')];
  if (!files.every(entryExists)) return false;
  // Present: then they must be readable regular files (a FIFO here would hang the tokenizer's read).
  for (const f of files) fs.closeSync(openRegularFile(f, 'tokenizer file').fd);
  return true;
}

function bundledTokenizer(model: string): string {
  if (!hasTokenizer(BUNDLED_TOKENIZER_DIR)) {
    throw new IdforgeError('E_NOT_FOUND', `${model}: no tokenizer/ folder next to the model and the bundled CLIP tokenizer is missing from ${BUNDLED_TOKENIZER_DIR}`);
  }
  return BUNDLED_TOKENIZER_DIR;
}

// ---------------------------------------------------------------------------------------------
// Diffusers folders

const WEIGHT_BASE: Record<Component, { folder: string; base: string }> = {
  unet: { folder: 'unet', base: 'diffusion_pytorch_model' },
  vae: { folder: 'vae', base: 'diffusion_pytorch_model' },
  text: { folder: 'text_encoder', base: 'model' },
};

/** The safetensors files holding one component's weights (one, or the shards of an index). */
function pickWeightFiles(dir: string, comp: Component, variant: 'fp16' | undefined, warnings: string[]): string[] {
  const { base } = WEIGHT_BASE[comp];
  const cand = (v: boolean) => [
    { file: path.join(dir, v ? `${base}.fp16.safetensors` : `${base}.safetensors`), index: false },
    ...(v
      ? [path.join(dir, `${base}.safetensors.index.fp16.json`), path.join(dir, `${base}.fp16.safetensors.index.json`)]
      : [path.join(dir, `${base}.safetensors.index.json`)]
    ).map((file) => ({ file, index: true })),
  ];
  const order = variant === 'fp16' ? [true, false] : [false, true];
  for (const v of order) {
    for (const c of cand(v)) {
      // lstat, not existsSync: a broken or looping link is there (and opening it says what is wrong).
      if (!entryExists(c.file)) continue;
      if (variant === 'fp16' && !v) warnings.push(`${dir}: no fp16 variant; using ${path.basename(c.file)}`);
      return c.index ? shardsOf(c.file) : [c.file];
    }
  }
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(dir);
  } catch {
    /* reported below */
  }
  const pickle = entries.find((f) => isPickleName(f));
  if (pickle) throw pickleRefusal(path.join(dir, pickle));
  const other = entries.find((f) => f.endsWith('.safetensors'));
  if (other) {
    throw new IdforgeError('E_MODEL_FORMAT', `${dir}: expected ${base}.safetensors (or ${base}.fp16.safetensors), found only ${other}`);
  }
  throw new IdforgeError('E_NOT_FOUND', `${dir}: no weights (${base}.safetensors)`);
}

function shardsOf(indexFile: string): string[] {
  const json = readJsonFile(indexFile);
  const wm = json.weight_map;
  if (wm === null || typeof wm !== 'object' || Array.isArray(wm)) {
    throw new IdforgeError('E_MODEL_FORMAT', `${indexFile}: "weight_map" must be an object of key -> shard file`);
  }
  const files = new Set<string>();
  for (const [k, v] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof v !== 'string' || v.includes('/') || v.includes('\\') || v === '..' || !v.endsWith('.safetensors')) {
      throw new IdforgeError('E_MODEL_FORMAT', `${indexFile}: weight_map["${k}"] must name a .safetensors file in the same folder, got ${JSON.stringify(v)}`);
    }
    files.add(path.join(path.dirname(indexFile), v));
  }
  if (files.size === 0) throw new IdforgeError('E_MODEL_FORMAT', `${indexFile}: empty weight_map`);
  return [...files];
}

function openDiffusers(dir: string, opts: OpenModelOptions): Source {
  const warnings: string[] = [];
  const indexFile = path.join(dir, 'model_index.json');
  if (fs.existsSync(indexFile)) {
    const index = readJsonFile(indexFile);
    if ('text_encoder_2' in index) {
      throw new IdforgeError('E_MODEL_FORMAT', `${indexFile}: a second text encoder (SDXL-style pipeline) is not supported; idforge runs Stable Diffusion 1.x`);
    }
  }
  const compDir = (comp: Component | 'scheduler' | 'tokenizer') => {
    const d = path.join(dir, comp === 'text' ? 'text_encoder' : comp);
    if (!isDir(d)) throw new IdforgeError('E_NOT_FOUND', `${dir}: no ${path.basename(d)}/ folder (a diffusers SD 1.x folder has unet/, vae/, text_encoder/, tokenizer/, scheduler/)`);
    return d;
  };
  const unetDir = compDir('unet');
  const vaeDir = compDir('vae');
  const textDir = compDir('text');
  const unetCfg = path.join(unetDir, 'config.json');
  const vaeCfg = path.join(vaeDir, 'config.json');
  const textCfg = path.join(textDir, 'config.json');
  let scheduler: SchedulerConfig;
  const schedFile = path.join(dir, 'scheduler', 'scheduler_config.json');
  if (fs.existsSync(schedFile)) scheduler = parseSchedulerConfig(readJsonFile(schedFile), schedFile);
  else {
    scheduler = sd15Scheduler();
    warnings.push(`${dir}: no scheduler/scheduler_config.json; using SD 1.5's scheduler config`);
  }
  const configs = applyOverrides(
    {
      unet: parseUNetConfig(readJsonFile(unetCfg), unetCfg),
      vae: parseVaeConfig(readJsonFile(vaeCfg), vaeCfg),
      text: parseTextConfig(readJsonFile(textCfg), textCfg),
      scheduler,
    },
    opts.configOverrides,
  );
  checkConfigs(configs, { unet: unetCfg, vae: vaeCfg, text: textCfg, scheduler: schedFile });

  let tokenizerDir = path.join(dir, 'tokenizer');
  if (!hasTokenizer(tokenizerDir)) {
    tokenizerDir = bundledTokenizer(dir);
    warnings.push(`${dir}: no tokenizer/vocab.json + merges.txt; using the bundled CLIP tokenizer`);
  }

  const opened: SafetensorsFile[] = [];
  try {
    const load = (comp: Component, cdir: string) => loadComponent(comp, cdir, opts.variant, warnings, opened);
    const weights = { unet: load('unet', unetDir), vae: load('vae', vaeDir), text: load('text', textDir) };
    return new Source('diffusers', dir, configs, tokenizerDir, weights, warnings, opened);
  } catch (e) {
    for (const f of opened) f.close();
    throw e;
  }
}

/**
 * One component's weights from a diffusers component folder (the files it opens are pushed onto
 * `opened`, for the caller to close). `tiny`: an AutoencoderTiny's names are its own (no VAE renaming).
 */
function loadComponent(comp: Component, cdir: string, variant: 'fp16' | undefined, warnings: string[], opened: SafetensorsFile[], tiny = false): WeightMap {
  const files = pickWeightFiles(cdir, comp, variant, warnings);
  const map = new WeightMap(comp, files.length === 1 ? files[0]! : cdir);
  for (const file of files) {
    const st = SafetensorsFile.open(file);
    opened.push(st);
    for (const key of st.names()) {
      if (isDroppedBuffer(key)) continue;
      const name = comp === 'vae' && !tiny ? modernVaeName(key) : key;
      addRef(map, name, st, key, comp === 'vae' && !tiny && isVaeAttentionProjection(name));
    }
  }
  return map;
}

function addRef(map: WeightMap, name: string, st: SafetensorsFile, key: string, squeeze1x1: boolean): void {
  const prev = map.get(name);
  if (prev) throw new IdforgeError('E_MODEL_FORMAT', `${st.path}: tensor "${key}" duplicates "${prev.key}" in ${prev.file} (both are ${map.component} "${name}")`);
  map.set(name, makeRef(name, st, key, squeeze1x1));
}

// ---------------------------------------------------------------------------------------------
// A VAE on its own (Engine.load's `vae` / `previewVae`)

/** An opened VAE: its config (with `tiny` for an AutoencoderTiny) and weights under internal names. */
export interface VaeSource {
  path: string;
  config: VaeConfig;
  weights: WeightMap;
  warnings: string[];
  files: SafetensorsFile[];
}

/**
 * Opens a VAE by itself: a diffusers VAE folder (config.json with `_class_name` AutoencoderKL or
 * AutoencoderTiny, and diffusion_pytorch_model.safetensors), or the original TAESD files
 * (a folder holding taesd_decoder.safetensors and optionally taesd_encoder.safetensors, or the
 * decoder file itself: without the encoder, image to image is refused).
 */
export function openVae(p: string, opts: { variant?: 'fp16' } = {}): VaeSource {
  if (typeof p !== 'string' || p.length === 0) throw new IdforgeError('E_ARGUMENT', `vae must be a path to a VAE folder, got ${JSON.stringify(p)}`);
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (e) {
    throw fileError(p, e, 'VAE folder');
  }
  const warnings: string[] = [];
  const opened: SafetensorsFile[] = [];
  try {
    if (!st.isDirectory()) return openOriginalTaesd(p, path.join(path.dirname(p), path.basename(p).replace('decoder', 'encoder')), opened);
    const cfgFile = path.join(p, 'config.json');
    if (!entryExists(cfgFile)) {
      const dec = path.join(p, 'taesd_decoder.safetensors');
      if (entryExists(dec)) return openOriginalTaesd(dec, path.join(p, 'taesd_encoder.safetensors'), opened);
      throw new IdforgeError('E_MODEL_FORMAT', `${p}: not a VAE folder: expected config.json with diffusion_pytorch_model.safetensors (AutoencoderKL or AutoencoderTiny), or the original taesd_decoder.safetensors`);
    }
    const json = readJsonFile(cfgFile);
    const cls = json._class_name ?? 'AutoencoderKL';
    if (cls !== 'AutoencoderKL' && cls !== 'AutoencoderTiny')
      throw new IdforgeError('E_MODEL_FORMAT', `${cfgFile}: _class_name ${JSON.stringify(cls)} is not a VAE idforge runs (AutoencoderKL or AutoencoderTiny)`);
    const tiny = cls === 'AutoencoderTiny';
    const config = tiny ? parseTinyVaeConfig(json, cfgFile) : parseVaeConfig(json, cfgFile);
    const weights = loadComponent('vae', p, opts.variant, warnings, opened, tiny);
    return { path: p, config, weights, warnings, files: opened };
  } catch (e) {
    for (const f of opened) f.close();
    throw e;
  }
}

/** taesd_decoder.safetensors (+ taesd_encoder.safetensors when present) under diffusers' AutoencoderTiny names. */
function openOriginalTaesd(decoder: string, encoder: string, opened: SafetensorsFile[]): VaeSource {
  const map = new WeightMap('vae', decoder);
  const warnings: string[] = [];
  const parts: ['decoder' | 'encoder', string][] = [['decoder', decoder]];
  const hasEncoder = encoder !== decoder && entryExists(encoder);
  if (hasEncoder) parts.push(['encoder', encoder]);
  for (const [part, file] of parts) {
    const st = SafetensorsFile.open(file);
    opened.push(st);
    for (const key of st.names()) {
      const name = originalTaesdName(key, part);
      if (name) addRef(map, name, st, key, false);
      else warnings.push(`${file}: ignored tensor "${key}" (not a TAESD ${part} layer)`);
    }
  }
  const config = parseTinyVaeConfig({ ...snakeTiny(ORIGINAL_TAESD) }, decoder, !hasEncoder);
  return { path: decoder, config, weights: map, warnings, files: opened };
}

const snakeTiny = (t: typeof ORIGINAL_TAESD) => ({
  encoder_block_out_channels: t.encoderBlockOutChannels, decoder_block_out_channels: t.decoderBlockOutChannels,
  num_encoder_blocks: t.numEncoderBlocks, num_decoder_blocks: t.numDecoderBlocks,
});

// ---------------------------------------------------------------------------------------------
// LDM single files

/** Top-level keys of LDM training checkpoints that are schedule buffers or EMA state, not weights. */
const LDM_IGNORED = /^(model_ema\.|betas$|alphas_cumprod$|alphas_cumprod_prev$|sqrt_|log_one_minus_alphas_cumprod$|posterior_|logvar$|lvlb_weights$)/;

function summarize(keys: string[]): string {
  const head = keys.slice(0, 5).map((k) => `"${k}"`).join(', ');
  return keys.length > 5 ? `${head} and ${keys.length - 5} more` : head;
}

function openLdm(file: string, opts: OpenModelOptions): Source {
  const st = SafetensorsFile.open(file);
  try {
    const warnings: string[] = [];
    const unetKeys: string[] = [];
    const vaeKeys: string[] = [];
    const textKeys: string[] = [];
    const stray: string[] = [];
    for (const k of st.names()) {
      if (k.startsWith(LDM_UNET_PREFIX)) unetKeys.push(k.slice(LDM_UNET_PREFIX.length));
      else if (k.startsWith(LDM_VAE_PREFIX)) vaeKeys.push(k.slice(LDM_VAE_PREFIX.length));
      else if (k.startsWith(LDM_TEXT_PREFIX)) textKeys.push(k.slice(LDM_TEXT_PREFIX.length));
      else if (k.startsWith('cond_stage_model.model.')) {
        throw new IdforgeError('E_MODEL_FORMAT', `${file}: tensor "${k}" is an OpenCLIP text encoder (Stable Diffusion 2.x); idforge runs Stable Diffusion 1.x`);
      } else if (!LDM_IGNORED.test(k) && !isDroppedBuffer(k)) stray.push(k);
    }
    const need: [string[], string, string][] = [
      [unetKeys, LDM_UNET_PREFIX, 'UNet'],
      [vaeKeys, LDM_VAE_PREFIX, 'VAE'],
      [textKeys, LDM_TEXT_PREFIX, 'CLIP text encoder'],
    ];
    for (const [keys, prefix, what] of need) {
      if (keys.length === 0) {
        throw new IdforgeError(
          'E_MODEL_FORMAT',
          `${file}: no ${prefix}* tensors (the ${what}): not a full SD 1.x single-file checkpoint ` +
            `(a diffusers component file belongs inside a diffusers folder)`,
        );
      }
    }
    if (stray.length) warnings.push(`${file}: ignored ${stray.length} tensor(s) outside the UNet/VAE/text encoder: ${summarize(stray)}`);

    const build = (comp: Component, prefix: string, mapping: Map<string, KeyMapping>, unknown: string[]): WeightMap => {
      const map = new WeightMap(comp, file);
      for (const [name, m] of mapping) map.set(name, makeRef(name, st, prefix + m.key, m.squeeze1x1));
      if (unknown.length) warnings.push(`${file}: ignored ${unknown.length} unrecognised ${comp} tensor(s): ${summarize(unknown.map((k) => prefix + k))}`);
      return map;
    };
    const u = convertLdmUnet(unetKeys, file);
    const v = convertLdmVae(vaeKeys, file);
    const t = convertLdmText(textKeys);
    const weights = {
      unet: build('unet', LDM_UNET_PREFIX, u.mapping, u.unknown),
      vae: build('vae', LDM_VAE_PREFIX, v.mapping, v.unknown),
      text: build('text', LDM_TEXT_PREFIX, t.mapping, t.unknown),
    };

    const derived: ModelConfigs = {
      unet: deriveUNetConfig(weights.unet, u.layout.levels, u.layout.layersPerBlock, file, warnings),
      vae: deriveVaeConfig(weights.vae, v.levels, file, warnings),
      text: deriveTextConfig(weights.text, file, warnings),
      scheduler: sd15Scheduler(),
    };
    checkAlphasCumprod(st, derived.scheduler, warnings);
    const configs = applyOverrides(derived, opts.configOverrides);
    checkConfigs(configs, { unet: file, vae: file, text: file, scheduler: '<SD 1.5 default scheduler config>' });

    const local = path.join(path.dirname(file), 'tokenizer');
    const tokenizerDir = hasTokenizer(local) ? local : bundledTokenizer(file);
    return new Source('ldm', file, configs, tokenizerDir, weights, warnings, [st]);
  } catch (e) {
    st.close();
    throw e;
  }
}

function shapeOf(map: WeightMap, name: string, file: string, comp: string): number[] {
  const t = map.get(name);
  if (!t) throw new IdforgeError('E_MODEL_FORMAT', `${file}: ${comp} tensor for "${name}" is missing; cannot derive the ${comp} config`);
  return t.shape;
}

function countIndices(map: WeightMap, re: RegExp): number {
  const s = new Set<string>();
  for (const k of map.keys()) {
    const m = re.exec(k);
    if (m) s.add(m[1]!);
  }
  return s.size;
}

function deriveUNetConfig(w: WeightMap, levels: number, layersPerBlock: number, file: string, warnings: string[]): UNetConfig {
  const blockOutChannels: number[] = [];
  const downBlockTypes: string[] = [];
  const upBlockTypes: string[] = [];
  for (let i = 0; i < levels; i++) {
    blockOutChannels.push(shapeOf(w, `down_blocks.${i}.resnets.0.conv1.weight`, file, 'UNet')[0]!);
    downBlockTypes.push(w.has(`down_blocks.${i}.attentions.0.proj_in.weight`) ? 'CrossAttnDownBlock2D' : 'DownBlock2D');
    upBlockTypes.push(w.has(`up_blocks.${i}.attentions.0.proj_in.weight`) ? 'CrossAttnUpBlock2D' : 'UpBlock2D');
  }
  const first = (re: RegExp) => [...w.keys()].find((k) => re.test(k));
  const toK = first(/attn2\.to_k\.weight$/);
  const projIn = first(/attentions\.\d+\.proj_in\.weight$/);
  const normNumGroups = guessNormGroups(blockOutChannels);
  if (normNumGroups !== SD15_UNET.normNumGroups) {
    warnings.push(`${file}: UNet norm_num_groups is not stored in single files; using ${normNumGroups} for block widths ${JSON.stringify(blockOutChannels)} (pin it with configOverrides.unet.normNumGroups)`);
  }
  const tlayers = countIndices(w, /^down_blocks\.\d+\.attentions\.0\.transformer_blocks\.(\d+)\./);
  return {
    ...SD15_UNET,
    inChannels: shapeOf(w, 'conv_in.weight', file, 'UNet')[1]!,
    outChannels: shapeOf(w, 'conv_out.weight', file, 'UNet')[0]!,
    downBlockTypes,
    upBlockTypes,
    blockOutChannels,
    layersPerBlock,
    normNumGroups,
    crossAttentionDim: toK ? w.get(toK)!.shape[1]! : SD15_UNET.crossAttentionDim,
    attentionHeads: new Array<number>(levels).fill(SD15_UNET.attentionHeadDim as number),
    useLinearProjection: projIn ? w.get(projIn)!.shape.length === 2 : false,
    transformerLayersPerBlock: tlayers > 0 ? tlayers : 1,
  };
}

function deriveVaeConfig(w: WeightMap, levels: number, file: string, warnings: string[]): VaeConfig {
  const encLevels = countIndices(w, /^encoder\.down_blocks\.(\d+)\./);
  if (encLevels !== levels) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: VAE encoder has ${encLevels} levels but the decoder has ${levels}`);
  }
  const blockOutChannels: number[] = [];
  for (let i = 0; i < levels; i++) blockOutChannels.push(shapeOf(w, `encoder.down_blocks.${i}.resnets.0.conv1.weight`, file, 'VAE')[0]!);
  const normNumGroups = guessNormGroups(blockOutChannels);
  if (normNumGroups !== SD15_VAE.normNumGroups) {
    warnings.push(`${file}: VAE norm_num_groups is not stored in single files; using ${normNumGroups} for block widths ${JSON.stringify(blockOutChannels)} (pin it with configOverrides.vae.normNumGroups)`);
  }
  return {
    ...SD15_VAE,
    inChannels: shapeOf(w, 'encoder.conv_in.weight', file, 'VAE')[1]!,
    outChannels: shapeOf(w, 'decoder.conv_out.weight', file, 'VAE')[0]!,
    downBlockTypes: new Array<string>(levels).fill('DownEncoderBlock2D'),
    upBlockTypes: new Array<string>(levels).fill('UpDecoderBlock2D'),
    blockOutChannels,
    layersPerBlock: countIndices(w, /^encoder\.down_blocks\.0\.resnets\.(\d+)\./),
    latentChannels: shapeOf(w, 'decoder.conv_in.weight', file, 'VAE')[1]!,
    normNumGroups,
  };
}

function deriveTextConfig(w: WeightMap, file: string, warnings: string[]): TextConfig {
  const tok = shapeOf(w, 'text_model.embeddings.token_embedding.weight', file, 'text encoder');
  const pos = shapeOf(w, 'text_model.embeddings.position_embedding.weight', file, 'text encoder');
  const hiddenSize = tok[1]!;
  const numAttentionHeads = guessTextHeads(hiddenSize);
  if (hiddenSize % 64 !== 0) {
    warnings.push(`${file}: text encoder head count is not stored in single files; using ${numAttentionHeads} for width ${hiddenSize} (pin it with configOverrides.text.numAttentionHeads)`);
  }
  return {
    ...SD15_TEXT,
    vocabSize: tok[0]!,
    hiddenSize,
    intermediateSize: shapeOf(w, 'text_model.encoder.layers.0.mlp.fc1.weight', file, 'text encoder')[0]!,
    numHiddenLayers: countIndices(w, /^text_model\.encoder\.layers\.(\d+)\./),
    numAttentionHeads,
    maxPositionEmbeddings: pos[0]!,
  };
}

/** Warns when the file's own noise schedule is not the one the default scheduler config builds. */
function checkAlphasCumprod(st: SafetensorsFile, cfg: SchedulerConfig, warnings: string[]): void {
  if (!st.has('alphas_cumprod')) return;
  const info = st.info('alphas_cumprod');
  if (info.shape.length !== 1 || info.shape[0] !== cfg.numTrainTimesteps || !['F32', 'F64', 'F16', 'BF16'].includes(info.dtype)) return;
  const got = st.readFloat32('alphas_cumprod');
  const a = Math.sqrt(cfg.betaStart);
  const b = Math.sqrt(cfg.betaEnd);
  const n = cfg.numTrainTimesteps;
  let prod = 1;
  let worst = 0;
  for (let i = 0; i < n; i++) {
    const s = n === 1 ? a : a + ((b - a) * i) / (n - 1);
    prod *= 1 - s * s;
    worst = Math.max(worst, Math.abs(got[i]! - prod) / prod);
  }
  if (!(worst <= 1e-3)) {
    warnings.push(`${st.path}: its alphas_cumprod differs from SD 1.x's scaled_linear schedule (max relative difference ${worst.toExponential(2)}); using SD 1.x's (override with configOverrides.scheduler)`);
  }
}
