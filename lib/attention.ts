// Cross-attention maps for users: which layers/steps generate() captures, and the heatmap overlay
// SeFi-IDE uses to show attention overfit (an identity token whose map covers the whole image).
import type { RawImage } from './io/image.js';
import { invalid, shown } from './validate.js';

export interface CaptureAttentionOptions {
  /** 'cross' (default: every cross-attention layer), layer names, or the layers whose maps are resolution×resolution... (latent side / 2^level). */
  layers?: 'cross' | string[] | { resolution: number };
  /** 'all' (default) or 1-based step numbers (as in onProgress). */
  steps?: 'all' | number[];
  /** 'mean' averages the heads. */
  reduce?: 'mean';
}

/** One captured map set: the conditional branch's softmax probabilities of one layer at one step. */
export interface AttentionMap {
  layer: string;
  step: number;
  timestep: number;
  /** Which of generate()'s numImages images (0-based). */
  image: number;
  /** 1 when heads were averaged */
  heads: number;
  height: number;
  width: number;
  tokens: number;
  /** [heads, height·width, tokens] row-major */
  data: Float32Array;
}

export interface AttentionCapture {
  maps: AttentionMap[];
  /** The 77 prompt ids the maps' token axis refers to. */
  ids: Int32Array;
  /** The BPE piece of each of the 77 positions ('<|startoftext|>', 'photo</w>', '<id>' for identity slots). */
  tokens: string[];
  /** For each position: the identity slot row, or −1. */
  slots: Int32Array;
  /** For each slot row: the name of the identity it belongs to. */
  slotNames: string[];
}

/** The spatial side ratio of each cross-attention layer (1 = latent resolution). */
export function layerDownsampling(layer: string, levels: number): number {
  const m = /^(down_blocks|up_blocks)\.(\d+)\./.exec(layer);
  if (!m) return 2 ** (levels - 1); // mid block
  const i = Number(m[2]);
  return m[1] === 'down_blocks' ? 2 ** i : 2 ** (levels - 1 - i);
}

/**
 * The capture for a heatmap: the cross-attention layers whose maps are nearest `side`² (16², the
 * resolution prompt-to-prompt shows), heads averaged. Every layer at full resolution would hold
 * 1 GB of maps for a 50-step 512² SD 1.5 image; the 16² layers hold ~20 MB.
 */
export function heatmapCapture(all: string[], latentH: number, levels: number, side = 16): CaptureAttentionOptions {
  const sides = [...new Set(all.map((l) => latentH / layerDownsampling(l, levels)))].filter(Number.isInteger);
  if (sides.length === 0) return { layers: 'cross', reduce: 'mean' };
  const far = (r: number) => Math.abs(Math.log2(r / side));
  const best = sides.reduce((a, b) => (far(b) < far(a) || (far(b) === far(a) && b > a) ? b : a));
  return { layers: { resolution: best }, reduce: 'mean' };
}

/**
 * At most `n` of the steps 1..total, spread evenly and ending on the last (all of them when total ≤ n):
 * a heatmap's steps, so that its maps and the work of drawing it do not grow with the step count.
 */
export function spreadSteps(total: number, n: number): number[] {
  if (total <= n) return Array.from({ length: total }, (_, i) => i + 1);
  return Array.from({ length: n }, (_, i) => Math.round(((i + 1) * total) / n));
}

/** Resolves the layer selection against the model's cross-attention layers. */
export function selectLayers(opt: CaptureAttentionOptions['layers'], all: string[], latentH: number, levels: number): string[] {
  if (opt === undefined || opt === 'cross') return all;
  if (Array.isArray(opt)) {
    for (const l of opt) if (!all.includes(l)) throw invalid('captureAttention.layers', 'cross-attention layers of this UNet (unknown layer)', l);
    return [...new Set(opt)];
  }
  if (opt && typeof opt === 'object' && Number.isInteger(opt.resolution)) {
    const sel = all.filter((l) => latentH / layerDownsampling(l, levels) === opt.resolution);
    if (sel.length === 0)
      throw invalid('captureAttention.layers.resolution', `a resolution some cross-attention layer works at for this image size (latent side ${latentH} / 2^level)`, opt.resolution);
    return sel;
  }
  throw invalid('captureAttention.layers', "'cross', an array of layer names or { resolution }", opt);
}

export function selectSteps(opt: CaptureAttentionOptions['steps'], steps: number): Set<number> {
  if (opt === undefined || opt === 'all') return new Set(Array.from({ length: steps }, (_, i) => i + 1));
  if (!Array.isArray(opt) || opt.some((s) => !Number.isInteger(s) || s < 1 || s > steps))
    throw invalid('captureAttention.steps', `'all' or step numbers in [1, ${steps}]`, opt);
  return new Set(opt);
}

/** One image's probabilities [heads, h·w, n], copied, or averaged over the heads with `reduce`. */
function headMaps(cond: Float32Array, heads: number, hw: number, n: number, reduce: boolean): Float32Array {
  if (!reduce) return cond.slice();
  const out = new Float32Array(hw * n);
  for (let h = 0; h < heads; h++) {
    const src = cond.subarray(h * hw * n, (h + 1) * hw * n);
    for (let i = 0; i < src.length; i++) out[i]! += src[i]! / heads;
  }
  return out;
}

/** Where a captured layer's probabilities come from: which layer, step and batch layout. */
export interface CapturedAt {
  layer: string;
  /** 1-based step number and its timestep. */
  step: number;
  timestep: number;
  /** Images in the batch; with guidance the rows are [unconditional × images, conditional × images]. */
  images: number;
  guided: boolean;
  /** The latents' height and the UNet's resolution levels (for the layer's map size). */
  latentHeight: number;
  levels: number;
  /** Average the heads. */
  reduce: boolean;
}

/**
 * One captured layer at one step, probabilities [rows·heads, h·w, tokens] float32 → a map per
 * image of its conditional rows (image k's block is row images + k with guidance, else row k).
 */
export function conditionalAttentionMaps(all: Float32Array, shape: readonly number[], at: CapturedAt): AttentionMap[] {
  const [bh, hw, tokens] = shape as [number, number, number];
  const heads = bh / (at.guided ? 2 * at.images : at.images);
  const lh = at.latentHeight / layerDownsampling(at.layer, at.levels);
  const per = heads * hw * tokens;
  return Array.from({ length: at.images }, (_, k) => {
    const row = at.guided ? at.images + k : k;
    return {
      layer: at.layer, step: at.step, timestep: at.timestep, image: k, heads: at.reduce ? 1 : heads, height: lh, width: hw / lh, tokens,
      data: headMaps(all.subarray(row * per, (row + 1) * per), heads, hw, tokens, at.reduce),
    };
  });
}

/** Positions of `token` (an index, or a word/piece of the prompt, or '<id>' for identity slots). */
export function tokenPositions(capture: AttentionCapture, token: number | string): number[] {
  if (typeof token === 'number') {
    if (!Number.isInteger(token) || token < 0 || token >= capture.tokens.length)
      throw invalid('token index', `an integer in [0, ${capture.tokens.length})`, token);
    return [token];
  }
  const placeholder = /^<id(?::([^<>]*))?>$/.exec(token);
  if (placeholder) {
    const name = placeholder[1];
    const pos = [...capture.slots.keys()].filter((i) => capture.slots[i]! >= 0 && (name === undefined || capture.slotNames[capture.slots[i]!] === name));
    if (pos.length) return pos;
    throw invalid('token', 'a placeholder naming an identity slot of the prompt', token);
  }
  const want = token.toLowerCase();
  const pos = capture.tokens.map((p, i) => (p.replace(/<\/w>$/, '') === want ? i : -1)).filter((i) => i >= 0);
  if (pos.length === 0) throw invalid('token', `a token of the prompt (tokens: ${capture.tokens.filter((x) => x !== '<|endoftext|>').join(' ')})`, token);
  return pos;
}

/**
 * A heatmap of how much the image attends to `token`, averaged over the captured layers and
 * steps (each map resized to the image), blended over `image` (or shown alone without one).
 */
export async function attentionHeatmap(
  result: { attention?: AttentionCapture; images?: RawImage[] },
  token: number | string,
  opts: { image?: RawImage; alpha?: number } = {},
): Promise<RawImage> {
  const cap = result.attention;
  if (!cap || cap.maps.length === 0) throw invalid('result.attention', 'captured maps (pass captureAttention to generate())', cap ? shown('no maps') : undefined);
  const base = opts.image ?? result.images?.[0];
  const W = base?.width ?? cap.maps[0]!.width * 8;
  const H = base?.height ?? cap.maps[0]!.height * 8;
  const pos = tokenPositions(cap, token);
  // sharp is loaded on demand so that engines without image I/O (servers, the GPU check) need not load it.
  const { default: sharp } = await import('sharp');
  const acc = new Float32Array(W * H);
  for (const m of cap.maps) {
    const hw = m.height * m.width;
    const small = new Float32Array(hw);
    for (let h = 0; h < m.heads; h++)
      for (let i = 0; i < hw; i++) for (const p of pos) small[i]! += m.data[(h * hw + i) * m.tokens + p]! / m.heads;
    let max = 0;
    for (const v of small) max = Math.max(max, v);
    const u8 = Uint8Array.from(small, (v) => (max > 0 ? Math.round((v / max) * 255) : 0));
    // b-w: sharp's resize of a one-channel raw image returns three channels otherwise.
    const big = await sharp(Buffer.from(u8), { raw: { width: m.width, height: m.height, channels: 1 } }).resize(W, H, { kernel: 'cubic' }).toColourspace('b-w').raw().toBuffer();
    for (let i = 0; i < W * H; i++) acc[i]! += big[i]! / 255 / cap.maps.length;
  }
  let max = 0;
  for (const v of acc) max = Math.max(max, v);
  const alpha = opts.alpha ?? 0.55;
  const data = new Uint8Array(W * H * 3);
  for (let i = 0; i < W * H; i++) {
    const v = max > 0 ? acc[i]! / max : 0;
    // A black → red → yellow → white ramp.
    const heat = [Math.min(1, v * 3), Math.min(1, Math.max(0, v * 3 - 1)), Math.max(0, v * 3 - 2)];
    for (let c = 0; c < 3; c++) {
      const under = base ? base.data[i * 3 + c]! / 255 : 0;
      data[i * 3 + c] = Math.round(255 * (base ? (1 - alpha) * under + alpha * heat[c]! : heat[c]!));
    }
  }
  return { width: W, height: H, channels: 3, data };
}

/** One heatmap per image of a batch: image i's own maps over image i (attentionHeatmap averages every map it is given). */
export async function imageHeatmaps(result: { attention?: AttentionCapture; images: RawImage[] }, token: number | string): Promise<RawImage[]> {
  const cap = result.attention;
  return Promise.all(result.images.map((image, i) =>
    attentionHeatmap({ ...(cap ? { attention: { ...cap, maps: cap.maps.filter((m) => m.image === i) } } : {}), images: [image] }, token)));
}
