// The M² ID encoder as a model graph (pure: graph, weights, config, input → values).
import type { Graph, Value } from '../graph/graph.js';
import { layerNormW, linearW, toTokens, type Weights } from '../graph/weights.js';
import type { IdEncoderConfig } from './config.js';

/** The encoder graph: image [B, 3, S, S] → taps [B, T, W], words [B, T, textDim]. */
export function buildIdEncoder(g: Graph, w: Weights, c: IdEncoderConfig, x: Value): { taps: Value; words: Value } {
  const b = x.dim(0);
  const W = c.hiddenSize;
  const patches = g.conv2d(x, w.in(g, 'patch_embed.proj.weight'), w.maybe(g, 'patch_embed.proj.bias'), { stride: c.patchSize, pad: 0 });
  const tokens = toTokens(g, patches); // [B, N, W]
  const cls = w.in(g, 'cls_token'); // [1, 1, W]
  // The program is built per batch size, so B copies of the CLS row are a static concat.
  const clsB = b === 1 ? cls : g.concat(Array.from({ length: b }, () => cls), 0);
  let h = g.add(g.concat([clsB, tokens], 1), w.in(g, 'pos_embed'));
  if (w.has('norm_pre.weight')) h = layerNormW(g, w, h, 'norm_pre', c.eps);
  const clsAt = new Map<number | 'final', Value>();
  for (let i = 0; i < c.numLayers; i++) {
    const p = `blocks.${i}`;
    const qkv = linearW(g, w, layerNormW(g, w, h, `${p}.norm1`, c.eps), `${p}.attn.qkv`);
    const q = g.slice(qkv, -1, 0, W);
    const k = g.slice(qkv, -1, W, 2 * W);
    const v = g.slice(qkv, -1, 2 * W, 3 * W);
    // Skip connections as residuals of the closing linears (added in their epilogues).
    h = linearW(g, w, g.attention(q, k, v, { heads: c.numHeads }), `${p}.attn.proj`, { residual: h });
    h = linearW(g, w, g.gelu(linearW(g, w, layerNormW(g, w, h, `${p}.norm2`, c.eps), `${p}.mlp.fc1`)), `${p}.mlp.fc2`, { residual: h });
    if (c.taps.includes(i + 1)) clsAt.set(i + 1, g.slice(h, 1, 0, 1));
  }
  if (c.taps.includes('final')) clsAt.set('final', layerNormW(g, w, g.slice(h, 1, 0, 1), 'norm', c.eps));
  const feats = c.taps.map((t) => clsAt.get(t)!); // each [B, 1, W]
  const words = feats.map((f, k) => linearW(g, w, g.gelu(linearW(g, w, f, `projector.${k}.fc1`)), `projector.${k}.fc2`));
  return {
    taps: feats.length === 1 ? feats[0]! : g.concat(feats, 1),
    words: words.length === 1 ? words[0]! : g.concat(words, 1),
  };
}
