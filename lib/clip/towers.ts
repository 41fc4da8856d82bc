// The two CLIP towers as graphs, on the encoder blocks the SD text encoder uses (lib/text/clip.ts):
// image [B, 3, S, S] → image_embeds [B, E]; ids [B, N] → text_embeds [B, E]. Both are projected
// and not yet normalised, like HF CLIPModel.get_image_features / get_text_features.
import type { Graph, Value } from '../graph/graph.js';
import { layerNormW, linearW, toTokens, type Weights } from '../graph/weights.js';
import { buildClipLayers, buildTextEncoder } from '../text/clip.js';
import type { ClipTextTowerConfig, ClipVisionTowerConfig } from './config.js';

/**
 * Patch conv + class embedding + positions, `preNorm`, the blocks (full attention), then
 * post_layernorm of the CLS state and visual_projection.
 */
export function buildImageTower(g: Graph, w: Weights, c: ClipVisionTowerConfig, preNorm: string, x: Value): Value {
  const p = 'vision_model';
  const b = x.dim(0);
  const D = c.hiddenSize;
  const patches = g.conv2d(x, w.in(g, `${p}.embeddings.patch_embedding.weight`), w.maybe(g, `${p}.embeddings.patch_embedding.bias`), { stride: c.patchSize, pad: 0 });
  const cls = g.reshape(w.in(g, `${p}.embeddings.class_embedding`), [1, 1, D]);
  // The program is built per batch size, so B copies of the CLS row are a static concat.
  const clsB = b === 1 ? cls : g.concat(Array.from({ length: b }, () => cls), 0);
  let h = g.add(g.concat([clsB, toTokens(g, patches)], 1), w.in(g, `${p}.embeddings.position_embedding.weight`));
  h = layerNormW(g, w, h, preNorm, c.layerNormEps);
  h = buildClipLayers(g, w, c, p, h, false);
  const pooled = layerNormW(g, w, g.reshape(g.slice(h, 1, 0, 1), [b, D]), `${p}.post_layernorm`, c.layerNormEps);
  return linearW(g, w, pooled, 'visual_projection');
}

/**
 * The text tower's last hidden state at one row per prompt (`rows` int32 [B]: b·N + the first
 * EOS position, a gather done as an embedding lookup into the [B·N, D] states), through
 * text_projection.
 */
export function buildTextTower(g: Graph, w: Weights, c: ClipTextTowerConfig, ids: Value, rows: Value): Value {
  const [b, n] = ids.shape as [number, number];
  const hidden = buildTextEncoder(g, w, c, { ids });
  const pooled = g.reshape(g.embedding(g.reshape(rows, [b, 1]), g.reshape(hidden, [b * n, c.hiddenSize])), [b, c.hiddenSize]);
  return linearW(g, w, pooled, 'text_projection');
}
