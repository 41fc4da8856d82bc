/**
 * The module layout of a Stable Diffusion 1.x UNet, VAE and CLIP text encoder, derived from the
 * configs: every weight name (diffusers / transformers naming, as the loaders present it
 * internally) with its shape and how a synthetic model would initialise it. Used to validate a
 * loaded model's weights before anything runs, and by the benchmark's random-weight models.
 * test/bench.test.ts checks that, built from the tiny fixture's configs, it yields exactly the
 * fixture's tensor names and shapes.
 */
import * as os from 'node:os';
import { IdforgeError } from '../errors.js';
import { checkConfigs } from './bounds.js';
import type { Component, ModelSource } from './checkpoint.js';
import type { ModelConfigs, TextConfig, UNetConfig, VaeConfig } from './configs.js';
import { tinyDecoderModules, tinyEncoderModules } from './taesd.js';

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
  if (cfg.tiny) return tinyVaeLayout(cfg);
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

// AutoencoderTiny (TAESD): its encoder only when it has one. He-initialised: a random ReLU net keeps its scale.
function tinyVaeLayout(cfg: VaeConfig): LayoutEntry[] {
  const l = new Layout();
  const conv = (p: string, o: number, i: number, k: number, bias: boolean) => {
    l.add(`${p}.weight`, [o, i, k, k], { kind: 'normal', std: Math.sqrt(2 / (i * k * k)) });
    if (bias) l.add(`${p}.bias`, [o], ZEROS);
  };
  for (const m of [...(cfg.tiny!.decoderOnly ? [] : tinyEncoderModules(cfg)), ...tinyDecoderModules(cfg)]) {
    if (m.kind === 'conv') conv(m.name, m.out, m.inp, 3, m.bias);
    else if (m.kind === 'block') {
      conv(`${m.name}.conv.0`, m.out, m.inp, 3, true);
      conv(`${m.name}.conv.2`, m.out, m.out, 3, true);
      conv(`${m.name}.conv.4`, m.out, m.out, 3, true);
      if (m.inp !== m.out) conv(`${m.name}.skip`, m.out, m.inp, 1, false);
    }
  }
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

export function modelLayout(configs: Pick<ModelConfigs, 'unet' | 'vae' | 'text'>): Record<Component, LayoutEntry[]> {
  return { unet: unetLayout(configs.unet), vae: vaeLayout(configs.vae), text: textLayout(configs.text) };
}

/**
 * Every weight the configs imply must be present with its exact shape before anything runs (a
 * wrong or missing tensor otherwise gives wrong images, not an error); extra tensors are reported
 * as warnings. Reads headers only.
 */
/**
 * One weight of a model other than SD (the ID encoder, CLIP) against its expected shape: present,
 * float (F32 / F16 / BF16), that shape; else E_MODEL_FORMAT naming the file, the model (`what`)
 * and what implies the shape (`by`).
 */
export function expectWeight(info: { dtype: string; shape: readonly number[] } | undefined, name: string, shape: readonly number[], where: string, what: string, by: string): void {
  const bad = (msg: string) => new IdforgeError('E_MODEL_FORMAT', `${where}: ${what} weight "${name}" ${msg}`);
  if (!info) throw bad('is missing');
  if (!['F32', 'F16', 'BF16'].includes(info.dtype)) throw bad(`is ${info.dtype}, expected a float type`);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i]))
    throw bad(`has shape ${JSON.stringify(info.shape)}, ${by} implies ${JSON.stringify(shape)}`);
}

export function checkWeights(source: ModelSource, memoryBytes = os.totalmem()): string[] {
  checkConfigs(source.configs);  // bounded before the layout is built from them
  const layout = modelLayout(source.configs);
  checkWeightMemory(source.configs, layout, memoryBytes);
  const warnings: string[] = [];
  for (const comp of ['unet', 'vae', 'text'] as const) {
    const refs = source.weights[comp];
    const expected = new Set<string>();
    for (const e of layout[comp]) {
      expected.add(e.name);
      const r = refs.get(e.name);
      if (!r) throw new IdforgeError('E_MODEL_FORMAT', `${source.path}: the ${comp} has no weight '${e.name}' (expected shape ${JSON.stringify(e.shape)} from its config)`);
      if (!['F32', 'F16', 'BF16', 'F64'].includes(r.dtype))
        throw new IdforgeError('E_MODEL_FORMAT', `${source.path}: ${comp} weight '${e.name}' (${r.key} in ${r.file}) is stored as ${r.dtype}; model weights are floating point (F32, F16, BF16 or F64)`);
      if (r.shape.length !== e.shape.length || r.shape.some((d, i) => d !== e.shape[i]))
        throw new IdforgeError('E_MODEL_FORMAT', `${source.path}: ${comp} weight '${e.name}' (${r.key} in ${r.file}) is ${JSON.stringify(r.shape)}, the ${comp} config implies ${JSON.stringify(e.shape)}`);
    }
    const extra = [...refs.keys()].filter((n) => !expected.has(n));
    if (extra.length) warnings.push(`${comp}: ${extra.length} tensor(s) the model does not use were ignored (e.g. '${extra[0]}')`);
  }
  return warnings;
}


const gib = (n: number): string => `${(n / 2 ** 30).toFixed(n < 2 ** 30 ? 3 : 1)} GiB`;

/**
 * Refuses (E_OOM) configs whose weights cannot fit in `memoryBytes` even at 2 bytes an element
 * (float16, the smallest compute dtype), naming the largest component and its sizes.
 */
export function checkWeightMemory(configs: ModelConfigs, layout: Record<Component, LayoutEntry[]>, memoryBytes: number): void {
  const per = { unet: 0, vae: 0, text: 0 };
  for (const comp of ['unet', 'vae', 'text'] as const)
    for (const e of layout[comp]) per[comp] += 2 * e.shape.reduce((a, b) => a * b, 1);
  const total = per.unet + per.vae + per.text;
  if (total <= memoryBytes) return;
  const comp = (['unet', 'vae', 'text'] as const).reduce((a, b) => (per[b] > per[a] ? b : a));
  const sizes = comp === 'text'
    ? { hidden_size: configs.text.hiddenSize, num_hidden_layers: configs.text.numHiddenLayers, intermediate_size: configs.text.intermediateSize }
    : { block_out_channels: configs[comp].blockOutChannels, layers_per_block: configs[comp].layersPerBlock };
  throw new IdforgeError(
    'E_OOM',
    `the model's configs describe ${gib(total)} of weights even in float16 (${comp}: ${gib(per[comp])} from ${JSON.stringify(sizes)}), ` +
      `more than this machine's ${gib(memoryBytes)} of memory`,
  );
}
