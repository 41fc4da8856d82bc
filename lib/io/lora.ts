/**
 * LoRA files: which weight of the model each low-rank pair updates, and the pair itself. Three
 * namings are read:
 *  - kohya / A1111 / ComfyUI: `lora_unet_<module path with '.' → '_'>` and `lora_te_<…>`, each
 *    with `.lora_down.weight`, `.lora_up.weight` and an optional 0-dim `.alpha`;
 *  - diffusers / PEFT: `unet.<module path>.lora_A.weight` (down) and `.lora_B.weight` (up),
 *    `text_encoder.<…>`, alpha = rank unless an `.alpha` key says otherwise;
 *  - older diffusers: `<prefix>.<module path>.lora.down.weight` / `.lora.up.weight`, the attention
 *    processors' `<attention path>.processor.to_q_lora.down.weight` (to_out_lora → to_out.0; the
 *    prefix may be missing: then the UNet), and `….lora_linear_layer.down.weight`.
 * A kohya name is resolved by matching it against the model's own module paths with '.' → '_':
 * turning '_' back into '.' is ambiguous (time_emb_proj, conv_shortcut, to_out_0, proj_in).
 * Merging (W' = W + scale·(alpha/rank)·up@down) happens on the device: lib/runtime/lora.ts.
 */
import { IdforgeError } from '../errors.js';
import { SafetensorsFile } from './safetensors.js';

export type LoraComponent = 'unet' | 'text';

/** One low-rank update of one model weight. */
export interface LoraModule {
  component: LoraComponent;
  /** The model's weight it updates (internal name, e.g. `mid_block.attentions.0.proj_in.weight`). */
  weight: string;
  /** The file's key prefix, for messages. */
  key: string;
  rank: number;
  alpha: number;
  /** up [O, rank] and down [rank, I], row-major float32 (I = the weight's elements per output row). */
  up: Float32Array;
  down: Float32Array;
}

export interface LoraFile {
  path: string;
  modules: LoraModule[];
  /** What `strict: false` skipped (a key naming no module, a shape that does not fit). */
  warnings: string[];
}

/** The model's weights a LoRA may update: per component, internal name → shape. */
export type LoraTargets = Record<LoraComponent, ReadonlyMap<string, { readonly shape: readonly number[] }>>;

const KOHYA = /^(lora_unet|lora_te)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const PREFIXED = /^(unet|text_encoder)\.(.+?)\.(lora_A\.weight|lora_B\.weight|lora\.down\.weight|lora\.up\.weight|lora_linear_layer\.down\.weight|lora_linear_layer\.up\.weight|alpha)$/;
const PROCESSOR = /^(?:(unet|text_encoder)\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/;
/** LyCORIS network types and extras this merge does not implement (named in the error). */
const UNSUPPORTED = /\.(hada_|lokr_|lora_mid|dora_scale|diff|on_input|w_norm|b_norm)/;

interface Part {
  component: LoraComponent;
  /** Module path in the model (resolved), or the kohya name while unresolved. */
  module: string;
  kohya: boolean;
  key: string;
  down?: string;
  up?: string;
  alpha?: string;
}

const S = (s: readonly number[]) => JSON.stringify(s);

/** kohya name → module path for every weight of a component ('.' → '_'); ambiguous names map to null. */
function kohyaIndex(prefix: string, targets: ReadonlyMap<string, unknown>): Map<string, string | null> {
  const m = new Map<string, string | null>();
  for (const name of targets.keys()) {
    if (!name.endsWith('.weight')) continue;
    const module = name.slice(0, -'.weight'.length);
    const k = `${prefix}_${module.replace(/\./g, '_')}`;
    m.set(k, m.has(k) ? null : module);
  }
  return m;
}

/**
 * Reads a LoRA file against a model's weights. Every key must name a module of the model and every
 * pair must fit its weight: otherwise E_MODEL_FORMAT naming the key and the expected shape, or,
 * with `strict: false`, a warning and the module skipped.
 */
export function readLora(path: string, targets: LoraTargets, opts: { strict?: boolean } = {}): LoraFile {
  return parseLora(path, targets, opts.strict ?? true, true);
}

/**
 * readLora's checks on the file's header alone (names, shapes, dtypes; the values are not read):
 * what `strict: false` would skip, or E_MODEL_FORMAT. For offering a folder's files cheaply.
 */
export function checkLora(path: string, targets: LoraTargets, opts: { strict?: boolean } = {}): string[] {
  return parseLora(path, targets, opts.strict ?? true, false).warnings;
}

/** `values` false: header checks only, and no modules returned. */
function parseLora(path: string, targets: LoraTargets, strict: boolean, values: boolean): LoraFile {
  const warnings: string[] = [];
  const problem = (msg: string) => {
    if (strict) throw new IdforgeError('E_MODEL_FORMAT', `${path}: ${msg}`);
    warnings.push(`${path}: ${msg} (skipped)`);
  };
  const st = SafetensorsFile.open(path);
  try {
    const parts = new Map<string, Part>();
    const part = (component: LoraComponent, module: string, kohya: boolean, key: string): Part => {
      const id = `${component}:${module}`;
      let p = parts.get(id);
      if (!p) parts.set(id, (p = { component, module, kohya, key }));
      return p;
    };
    for (const key of st.names()) {
      let m: RegExpExecArray | null;
      if ((m = KOHYA.exec(key))) {
        const p = part(m[1] === 'lora_unet' ? 'unet' : 'text', `${m[1]}_${m[2]}`, true, key.slice(0, key.length - m[3]!.length - 1));
        const role = m[3] === 'alpha' ? 'alpha' : m[3] === 'lora_down.weight' ? 'down' : 'up';
        p[role] = key;
      } else if ((m = PROCESSOR.exec(key))) {
        const proj = m[3] === 'to_out' ? 'to_out.0' : m[3]!;
        const p = part(m[1] === 'text_encoder' ? 'text' : 'unet', `${m[2]}.${proj}`, false, key.slice(0, key.lastIndexOf('_lora.') + 5));
        p[m[4] === 'down' ? 'down' : 'up'] = key;
      } else if ((m = PREFIXED.exec(key))) {
        const p = part(m[1] === 'unet' ? 'unet' : 'text', m[2]!, false, `${m[1]}.${m[2]}`);
        const r = m[3]!;
        p[r === 'alpha' ? 'alpha' : /lora_A|down/.test(r) ? 'down' : 'up'] = key;
      } else if (UNSUPPORTED.test(key)) {
        problem(`"${key}" belongs to a LyCORIS network type (LoHa, LoKr, Tucker, DoRA, …) that idforge does not merge; plain LoRA / LoCon only`);
      } else {
        problem(`"${key}" is not a LoRA key idforge knows (kohya lora_unet_…/lora_te_… with lora_down/lora_up/alpha, or diffusers/PEFT unet.…/text_encoder.… with lora_A/lora_B)`);
      }
    }
    const index = { unet: kohyaIndex('lora_unet', targets.unet), text: kohyaIndex('lora_te', targets.text) };
    const modules: LoraModule[] = [];
    for (const p of parts.values()) {
      const what = p.component === 'unet' ? 'UNet' : 'text encoder';
      let module: string | null | undefined = p.module;
      if (p.kohya) module = index[p.component].get(p.module);
      if (module === null) {
        problem(`"${p.key}" matches more than one module of the model's ${what}`);
        continue;
      }
      const weight = `${module}.weight`;
      const w = module === undefined ? undefined : targets[p.component].get(weight);
      if (!w) {
        problem(`"${p.key}" names no module of this model's ${what} (a LoRA for another base model?)`);
        continue;
      }
      if (!p.down || !p.up) {
        problem(`"${p.key}" has ${p.down ? 'a down' : 'an up'} matrix but no ${p.down ? 'up' : 'down'} matrix`);
        continue;
      }
      const mod = readPair(st, p, weight, w.shape, problem, values);
      if (mod) modules.push(mod);
    }
    return { path, modules, warnings };
  } finally {
    st.close();
  }
}

/** The pair's shapes checked against weight W [O, …] (rank r: down [r, …W's trailing dims] or [r, I], up [O, r(, 1, 1)]). */
function readPair(st: SafetensorsFile, p: Part, weight: string, shape: readonly number[], problem: (msg: string) => void, values: boolean): LoraModule | undefined {
  const down = st.info(p.down!);
  const up = st.info(p.up!);
  const O = shape[0]!;
  const tail = shape.slice(1);
  const I = tail.reduce((a, b) => a * b, 1);
  const r = down.shape[0] ?? 0;
  const dTail = down.shape.slice(1);
  const downFits = r > 0 && dTail.reduce((a, b) => a * b, 1) === I && (dTail.length !== tail.length || dTail.every((d, i) => d === tail[i]));
  const upFits = up.shape.length >= 2 && up.shape[0] === O && up.shape[1] === r && up.shape.slice(2).every((d) => d === 1);
  if (!downFits || !upFits) {
    const bad = !downFits ? p.down! : p.up!;
    const got = !downFits ? down.shape : up.shape;
    const want = !downFits ? `[rank, ${tail.join(', ')}]` : `[${O}, ${r}${up.shape.length === 4 ? ', 1, 1' : ''}]`;
    problem(`"${bad}" is ${S(got)} but the model's weight "${weight}" is ${S(shape)}: expected ${want}`);
    return undefined;
  }
  for (const k of [p.down!, p.up!, ...(p.alpha ? [p.alpha] : [])]) {
    const dt = st.info(k).dtype;
    if (dt !== 'F32' && dt !== 'F16' && dt !== 'BF16') {
      problem(`"${k}" is ${dt}; LoRA tensors must be float32, float16 or bfloat16`);
      return undefined;
    }
  }
  if (!values) return undefined;
  let alpha = r;
  if (p.alpha) {
    const a = st.readFloat32(p.alpha);
    if (a.length !== 1) {
      problem(`"${p.alpha}" must hold one number, got ${a.length}`);
      return undefined;
    }
    alpha = a[0]!;
  }
  const d = st.readFloat32(p.down!);
  const u = st.readFloat32(p.up!);
  if (!Number.isFinite(alpha) || d.some((v) => !Number.isFinite(v)) || u.some((v) => !Number.isFinite(v))) {
    problem(`"${p.key}" holds NaN or Inf values`);
    return undefined;
  }
  return { component: p.component, weight, key: p.key, rank: r, alpha, up: u, down: d };
}
