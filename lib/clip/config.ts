/**
 * A Hugging Face CLIPModel folder: config.json (text_config, vision_config, projection_dim),
 * preprocessor_config.json (size, crop, mean/std) and the weights' names and shapes. Missing config
 * keys take transformers' defaults (as CLIPConfig does); every weight is then checked against them.
 */
import { IdforgeError } from '../errors.js';
import { expectWeight } from '../io/layout.js';
import type { SafetensorsFile } from '../io/safetensors.js';
import type { ClipLayersConfig } from '../text/clip.js';

export interface ClipTowerConfig extends ClipLayersConfig {
  hiddenSize: number;
  intermediateSize: number;
}

export interface ClipTextTowerConfig extends ClipTowerConfig {
  vocabSize: number;
  maxPositionEmbeddings: number;
  eosTokenId: number;
}

export interface ClipVisionTowerConfig extends ClipTowerConfig {
  imageSize: number;
  patchSize: number;
  numChannels: number;
}

export interface ClipPreprocessConfig {
  /** Shortest side after the bicubic resize. */
  shortestEdge: number;
  cropHeight: number;
  cropWidth: number;
  mean: [number, number, number];
  std: [number, number, number];
}

export interface ClipConfig {
  projectionDim: number;
  text: ClipTextTowerConfig;
  vision: ClipVisionTowerConfig;
  preprocess: ClipPreprocessConfig;
  /** The vision pre-norm's name: HF spells it `pre_layrnorm`. */
  preNorm: string;
}

const fmt = (file: string, msg: string): IdforgeError => new IdforgeError('E_MODEL_FORMAT', `${file}: ${msg}`);

function obj(v: unknown, file: string, what: string): Record<string, unknown> {
  if (v === undefined) return {};
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw fmt(file, `${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

function reader(c: Record<string, unknown>, file: string, scope: string) {
  const int = (key: string, def: number): number => {
    const v = c[key] ?? def;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw fmt(file, `${scope}${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const pos = (key: string, def: number): number => {
    const v = c[key] ?? def;
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) throw fmt(file, `${scope}${key} must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const act = (): string => {
    const v = c.hidden_act ?? 'quick_gelu';
    if (v !== 'quick_gelu' && v !== 'gelu') throw fmt(file, `${scope}hidden_act ${JSON.stringify(v)} is not supported (quick_gelu or gelu)`);
    return v;
  };
  return { int, pos, act };
}

function tower(c: Record<string, unknown>, file: string, scope: string, defaults: { hidden: number; inter: number; heads: number; layers: number }): ClipTowerConfig {
  const r = reader(c, file, scope);
  const hiddenSize = r.int('hidden_size', defaults.hidden);
  const numAttentionHeads = r.int('num_attention_heads', defaults.heads);
  if (hiddenSize % numAttentionHeads) throw fmt(file, `${scope}hidden_size ${hiddenSize} does not split into ${numAttentionHeads} heads`);
  return {
    hiddenSize, numAttentionHeads,
    intermediateSize: r.int('intermediate_size', defaults.inter),
    numHiddenLayers: r.int('num_hidden_layers', defaults.layers),
    layerNormEps: r.pos('layer_norm_eps', 1e-5),
    hiddenAct: r.act(),
  };
}

/** config.json of a CLIPModel (transformers' defaults are ViT-B/32's). */
export function parseClipConfig(json: unknown, file = 'config.json'): Omit<ClipConfig, 'preprocess' | 'preNorm'> {
  const c = obj(json, file, 'config');
  if (c.model_type !== undefined && c.model_type !== 'clip') throw fmt(file, `model_type ${JSON.stringify(c.model_type)} is not "clip"`);
  // Older configs (e.g. openai/clip-vit-large-patch14's) also carry text_config_dict /
  // vision_config_dict, whose values win, as in transformers' CLIPConfig.
  const tc = { ...obj(c.text_config ?? undefined, file, 'text_config'), ...obj(c.text_config_dict ?? undefined, file, 'text_config_dict') };
  const vc = { ...obj(c.vision_config ?? undefined, file, 'vision_config'), ...obj(c.vision_config_dict ?? undefined, file, 'vision_config_dict') };
  const tr = reader(tc, file, 'text_config.');
  const vr = reader(vc, file, 'vision_config.');
  const text: ClipTextTowerConfig = {
    ...tower(tc, file, 'text_config.', { hidden: 512, inter: 2048, heads: 8, layers: 12 }),
    vocabSize: tr.int('vocab_size', 49408),
    maxPositionEmbeddings: tr.int('max_position_embeddings', 77),
    eosTokenId: tr.int('eos_token_id', 49407),
  };
  const vision: ClipVisionTowerConfig = {
    ...tower(vc, file, 'vision_config.', { hidden: 768, inter: 3072, heads: 12, layers: 12 }),
    imageSize: vr.int('image_size', 224),
    patchSize: vr.int('patch_size', 32),
    numChannels: vr.int('num_channels', 3),
  };
  if (vision.imageSize % vision.patchSize) throw fmt(file, `vision_config.image_size ${vision.imageSize} is not a multiple of patch_size ${vision.patchSize}`);
  if (vision.numChannels !== 3) throw fmt(file, `vision_config.num_channels must be 3, got ${vision.numChannels}`);
  return { projectionDim: reader(c, file, '').int('projection_dim', 512), text, vision };
}

/** preprocessor_config.json of a CLIPImageProcessor (absent: the vision tower's size and OpenAI's mean/std). */
export function parsePreprocessConfig(json: unknown, imageSize: number, file = 'preprocessor_config.json'): ClipPreprocessConfig {
  const c = obj(json, file, 'preprocessor config');
  for (const flag of ['do_resize', 'do_center_crop', 'do_normalize'])
    if (c[flag] === false) throw fmt(file, `${flag}: false is not supported (CLIP preprocessing resizes, crops and normalises)`);
  if (c.resample !== undefined && c.resample !== 3) throw fmt(file, `resample ${JSON.stringify(c.resample)} is not supported (only 3, bicubic)`);
  const size = (v: unknown, key: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw fmt(file, `${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const s = c.size;
  const shortestEdge = s === undefined ? imageSize
    : typeof s === 'number' ? size(s, 'size')
    : size(obj(s, file, 'size').shortest_edge, 'size.shortest_edge');
  const crop = c.crop_size;
  const [cropHeight, cropWidth] = crop === undefined ? [imageSize, imageSize]
    : typeof crop === 'number' ? [size(crop, 'crop_size'), size(crop, 'crop_size')]
    : [size(obj(crop, file, 'crop_size').height, 'crop_size.height'), size(obj(crop, file, 'crop_size').width, 'crop_size.width')];
  if (cropHeight !== imageSize || cropWidth !== imageSize)
    throw fmt(file, `crop_size ${cropWidth}x${cropHeight} differs from the vision tower's image_size ${imageSize}`);
  const triple = (v: unknown, key: string, def: [number, number, number], positive: boolean): [number, number, number] => {
    if (v === undefined) return def;
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0)))
      throw fmt(file, `${key} must be 3 ${positive ? 'positive ' : ''}numbers`);
    return v as [number, number, number];
  };
  return {
    shortestEdge, cropHeight, cropWidth,
    mean: triple(c.image_mean, 'image_mean', [0.48145466, 0.4578275, 0.40821073], false),
    std: triple(c.image_std, 'image_std', [0.26862954, 0.26130258, 0.27577711], true),
  };
}

/**
 * Checks every weight both towers and the projections read; returns the vision pre-norm's name
 * (`pre_layrnorm` as transformers spells it, or `pre_layernorm`). `position_ids` buffers and
 * `logit_scale` are not read, so neither is required.
 */
export function checkClipWeights(st: SafetensorsFile, c: Omit<ClipConfig, 'preprocess' | 'preNorm'>): string {
  const want = new Map<string, number[]>();
  const layers = (p: string, t: ClipTowerConfig): void => {
    const D = t.hiddenSize, I = t.intermediateSize;
    for (let i = 0; i < t.numHiddenLayers; i++) {
      const l = `${p}.encoder.layers.${i}.`;
      for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) want.set(`${l}self_attn.${proj}.weight`, [D, D]).set(`${l}self_attn.${proj}.bias`, [D]);
      for (const n of ['layer_norm1', 'layer_norm2']) want.set(`${l}${n}.weight`, [D]).set(`${l}${n}.bias`, [D]);
      want.set(`${l}mlp.fc1.weight`, [I, D]).set(`${l}mlp.fc1.bias`, [I]).set(`${l}mlp.fc2.weight`, [D, I]).set(`${l}mlp.fc2.bias`, [D]);
    }
  };
  const { text: t, vision: v, projectionDim: E } = c;
  want.set('text_model.embeddings.token_embedding.weight', [t.vocabSize, t.hiddenSize]);
  want.set('text_model.embeddings.position_embedding.weight', [t.maxPositionEmbeddings, t.hiddenSize]);
  layers('text_model', t);
  want.set('text_model.final_layer_norm.weight', [t.hiddenSize]).set('text_model.final_layer_norm.bias', [t.hiddenSize]);
  want.set('text_projection.weight', [E, t.hiddenSize]);
  const n = (v.imageSize / v.patchSize) ** 2;
  want.set('vision_model.embeddings.class_embedding', [v.hiddenSize]);
  want.set('vision_model.embeddings.patch_embedding.weight', [v.hiddenSize, 3, v.patchSize, v.patchSize]);
  want.set('vision_model.embeddings.position_embedding.weight', [n + 1, v.hiddenSize]);
  const preNorm = st.has('vision_model.pre_layernorm.weight') ? 'vision_model.pre_layernorm' : 'vision_model.pre_layrnorm';
  want.set(`${preNorm}.weight`, [v.hiddenSize]).set(`${preNorm}.bias`, [v.hiddenSize]);
  layers('vision_model', v);
  want.set('vision_model.post_layernorm.weight', [v.hiddenSize]).set('vision_model.post_layernorm.bias', [v.hiddenSize]);
  want.set('visual_projection.weight', [E, v.hiddenSize]);
  for (const [name, shape] of want) expectWeight(st.has(name) ? st.info(name) : undefined, name, shape, st.path, 'CLIP', 'config.json');
  return preNorm;
}
