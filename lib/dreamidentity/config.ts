/**
 * config.json of an M² ID encoder (DreamIdentity): parsing, checking and writing it back.
 *
 * Folder layout (test/fixtures/tiny-id-encoder): config.json + model.safetensors with timm-style
 * names — patch_embed.proj, cls_token [1,1,W], pos_embed [1,N+1,W], norm_pre, blocks.i.{norm1,
 * attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, projector.k.{fc1, fc2}. Pre-norm blocks,
 * exact (erf) GELU. Tap i (integer) = CLS state after block i (1-based, no norm); "final" = norm of
 * the CLS state after the last block.
 */
import { IdforgeError } from '../errors.js';

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

/** E_MODEL_FORMAT naming the file. */
export function fmt(file: string, msg: string): IdforgeError {
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
