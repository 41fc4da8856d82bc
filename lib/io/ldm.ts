/**
 * Key mapping from the original CompVis/LDM single-file layout (and older diffusers names) to the
 * internal naming, which is current diffusers naming within each component. Follows diffusers'
 * convert_from_ckpt for SD 1.x; every index is derived from the keys present, never from SD 1.5's sizes.
 */
import { IdforgeError } from '../errors.js';

export const LDM_UNET_PREFIX = 'model.diffusion_model.';
export const LDM_VAE_PREFIX = 'first_stage_model.';
export const LDM_TEXT_PREFIX = 'cond_stage_model.transformer.';

/** A mapped tensor: internal name, the key in the file, and whether [C,C,1,1] must become [C,C]. */
export interface KeyMapping {
  key: string;
  squeeze1x1: boolean;
}

export interface ConvertResult {
  mapping: Map<string, KeyMapping>;
  /** Keys (as given) that matched no rule. */
  unknown: string[];
}

const RESNET_LDM: Record<string, string> = {
  'in_layers.0': 'norm1',
  'in_layers.2': 'conv1',
  'emb_layers.1': 'time_emb_proj',
  'out_layers.0': 'norm2',
  'out_layers.3': 'conv2',
  skip_connection: 'conv_shortcut',
};

function mapUnetResnet(rest: string): string | null {
  for (const [from, to] of Object.entries(RESNET_LDM)) {
    if (rest.startsWith(from + '.')) return to + rest.slice(from.length);
  }
  return null;
}

export interface LdmUnetLayout {
  levels: number;
  layersPerBlock: number;
}

function fmt(file: string, msg: string): IdforgeError {
  return new IdforgeError('E_MODEL_FORMAT', `${file}: ${msg}`);
}

/** Number of levels and resnets per level, from which input_blocks exist and which hold a downsampler. */
export function ldmUnetLayout(keys: readonly string[], file: string): LdmUnetLayout {
  const inputIdx = new Set<number>();
  const downIdx = new Set<number>();
  for (const k of keys) {
    const m = /^input_blocks\.(\d+)\.(\d+)\.(.*)$/.exec(k);
    if (!m) continue;
    const b = Number(m[1]);
    inputIdx.add(b);
    if (m[3]!.startsWith('op.')) downIdx.add(b);
  }
  if (!inputIdx.has(0)) throw fmt(file, `UNet has no ${LDM_UNET_PREFIX}input_blocks.0.0 (conv_in): not an SD 1.x LDM checkpoint`);
  const total = Math.max(...inputIdx) + 1;
  const levels = downIdx.size + 1;
  const layersPerBlock = total / levels - 1;
  const ok = Number.isInteger(layersPerBlock) && layersPerBlock >= 1 && inputIdx.size === total &&
    [...downIdx].every((b) => b % (layersPerBlock + 1) === 0);
  if (!ok) throw fmt(file, `unrecognised UNet layout: ${total} input_blocks with downsamplers at [${[...downIdx].sort((a, b) => a - b).join(', ')}]`);
  return { levels, layersPerBlock };
}

/** Maps UNet keys with the `model.diffusion_model.` prefix already stripped. */
export function convertLdmUnet(keys: readonly string[], file: string): ConvertResult & { layout: LdmUnetLayout } {
  const layout = ldmUnetLayout(keys, file);
  const per = layout.layersPerBlock + 1;
  const mapping = new Map<string, KeyMapping>();
  const unknown: string[] = [];
  const put = (name: string, key: string) => mapping.set(name, { key, squeeze1x1: false });
  for (const k of keys) {
    let m: RegExpExecArray | null;
    let name: string | null = null;
    if ((m = /^time_embed\.([02])\.(.*)$/.exec(k))) {
      name = `time_embedding.linear_${m[1] === '0' ? 1 : 2}.${m[2]}`;
    } else if ((m = /^input_blocks\.0\.0\.(.*)$/.exec(k))) {
      name = `conv_in.${m[1]}`;
    } else if ((m = /^out\.([02])\.(.*)$/.exec(k))) {
      name = `${m[1] === '0' ? 'conv_norm_out' : 'conv_out'}.${m[2]}`;
    } else if ((m = /^input_blocks\.(\d+)\.(\d+)\.(.*)$/.exec(k))) {
      const b = Number(m[1]) - 1;
      const i = Math.floor(b / per);
      const j = b % per;
      const rest = m[3]!;
      if (j === layout.layersPerBlock) {
        if (rest.startsWith('op.')) name = `down_blocks.${i}.downsamplers.0.conv.${rest.slice(3)}`;
      } else if (m[2] === '0') {
        const r = mapUnetResnet(rest);
        if (r) name = `down_blocks.${i}.resnets.${j}.${r}`;
      } else if (m[2] === '1') {
        name = `down_blocks.${i}.attentions.${j}.${rest}`;
      }
    } else if ((m = /^middle_block\.([012])\.(.*)$/.exec(k))) {
      const rest = m[2]!;
      if (m[1] === '1') name = `mid_block.attentions.0.${rest}`;
      else {
        const r = mapUnetResnet(rest);
        if (r) name = `mid_block.resnets.${m[1] === '0' ? 0 : 1}.${r}`;
      }
    } else if ((m = /^output_blocks\.(\d+)\.(\d+)\.(.*)$/.exec(k))) {
      const b = Number(m[1]);
      const i = Math.floor(b / per);
      const j = b % per;
      const rest = m[3]!;
      if (m[2] === '0') {
        const r = mapUnetResnet(rest);
        if (r) name = `up_blocks.${i}.resnets.${j}.${r}`;
      } else if (rest.startsWith('conv.')) {
        // The upsampler is the last sub-module: index 1 without attention, 2 with it.
        name = `up_blocks.${i}.upsamplers.0.conv.${rest.slice(5)}`;
      } else if (m[2] === '1') {
        name = `up_blocks.${i}.attentions.${j}.${rest}`;
      }
    }
    if (name === null) unknown.push(k);
    else put(name, k);
  }
  return { mapping, unknown, layout };
}

const VAE_ATTN_LDM: Record<string, string> = { norm: 'group_norm', q: 'to_q', k: 'to_k', v: 'to_v', proj_out: 'to_out.0' };

function mapVaeResnet(rest: string): string | null {
  const m = /^(norm1|norm2|conv1|conv2|nin_shortcut)\.(.*)$/.exec(rest);
  if (!m) return null;
  return `${m[1] === 'nin_shortcut' ? 'conv_shortcut' : m[1]}.${m[2]}`;
}

/** Maps VAE keys with the `first_stage_model.` prefix already stripped. */
export function convertLdmVae(keys: readonly string[], file: string): ConvertResult & { levels: number } {
  const upIdx = new Set<number>();
  for (const k of keys) {
    const m = /^decoder\.up\.(\d+)\./.exec(k);
    if (m) upIdx.add(Number(m[1]));
  }
  const levels = upIdx.size;
  if (levels === 0 || Math.max(...upIdx) !== levels - 1) {
    throw fmt(file, `VAE decoder levels ${JSON.stringify([...upIdx])} are not 0..n-1 (missing ${LDM_VAE_PREFIX}decoder.up.*?)`);
  }
  const mapping = new Map<string, KeyMapping>();
  const unknown: string[] = [];
  for (const k of keys) {
    let m: RegExpExecArray | null;
    let name: string | null = null;
    let squeeze1x1 = false;
    if (/^(quant_conv|post_quant_conv|encoder\.conv_in|encoder\.conv_out|decoder\.conv_in|decoder\.conv_out)\./.test(k)) {
      name = k;
    } else if ((m = /^(encoder|decoder)\.norm_out\.(.*)$/.exec(k))) {
      name = `${m[1]}.conv_norm_out.${m[2]}`;
    } else if ((m = /^encoder\.down\.(\d+)\.block\.(\d+)\.(.*)$/.exec(k))) {
      const r = mapVaeResnet(m[3]!);
      if (r) name = `encoder.down_blocks.${m[1]}.resnets.${m[2]}.${r}`;
    } else if ((m = /^encoder\.down\.(\d+)\.downsample\.conv\.(.*)$/.exec(k))) {
      name = `encoder.down_blocks.${m[1]}.downsamplers.0.conv.${m[2]}`;
    } else if ((m = /^decoder\.up\.(\d+)\.block\.(\d+)\.(.*)$/.exec(k))) {
      const r = mapVaeResnet(m[3]!);
      if (r) name = `decoder.up_blocks.${levels - 1 - Number(m[1])}.resnets.${m[2]}.${r}`;
    } else if ((m = /^decoder\.up\.(\d+)\.upsample\.conv\.(.*)$/.exec(k))) {
      name = `decoder.up_blocks.${levels - 1 - Number(m[1])}.upsamplers.0.conv.${m[2]}`;
    } else if ((m = /^(encoder|decoder)\.mid\.block_([12])\.(.*)$/.exec(k))) {
      const r = mapVaeResnet(m[3]!);
      if (r) name = `${m[1]}.mid_block.resnets.${Number(m[2]) - 1}.${r}`;
    } else if ((m = /^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.*)$/.exec(k))) {
      name = `${m[1]}.mid_block.attentions.0.${VAE_ATTN_LDM[m[2]!]}.${m[3]}`;
      squeeze1x1 = m[2] !== 'norm';
    }
    if (name === null) unknown.push(k);
    else mapping.set(name, { key: k, squeeze1x1 });
  }
  return { mapping, unknown, levels };
}

const VAE_ATTN_OLD: Record<string, string> = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' };

/**
 * Diffusers VAE folders saved before diffusers 0.14 name the mid-block attention
 * query/key/value/proj_attn (sometimes with 1x1-conv shapes). Returns the current name, or the key
 * unchanged when it is not such a name.
 */
export function modernVaeName(key: string): string {
  const m = /^(encoder|decoder)\.mid_block\.attentions\.(\d+)\.(query|key|value|proj_attn)\.(weight|bias)$/.exec(key);
  if (!m) return key;
  return `${m[1]}.mid_block.attentions.${m[2]}.${VAE_ATTN_OLD[m[3]!]}.${m[4]}`;
}

/** True for VAE attention projection weights, which the internal naming stores as [C, C]. */
export function isVaeAttentionProjection(name: string): boolean {
  return /^(encoder|decoder)\.mid_block\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(name);
}

/** Buffers, not weights: dropped wherever they appear. */
export function isDroppedBuffer(name: string): boolean {
  return /(^|\.)position_ids$/.test(name);
}

/** Maps text-encoder keys with `cond_stage_model.transformer.` already stripped. */
export function convertLdmText(keys: readonly string[]): ConvertResult {
  const mapping = new Map<string, KeyMapping>();
  const unknown: string[] = [];
  for (const k of keys) {
    if (isDroppedBuffer(k)) continue;
    // transformers < 4.? stored CLIPTextModel without the `text_model.` level.
    const name = k.startsWith('text_model.') ? k : /^(embeddings|encoder|final_layer_norm)\./.test(k) ? `text_model.${k}` : null;
    if (name === null) unknown.push(k);
    else mapping.set(name, { key: k, squeeze1x1: false });
  }
  return { mapping, unknown };
}
