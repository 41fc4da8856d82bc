// An ID encoder's weights: their names and shapes under a config, the check of a checkpoint
// against them, and a new encoder's (a face ViT backbone plus seeded projectors).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IdforgeError } from '../errors.js';
import type { TensorRef } from '../io/checkpoint.js';
import { readJsonFile } from '../io/configs.js';
import { expectWeight } from '../io/layout.js';
import { SafetensorsFile } from '../io/safetensors.js';
import type { HostWeight } from '../optim/params.js';
import type { DeviceOptions } from '../runtime/runtime.js';
import { normalGenerator } from '../sched/random.js';
import { fmt, parseIdEncoderConfig, type IdEncoderConfig } from './config.js';
import { integer, invalid } from '../validate.js';

// HostWeight and hostRefs live with the trainable weights (lib/optim/params.ts).
export { hostRefs, type HostWeight } from '../optim/params.js';

export interface IdEncoderCreateOptions extends DeviceOptions {
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
  const where = 'IdEncoder.create';
  if (!o || typeof o.backbone !== 'string') throw invalid('backbone', 'a path to a safetensors ViT', o?.backbone, { where });
  integer(o.seed, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, where);
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
    if (heads === undefined) throw invalid('numHeads', "given (the weights do not say; or put num_heads in the backbone folder's config.json)", undefined, { where });
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

/** Every weight of `c`'s layout present, float and of its shape (E_MODEL_FORMAT naming `where`). */
export function checkWeights(refs: ReadonlyMap<string, TensorRef>, c: IdEncoderConfig, where: string): void {
  const layout = idEncoderLayout(c, { patchBias: refs.has('patch_embed.proj.bias'), normPre: refs.has('norm_pre.weight') || refs.has('norm_pre.bias') });
  for (const { name, shape } of layout) expectWeight(refs.get(name), name, shape, where, 'ID encoder', 'the config');
}
