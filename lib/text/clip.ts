// The CLIP transformer (openai CLIP / HF CLIPTextModel and CLIPVisionModel naming): pre-LN
// self-attention blocks with quick_gelu (or gelu) MLPs. The SD 1.x text encoder is the text tower
// (token + position embeddings, causal mask, final layer norm); lib/clip/ builds the image tower
// and the projections on the same blocks.
import type { TextConfig } from '../io/configs.js';
import type { Graph, Value } from '../graph/graph.js';
import { layerNormW, linearW, type Weights } from '../graph/weights.js';

/** What the encoder blocks need to know: HF CLIPTextConfig and CLIPVisionConfig both carry it. */
export type ClipLayersConfig = Pick<TextConfig, 'numHiddenLayers' | 'numAttentionHeads' | 'layerNormEps' | 'hiddenAct'>;

/**
 * `<prefix>.encoder.layers.i` for every layer: x [B, N, D] → [B, N, D]. Causal for text, full
 * attention for images.
 */
export function buildClipLayers(g: Graph, w: Weights, cfg: ClipLayersConfig, prefix: string, x: Value, causal: boolean): Value {
  for (let i = 0; i < cfg.numHiddenLayers; i++) {
    const l = `${prefix}.encoder.layers.${i}`;
    let h = layerNormW(g, w, x, `${l}.layer_norm1`, cfg.layerNormEps);
    const q = linearW(g, w, h, `${l}.self_attn.q_proj`);
    const k = linearW(g, w, h, `${l}.self_attn.k_proj`);
    const v = linearW(g, w, h, `${l}.self_attn.v_proj`);
    h = g.attention(q, k, v, { heads: cfg.numAttentionHeads, causal });
    // Both skip connections are residuals of the closing linear (added in its epilogue).
    x = linearW(g, w, h, `${l}.self_attn.out_proj`, { residual: x });
    h = layerNormW(g, w, x, `${l}.layer_norm2`, cfg.layerNormEps);
    h = linearW(g, w, h, `${l}.mlp.fc1`);
    h = cfg.hiddenAct === 'gelu' ? g.gelu(h) : g.quickGelu(h);
    x = linearW(g, w, h, `${l}.mlp.fc2`, { residual: x });
  }
  return x;
}

export interface TextGraphInputs {
  ids: Value; // int32 [B, 77]
  /** Pseudo-word injection: slots int32 [B, 77] (row of vectors or −1) and vectors [M, D]. */
  inject?: { slots: Value; vectors: Value };
}

/** Builds last_hidden_state [B, 77, D] for the given ids. */
export function buildTextEncoder(g: Graph, w: Weights, cfg: ClipLayersConfig, inp: TextGraphInputs): Value {
  const p = 'text_model';
  let x = g.embedding(inp.ids, w.in(g, `${p}.embeddings.token_embedding.weight`));
  // Injection replaces token embeddings before positions are added (DreamIdentity / SeFi-IDE).
  if (inp.inject) x = g.inject(x, inp.inject.slots, inp.inject.vectors);
  const n = inp.ids.dim(1);
  let pos = w.in(g, `${p}.embeddings.position_embedding.weight`);
  if (pos.dim(0) !== n) pos = g.slice(pos, 0, 0, n);
  x = g.add(x, pos);
  x = buildClipLayers(g, w, cfg, p, x, true);
  return layerNormW(g, w, x, `${p}.final_layer_norm`, cfg.layerNormEps);
}
