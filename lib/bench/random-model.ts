/**
 * A synthetic model source: the real module layout of a Stable Diffusion 1.x UNet, VAE and CLIP
 * text encoder (diffusers / transformers naming, as the loaders present it internally) with seeded
 * random weights generated on demand. Engine.fromSource runs it through exactly the code path of
 * real weights (Weights reads each TensorRef's bytes once and uploads them), so the benchmark
 * measures real SD 1.5 sizes without a 4 GB download.
 *
 * The layout mirrors diffusers' UNet2DConditionModel / AutoencoderKL and transformers'
 * CLIPTextModel module by module; test/bench.test.ts checks that, built from the tiny fixture's
 * configs, it yields exactly the fixture's tensor names and shapes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdforgeError } from '../errors.js';
import { BUNDLED_TOKENIZER_DIR, WeightMap, type Component, type ModelSource, type TensorRef } from '../io/checkpoint.js';
import { parseTinyVaeConfig, sd15Scheduler, SD15_TEXT, SD15_UNET, SD15_VAE, type ModelConfigs, type TextConfig, type UNetConfig, type VaeConfig } from '../io/configs.js';
import { f32ToF16 } from '../io/half.js';
import { modelLayout, type Init, type LayoutEntry } from '../io/layout.js';
import { integer, invalid, oneOf } from '../validate.js';

export { unetLayout, vaeLayout, textLayout, modelLayout, type Init, type LayoutEntry } from '../io/layout.js';

// ---------------------------------------------------------------------------------------------
// Seeded values

/**
 * 2^16 standard-normal quantiles Φ⁻¹((i + ½) / 2^16): one 32-bit random word then gives two
 * N(0, 1) samples by table look-up, ~10× faster than Box–Muller in JS (the SD 1.5 weights are a
 * billion numbers). The tails are cut at ±4.3σ, which is irrelevant for timing-only weights.
 */
let quantiles: Float32Array | undefined;

function normalQuantiles(): Float32Array {
  if (quantiles) return quantiles;
  const q = new Float32Array(65536);
  for (let i = 0; i < 65536; i++) q[i] = inverseNormalCdf((i + 0.5) / 65536);
  quantiles = q;
  return q;
}

/** Acklam's rational approximation of Φ⁻¹ (relative error < 1.2e-9). */
function inverseNormalCdf(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  }
  if (p > 1 - lo) return -inverseNormalCdf(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}

/** FNV-1a of a string, mixed with the seed: each tensor's stream depends only on (seed, component, name). */
function tensorSeed(seed: number, key: string): number {
  let h = (0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** `n` samples of `init` from a xoshiro128** stream seeded by `seed`. */
export function sampleInit(init: Init, n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  if (init.kind === 'const') return init.value === 0 ? out : out.fill(init.value);
  const q = normalQuantiles();
  const std = init.std;
  // xoshiro128** with SplitMix32-style seeding of its four words.
  let z = seed >>> 0;
  const mix = () => {
    z = (z + 0x9e3779b9) >>> 0;
    let x = z;
    x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
    x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
    return (x ^ (x >>> 16)) | 0;
  };
  let s0 = mix(), s1 = mix(), s2 = mix(), s3 = mix();
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1;
  for (let i = 0; i < n; i += 2) {
    const m = Math.imul(s1, 5);
    const r = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    out[i] = q[r & 0xffff]! * std;
    if (i + 1 < n) out[i + 1] = q[r >>> 16]! * std;
  }
  return out;
}

class RandomTensorRef implements TensorRef {
  readonly key: string;
  constructor(
    readonly name: string,
    readonly shape: number[],
    readonly dtype: 'F32' | 'F16',
    readonly file: string,
    private readonly init: Init,
    private readonly seed: number,
  ) {
    this.key = name;
  }
  readFloat32(): Float32Array {
    return sampleInit(this.init, this.shape.reduce((a, b) => a * b, 1), this.seed);
  }
  readBytes(): Buffer {
    const f = this.readFloat32();
    const typed = this.dtype === 'F16' ? f32ToF16(f) : f;
    return Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength);
  }
}

// ---------------------------------------------------------------------------------------------
// The source

export interface RandomModelOptions {
  /** Seeds every tensor (default 0). */
  seed?: number;
  /** Stored dtype the refs report: F16 halves the host bytes when the engine computes in float16. */
  dtype?: 'F32' | 'F16';
  /** A folder with vocab.json + merges.txt (default: the bundled CLIP tokenizer, else the test fixture's). */
  tokenizerDir?: string;
  /** A name for messages and the engine's modelPath (default "random:<preset>"). */
  name?: string;
  /** 'tiny': a TAESD (AutoencoderTiny of the original architecture: 64 channels, blocks 1,3,3,3 / 3,3,3,1) in place of the KL VAE. */
  vae?: 'tiny';
}

export type RandomPreset = 'sd15';

/** SD 1.5's configs (UNet, VAE, CLIP ViT-L/14 text tower, scheduler), as fresh mutable copies. */
export function sd15Configs(): ModelConfigs {
  return {
    unet: structuredClone({ ...SD15_UNET }) as UNetConfig,
    vae: structuredClone({ ...SD15_VAE }) as VaeConfig,
    text: structuredClone({ ...SD15_TEXT }) as TextConfig,
    scheduler: sd15Scheduler(),
  };
}

const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));

function hasTokenizer(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'vocab.json')) && fs.existsSync(path.join(dir, 'merges.txt'));
}

/** The bundled CLIP tokenizer, or the tiny fixture's (the same vocabulary) in a source checkout without assets/. */
export function defaultTokenizerDir(): string {
  const candidates = [BUNDLED_TOKENIZER_DIR, path.join(PACKAGE_ROOT, 'test', 'fixtures', 'tiny-sd', 'tokenizer')];
  const found = candidates.find(hasTokenizer);
  if (!found) throw new IdforgeError('E_NOT_FOUND', `no CLIP tokenizer (vocab.json + merges.txt) in ${candidates.join(' or ')}`);
  return found;
}

/** Every component's tensor list for `configs`. */

/** A ModelSource with the layout of `preset` (or of explicit configs) and seeded random weights made on demand. */
export function randomModelSource(preset: RandomPreset | ModelConfigs, opts: RandomModelOptions = {}): ModelSource {
  let configs: ModelConfigs;
  if (preset === 'sd15') configs = sd15Configs();
  else if (preset && typeof preset === 'object' && 'unet' in preset) configs = preset;
  else throw invalid('random model preset', "'sd15' or a configs object", preset);
  if (opts.vae === 'tiny') configs = { ...configs, vae: parseTinyVaeConfig({}, 'random TAESD') };
  const seed = opts.seed ?? 0;
  integer(seed, 'seed', Number.MIN_SAFE_INTEGER);
  const dtype = opts.dtype ?? 'F32';
  oneOf(dtype, 'dtype', ['F32', 'F16'] as const);
  const name = opts.name ?? `random:${typeof preset === 'string' ? preset : 'custom'}`;
  const tokenizerDir = opts.tokenizerDir ?? defaultTokenizerDir();
  const layout = modelLayout(configs);
  const maps = {} as Record<Component, WeightMap>;
  for (const comp of ['unet', 'vae', 'text'] as const) {
    const map = new WeightMap(comp, name);
    for (const e of layout[comp]) {
      if (map.has(e.name)) throw new IdforgeError('E_INTERNAL', `random model: duplicate ${comp} tensor ${e.name}`);
      map.set(e.name, new RandomTensorRef(e.name, e.shape, dtype, name, e.init, tensorSeed(seed, `${comp}/${e.name}`)));
    }
    maps[comp] = map;
  }
  const source: ModelSource = {
    kind: 'diffusers',
    path: name,
    configs,
    tokenizerDir,
    weights: maps,
    warnings: [],
    close() {},
    [Symbol.dispose]() {},
  };
  return source;
}

/** Parameter count of a layout. */
export function paramCount(entries: readonly LayoutEntry[]): number {
  let n = 0;
  for (const e of entries) n += e.shape.reduce((a, b) => a * b, 1);
  return n;
}
