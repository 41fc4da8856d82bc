// diffusers' UNet2DConditionModel for SD 1.x, built from its config: every size comes from the
// config or the weight shapes, nothing is fixed to SD 1.5.
import { IdforgeError } from '../errors.js';
import type { UNetConfig } from '../io/configs.js';
import type { Graph, Value } from '../graph/graph.js';
import { convW, groupNormW, layerNormW, linearW, type Weights } from '../graph/weights.js';
import { invalid } from '../validate.js';

/**
 * Cross-attention contexts: keys from `k`, values from `v` (the same Value for ordinary prompts);
 * `regions`: a region table (lib/regions.ts) confining tokens to boxes in every cross-attention.
 */
export interface CrossContext {
  k: Value;
  v: Value;
  regions?: Value;
}

export interface UNetGraphOptions {
  /** Cross-attention layers (e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2") whose probabilities to output. */
  capture?: ReadonlySet<string>;
}

export interface UNetGraphOutputs {
  eps: Value;
  /** layer name → probabilities [B·heads, h·w, keys] */
  attention: Map<string, Value>;
}

/** Every cross-attention layer name of a UNet config, in execution order. */
export function crossAttentionLayers(cfg: UNetConfig): string[] {
  const names: string[] = [];
  const tb = (p: string) => {
    for (let t = 0; t < cfg.transformerLayersPerBlock; t++) names.push(`${p}.transformer_blocks.${t}.attn2`);
  };
  cfg.downBlockTypes.forEach((type, i) => {
    if (type.startsWith('CrossAttn')) for (let j = 0; j < cfg.layersPerBlock; j++) tb(`down_blocks.${i}.attentions.${j}`);
  });
  tb('mid_block.attentions.0');
  cfg.upBlockTypes.forEach((type, i) => {
    if (type.startsWith('CrossAttn')) for (let j = 0; j <= cfg.layersPerBlock; j++) tb(`up_blocks.${i}.attentions.${j}`);
  });
  return names;
}

class UNetBuilder {
  readonly attention = new Map<string, Value>();
  constructor(
    readonly g: Graph,
    readonly w: Weights,
    readonly cfg: UNetConfig,
    readonly ctx: CrossContext,
    readonly capture: ReadonlySet<string>,
  ) {}

  // Both adds of a resnet are fused into its convs: the time embedding becomes conv1's per-image
  // bias (time_emb_proj + conv1.bias, a [B, O] add) and the skip connection conv2's residual.
  /** embAct: silu(time embedding), computed once for every resnet. */
  resnet(x: Value, embAct: Value, p: string): Value {
    const { g, w, cfg } = this;
    const gn = { groups: cfg.normNumGroups, eps: cfg.normEps, silu: true };
    let h = groupNormW(g, w, x, `${p}.norm1`, gn);
    // The time projection with conv1's bias folded into its own (summed once, on the host) is
    // conv1's per-image bias [B, O]: the time embedding costs no ADD.
    const tb = `${p}.time_emb_proj.bias`, cb = `${p}.conv1.bias`;
    const hasT = w.has(tb), hasC = w.has(cb);
    let t = g.linear(embAct, w.in(g, `${p}.time_emb_proj.weight`), hasT && hasC ? w.sum(g, tb, cb) : w.maybe(g, tb));
    if (!hasT && hasC) t = g.add(t, w.in(g, cb));  // no time-projection bias to fold conv1's into
    h = convW(g, w, h, `${p}.conv1`, { bias: t });
    h = groupNormW(g, w, h, `${p}.norm2`, gn);
    const skip = w.has(`${p}.conv_shortcut.weight`) ? convW(g, w, x, `${p}.conv_shortcut`) : x;
    return convW(g, w, h, `${p}.conv2`, { residual: skip });
  }

  /** Attention whose output projection adds `residual` (the block's skip connection) in its epilogue; `width`: the token grid's. */
  attn(x: Value, p: string, heads: number, residual: Value, kv?: CrossContext, width = 0): Value {
    const { g, w } = this;
    const q = linearW(g, w, x, `${p}.to_q`);
    const k = linearW(g, w, kv ? kv.k : x, `${p}.to_k`);
    const v = linearW(g, w, kv ? kv.v : x, `${p}.to_v`);
    const opts = { heads, ...(kv?.regions ? { regions: { table: kv.regions, width } } : {}) };
    let o: Value;
    if (kv && this.capture.has(p)) {
      const [out, probs] = g.attention(q, k, v, { ...opts, capture: true });
      this.attention.set(p, probs);
      o = out;
    } else {
      o = g.attention(q, k, v, opts);
    }
    return linearW(g, w, o, `${p}.to_out.0`, { residual });
  }

  transformer(x: Value, p: string, heads: number): Value {
    const { g, w, cfg } = this;
    const [bn, c, hh, ww] = x.shape as [number, number, number, number];
    // proj_in / proj_out (a linear, or a 1x1 conv whose kernel serves as the linear weight) change
    // between the image layout [B, C, H·W] and tokens [B, H·W, C] inside their GEMMs (transX /
    // transY): no permute pass, and the block's skip connection x is added in proj_out's epilogue.
    const norm = groupNormW(g, w, x, `${p}.norm`, { groups: cfg.normNumGroups, eps: 1e-6 });
    let h = linearW(g, w, g.reshape(norm, [bn, c, hh * ww]), `${p}.proj_in`, { transX: true });
    for (let t = 0; t < cfg.transformerLayersPerBlock; t++) {
      const b = `${p}.transformer_blocks.${t}`;
      h = this.attn(layerNormW(g, w, h, `${b}.norm1`, 1e-5), `${b}.attn1`, heads, h);
      h = this.attn(layerNormW(g, w, h, `${b}.norm2`, 1e-5), `${b}.attn2`, heads, h, this.ctx, ww);
      let f = layerNormW(g, w, h, `${b}.norm3`, 1e-5);
      f = g.geglu(linearW(g, w, f, `${b}.ff.net.0.proj`));
      h = linearW(g, w, f, `${b}.ff.net.2`, { residual: h });
    }
    const out = linearW(g, w, h, `${p}.proj_out`, { transY: true, residual: g.reshape(x, [bn, c, hh * ww]) });
    return g.reshape(out, [bn, out.dim(1), hh, ww]);
  }
}

/**
 * eps = UNet(sample [B, C, h, w], t [B] (float timesteps), context [B, 77, D]).
 * h and w must be divisible by 2^(levels−1).
 */
export function buildUNet(g: Graph, w: Weights, cfg: UNetConfig, sample: Value, t: Value, ctx: CrossContext, opts: UNetGraphOptions = {}): UNetGraphOutputs {
  const levels = cfg.blockOutChannels.length;
  const f = 2 ** (levels - 1);
  if (sample.dim(2) % f || sample.dim(3) % f)
    throw new IdforgeError('E_SHAPE', `UNet: latent size ${sample.dim(2)}x${sample.dim(3)} is not divisible by ${f}`);
  const u = new UNetBuilder(g, w, cfg, ctx, opts.capture ?? new Set());
  const temb = g.timestepEmbedding(t, { dim: cfg.blockOutChannels[0]!, flip: cfg.flipSinToCos, shift: cfg.freqShift });
  const emb = linearW(g, w, g.silu(linearW(g, w, temb, 'time_embedding.linear_1')), 'time_embedding.linear_2');
  const embAct = g.silu(emb);  // what every resnet's time projection reads

  let x = convW(g, w, sample, 'conv_in');
  const skips: Value[] = [x];
  cfg.downBlockTypes.forEach((type, i) => {
    const heads = cfg.attentionHeads[i]!;
    for (let j = 0; j < cfg.layersPerBlock; j++) {
      x = u.resnet(x, embAct, `down_blocks.${i}.resnets.${j}`);
      if (type.startsWith('CrossAttn')) x = u.transformer(x, `down_blocks.${i}.attentions.${j}`, heads);
      skips.push(x);
    }
    if (i < levels - 1) {
      x = convW(g, w, x, `down_blocks.${i}.downsamplers.0.conv`, { stride: 2, pad: cfg.downsamplePadding });
      skips.push(x);
    }
  });

  x = u.resnet(x, embAct, 'mid_block.resnets.0');
  x = u.transformer(x, 'mid_block.attentions.0', cfg.attentionHeads[levels - 1]!);
  x = u.resnet(x, embAct, 'mid_block.resnets.1');

  const upHeads = [...cfg.attentionHeads].reverse();
  cfg.upBlockTypes.forEach((type, i) => {
    for (let j = 0; j <= cfg.layersPerBlock; j++) {
      x = g.concat([x, skips.pop()!], 1);
      x = u.resnet(x, embAct, `up_blocks.${i}.resnets.${j}`);
      if (type.startsWith('CrossAttn')) x = u.transformer(x, `up_blocks.${i}.attentions.${j}`, upHeads[i]!);
    }
    if (i < levels - 1) x = convW(g, w, g.upsample2x(x), `up_blocks.${i}.upsamplers.0.conv`);
  });

  x = groupNormW(g, w, x, 'conv_norm_out', { groups: cfg.normNumGroups, eps: cfg.normEps, silu: true });
  x = convW(g, w, x, 'conv_out');
  for (const name of u.capture)
    if (!u.attention.has(name)) throw invalid('a captured layer', "a cross-attention layer of this UNet", name);
  return { eps: x, attention: u.attention };
}
