/**
 * The tiny autoencoder (diffusers' AutoencoderTiny, TAESD) as a list of modules, in the order of
 * diffusers' EncoderTiny / DecoderTiny `layers` (nn.Sequential: every module, ReLU and Upsample
 * included, takes an index): what lib/vae/taesd.ts builds and lib/io/layout.ts lists (the weights
 * a loaded model is checked against and a random one is made from).
 * The original TAESD files (taesd_encoder.safetensors / taesd_decoder.safetensors, as A1111 and
 * ComfyUI use them) hold the same nn.Sequential without the `encoder.layers.` prefix; the
 * decoder's starts with a parameterless Clamp module, so its indices are one higher.
 */
import type { TinyVaeConfig, VaeConfig } from './configs.js';

export type TinyModule =
  | { kind: 'conv'; name: string; out: number; inp: number; stride: number; bias: boolean }
  /** conv.0 → ReLU → conv.2 → ReLU → conv.4, plus a 1x1 `skip` conv when in ≠ out, then ReLU. */
  | { kind: 'block'; name: string; out: number; inp: number }
  | { kind: 'relu' }
  | { kind: 'upsample' };

/** EncoderTiny: conv, blocks, then per level a stride-2 conv (no bias) and blocks, then conv out. */
export function tinyEncoderModules(cfg: VaeConfig): TinyModule[] {
  const t = cfg.tiny!;
  const m: TinyModule[] = [];
  const at = () => `encoder.layers.${m.length}`;
  let c = cfg.inChannels;
  t.encoderBlockOutChannels.forEach((ch, i) => {
    m.push({ kind: 'conv', name: at(), out: ch, inp: c, stride: i === 0 ? 1 : 2, bias: i === 0 });
    c = ch;
    for (let j = 0; j < t.numEncoderBlocks[i]!; j++) m.push({ kind: 'block', name: at(), out: ch, inp: ch });
  });
  m.push({ kind: 'conv', name: at(), out: cfg.latentChannels, inp: c, stride: 1, bias: true });
  return m;
}

/** DecoderTiny: conv, ReLU, then per level blocks, upsampling (not after the last) and a conv. */
export function tinyDecoderModules(cfg: VaeConfig): TinyModule[] {
  const t = cfg.tiny!;
  const m: TinyModule[] = [];
  const at = () => `decoder.layers.${m.length}`;
  const levels = t.decoderBlockOutChannels.length;
  m.push({ kind: 'conv', name: at(), out: t.decoderBlockOutChannels[0]!, inp: cfg.latentChannels, stride: 1, bias: true });
  m.push({ kind: 'relu' });
  let c = t.decoderBlockOutChannels[0]!;
  t.decoderBlockOutChannels.forEach((ch, i) => {
    for (let j = 0; j < t.numDecoderBlocks[i]!; j++) {
      m.push({ kind: 'block', name: at(), out: ch, inp: c });
      c = ch;
    }
    const last = i === levels - 1;
    if (!last) m.push({ kind: 'upsample' });
    m.push({ kind: 'conv', name: at(), out: last ? cfg.outChannels : ch, inp: c, stride: 1, bias: last });
    c = last ? cfg.outChannels : ch;
  });
  return m;
}

/** The original TAESD files: `taesd_decoder.safetensors` key `N.…` is `decoder.layers.(N−1).…`, the encoder's `N.…` is `encoder.layers.N.…`. */
export function originalTaesdName(key: string, part: 'encoder' | 'decoder'): string | undefined {
  const m = /^(\d+)\.(.+)$/.exec(key);
  if (!m) return undefined;
  const i = Number(m[1]) - (part === 'decoder' ? 1 : 0);
  return i < 0 ? undefined : `${part}.layers.${i}.${m[2]}`;
}

/** The original TAESD's architecture (taesd.py: 64 channels, encoder blocks 1,3,3,3, decoder 3,3,3,1). */
export const ORIGINAL_TAESD: Readonly<Omit<TinyVaeConfig, 'decoderOnly'>> = Object.freeze({
  encoderBlockOutChannels: [64, 64, 64, 64],
  decoderBlockOutChannels: [64, 64, 64, 64],
  numEncoderBlocks: [1, 3, 3, 3],
  numDecoderBlocks: [3, 3, 3, 1],
});
