// diffusers' AutoencoderKL (SD 1.x VAE): decoder for z → image, encoder for image → (mean, logvar).
import type { VaeConfig } from '../io/configs.js';
import type { Graph, Value } from '../graph/graph.js';
import { Tensor } from '../tensor.js';
import { convW, groupNormW, linearW, type Weights } from '../graph/weights.js';
import { buildTinyDecoder } from './taesd.js';

function resnet(g: Graph, w: Weights, cfg: VaeConfig, x: Value, p: string): Value {
  const gn = { groups: cfg.normNumGroups, eps: cfg.normEps, silu: true };
  let h = convW(g, w, groupNormW(g, w, x, `${p}.norm1`, gn), `${p}.conv1`);
  h = groupNormW(g, w, h, `${p}.norm2`, gn);
  // The skip connection is conv2's residual (added in its epilogue, no ADD pass).
  const skip = w.has(`${p}.conv_shortcut.weight`) ? convW(g, w, x, `${p}.conv_shortcut`) : x;
  return convW(g, w, h, `${p}.conv2`, { residual: skip });
}

// Single-head spatial self-attention of the mid block. q, k and v read the normalised image
// channels first ([B, C, H·W], transX) and to_out writes it back channels first (transY) with the
// skip connection x added in its epilogue: no permute and no ADD pass.
function attention(g: Graph, w: Weights, cfg: VaeConfig, x: Value, p: string): Value {
  const [b, c, hh, ww] = x.shape as [number, number, number, number];
  const img = g.reshape(groupNormW(g, w, x, `${p}.group_norm`, { groups: cfg.normNumGroups, eps: cfg.normEps }), [b, c, hh * ww]);
  const q = linearW(g, w, img, `${p}.to_q`, { transX: true });
  const k = linearW(g, w, img, `${p}.to_k`, { transX: true });
  const v = linearW(g, w, img, `${p}.to_v`, { transX: true });
  const o = linearW(g, w, g.attention(q, k, v, { heads: 1 }), `${p}.to_out.0`, { transY: true, residual: g.reshape(x, [b, c, hh * ww]) });
  return g.reshape(o, [b, o.dim(1), hh, ww]);
}

function mid(g: Graph, w: Weights, cfg: VaeConfig, x: Value, p: string): Value {
  x = resnet(g, w, cfg, x, `${p}.mid_block.resnets.0`);
  x = attention(g, w, cfg, x, `${p}.mid_block.attentions.0`);
  return resnet(g, w, cfg, x, `${p}.mid_block.resnets.1`);
}

/** image [B, 3, 8h, 8w] in [−1, 1] from z [B, 4, h, w] (z already divided by the scaling factor). */
export function buildVaeDecoder(g: Graph, w: Weights, cfg: VaeConfig, z: Value): Value {
  let x = convW(g, w, z, 'post_quant_conv');
  x = convW(g, w, x, 'decoder.conv_in');
  x = mid(g, w, cfg, x, 'decoder');
  const levels = cfg.blockOutChannels.length;
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j <= cfg.layersPerBlock; j++) x = resnet(g, w, cfg, x, `decoder.up_blocks.${i}.resnets.${j}`);
    if (i < levels - 1) x = convW(g, w, g.upsample2x(x), `decoder.up_blocks.${i}.upsamplers.0.conv`);
  }
  x = groupNormW(g, w, x, 'decoder.conv_norm_out', { groups: cfg.normNumGroups, eps: cfg.normEps, silu: true });
  return convW(g, w, x, 'decoder.conv_out');
}

/**
 * (mean, logvar) of the latent distribution of image [B, 3, H, W] in [−1, 1].
 * `zeros` supplies constant zero tensors for the asymmetric (right/bottom) padding of the
 * encoder's stride-2 convs, which diffusers applies with F.pad(0, 1, 0, 1).
 */
export function buildVaeEncoder(g: Graph, w: Weights, cfg: VaeConfig, image: Value, zeros: (shape: number[]) => Tensor): { mean: Value; logvar: Value } {
  let x = convW(g, w, image, 'encoder.conv_in');
  const levels = cfg.blockOutChannels.length;
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j < cfg.layersPerBlock; j++) x = resnet(g, w, cfg, x, `encoder.down_blocks.${i}.resnets.${j}`);
    if (i < levels - 1) {
      const [b, c, hh, ww] = x.shape as [number, number, number, number];
      x = g.concat([x, g.constant(zeros([b, c, hh, 1]))], 3);
      x = g.concat([x, g.constant(zeros([b, c, 1, ww + 1]))], 2);
      x = convW(g, w, x, `encoder.down_blocks.${i}.downsamplers.0.conv`, { stride: 2, pad: 0 });
    }
  }
  x = mid(g, w, cfg, x, 'encoder');
  x = groupNormW(g, w, x, 'encoder.conv_norm_out', { groups: cfg.normNumGroups, eps: cfg.normEps, silu: true });
  x = convW(g, w, x, 'encoder.conv_out');
  x = convW(g, w, x, 'quant_conv');
  const c = x.dim(1) / 2;
  return { mean: g.slice(x, 1, 0, c), logvar: g.slice(x, 1, c, 2 * c) };
}

/** The decoder of either kind of VAE: AutoencoderKL, or AutoencoderTiny (lib/vae/taesd.ts) when `cfg.tiny`. */
export function buildDecoder(g: Graph, w: Weights, cfg: VaeConfig, z: Value): Value {
  return cfg.tiny ? buildTinyDecoder(g, w, cfg, z) : buildVaeDecoder(g, w, cfg, z);
}
