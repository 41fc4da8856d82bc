// `idforge generate`: its flags are one table (GENERATE_FLAGS); each entry parses its value into
// the plan, every value is then checked (resolveGenerate against SD 1.5's shape, the identities and the prompt's
// placeholders, the output paths) before the model loads, and only then does the work start.
import * as path from 'node:path';
import { heatmapCapture, imageHeatmaps } from '../attention.js';
import { flagError, flagUsage, loraArg, num, readFlags, required, type Flag } from '../cliargs.js';
import { Engine } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { Identity } from '../identity/identity.js';
import { expandPrompt } from '../identity/placeholders.js';
import { BUNDLED_TOKENIZER_DIR } from '../io/checkpoint.js';
import { SD15_TEXT, SD15_UNET, SD15_VAE, sd15Scheduler } from '../io/configs.js';
import { checkImageOutput, imageSize, loadImageCover, saveImage } from '../io/image.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { identityMap, resolveGenerate, type GenerateModel, type GenerateOptions, type GenerateResult } from '../generate/options.js';
import { identityRegions, regionBoxes, type Box } from '../regions.js';
import type { LoadOptions } from '../runtime/sd.js';
import type { SamplerName } from '../sched/sampler.js';
import { ClipTokenizer } from '../text/tokenizer.js';
import { crossAttentionLayers } from '../unet/unet.js';
import { validateDevice } from '../validate.js';
import { interruptible, progressBar } from './progress.js';

/** What the command line asks for; the flags fill it in, the checks read it, the run carries it out. */
export interface GenerateCommand {
  model?: string;
  load: LoadOptions;
  gen: Omit<GenerateOptions, 'prompt' | 'image'> & { prompt?: string };
  identities: { name?: string; file: string }[];
  image?: string;
  out: string;
  attentionMap?: string;
  /** LoRA files merged before generating (Engine.setLoras). */
  loras: { path: string; scale: number }[];
}

const NAMED = /^([A-Za-z0-9_][A-Za-z0-9_-]{0,63})=(.+)$/;
type P = GenerateCommand;

/** The flags of `idforge generate`, in the order the usage lists them (one entry per flag). */
export const GENERATE_FLAGS: Flag<P>[] = [
  { name: 'model', arg: 'DIR|FILE', help: 'SD 1.x diffusers folder or single .safetensors file (required)', set: (p, v) => { p.model = String(v); } },
  { name: 'prompt', arg: 'TEXT', help: 'the prompt; <id> (or <id:name>) where the person goes (required)', set: (p, v) => { p.gen.prompt = String(v); } },
  { name: 'negative', arg: 'TEXT', help: 'negative prompt ("")', set: (p, v) => { p.gen.negativePrompt = String(v); } },
  { name: 'identity', arg: 'FILE|NAME=FILE', help: 'identity file that <id> names; NAME=FILE for <id:NAME>', multiple: true, set: (p, v) => {
    const m = NAMED.exec(String(v));
    p.identities.push(m ? { name: m[1]!, file: m[2]! } : { file: String(v) });
  } },
  { name: 'identity-scale', arg: 'X', help: "identity strength: 0 a generic person, 1 as made (1), > 1 exaggerated", set: (p, v) => { p.gen.identityScale = num(String(v), 'identity-scale')!; } },
  { name: 'attention-map', arg: 'FILE', help: 'also write where the identity attends, over the image (heatmap)', set: (p, v) => { p.attentionMap = String(v); } },
  { name: 'region', arg: 'NAME=X0,Y0,X1,Y1', help: 'keep identity NAME inside this box (fractions of the image, e.g. ann=0,0,0.5,1)', multiple: true, set: (p, v) => {
    const m = NAMED.exec(String(v));
    const b = (m?.[2] ?? '').split(',').map((x) => (x.trim() === '' ? NaN : Number(x)));
    if (!m || b.length !== 4 || b.some((x) => !Number.isFinite(x))) throw flagError('region', `takes NAME=x0,y0,x1,y1 (fractions of the image, e.g. ann=0,0,0.5,1), got '${String(v)}'`);
    const regions = (p.gen.regions ??= {}) as Record<string, Box>;
    if (Object.hasOwn(regions, m[1]!)) throw flagError('region', `gives '${m[1]}' two boxes`);
    regions[m[1]!] = [b[0]!, b[1]!, b[2]!, b[3]!];
  } },
  { name: 'steps', arg: 'N', help: 'sampler steps (50)', set: (p, v) => { p.gen.steps = num(String(v), 'steps')!; } },
  { name: 'sampler', arg: 'S', help: 'ddim | dpmpp-2m | dpmpp-2m-karras | euler | euler-a | lcm (ddim)', set: (p, v) => { p.gen.sampler = String(v) as SamplerName; } },
  { name: 'lora', arg: 'FILE[:X]', help: 'merge a LoRA file at scale X (1) (LCM-LoRA: --sampler lcm --guidance 1 --steps 4)', multiple: true, set: (p, v) => { p.loras.push(loraArg(String(v))); } },
  { name: 'vae', arg: 'DIR', help: "another VAE in place of the model's (e.g. a TAESD folder: fast decodes)", set: (p, v) => { p.load.vae = String(v); } },
  { name: 'guidance', arg: 'X', help: 'classifier-free guidance scale (7.5)', set: (p, v) => { p.gen.guidanceScale = num(String(v), 'guidance')!; } },
  { name: 'seed', arg: 'N', help: 'seed of the deterministic generator (random; -1: random)', set: (p, v) => {
    const s = num(String(v), 'seed')!;
    if (s !== -1) p.gen.seed = s;
  } },
  { name: 'width', arg: 'N', help: 'image width (512, or --image\'s; a multiple of the model\'s downsampling)', set: (p, v) => { p.gen.width = num(String(v), 'width')!; } },
  { name: 'height', arg: 'N', help: 'image height (512, or --image\'s)', set: (p, v) => { p.gen.height = num(String(v), 'height')!; } },
  { name: 'num-images', arg: 'N', help: 'images in one batch, image i seeded with seed + i (1); written as out-0.png, ...', set: (p, v) => { p.gen.numImages = num(String(v), 'num-images')!; } },
  { name: 'image', arg: 'FILE', help: 'image to image: start from this picture, at its size, or resized to cover --width x --height (centre crop; a missing side keeps the aspect)', set: (p, v) => { p.image = String(v); } },
  { name: 'strength', arg: 'X', help: 'image to image: how much of the schedule runs, (0, 1] (0.8)', set: (p, v) => { p.gen.strength = num(String(v), 'strength')!; } },
  { name: 'device', arg: 'D', help: 'auto | cpu | cuda (auto)', set: (p, v) => { p.load.device = String(v) as LoadOptions['device']; } },
  { name: 'dtype', arg: 'T', help: 'float32 | float16 (float16 on CUDA, float32 on the CPU)', set: (p, v) => { p.load.dtype = String(v) as LoadOptions['dtype']; } },
  { name: 'out', arg: 'FILE', help: 'output image (out.png)', set: (p, v) => { p.out = String(v); } },
];

export const GENERATE_USAGE = `usage: idforge generate --model <dir|file.safetensors> --prompt "text" [options]
${flagUsage(GENERATE_FLAGS)}`;

/** `out.png` → `out-ann.png`. */
function suffixed(file: string, suffix: string): string {
  const ext = path.extname(file);
  return `${file.slice(0, file.length - ext.length)}-${suffix}${ext}`;
}

/** `out.png` → `out-3.png` (image 3 of a batch; a batch of one keeps the name). */
export const numbered = (file: string, i: number, n: number): string => (n === 1 ? file : suffixed(file, String(i)));

/** The identities named on the command line, loaded and checked (files read now, before any model). */
function loadIdentities(list: GenerateCommand['identities']): Pick<GenerateOptions, 'identity' | 'identities'> {
  if (list.length === 0) return {};
  const unnamed = list.filter((i) => i.name === undefined);
  if (list.length === 1 && unnamed.length === 1) return { identity: Identity.load(list[0]!.file) };
  if (unnamed.length) throw flagError('identity', `needs NAME=FILE when several identities are given (e.g. --identity ann=ann.safetensors and <id:ann> in the prompt), got '${unnamed[0]!.file}'`);
  const identities: Record<string, Identity> = {};
  for (const { name, file } of list) {
    if (Object.hasOwn(identities, name!)) throw flagError('identity', `names '${name}' twice`);
    identities[name!] = Identity.load(file);
  }
  return { identities };
}

/**
 * SD 1.5's shape, for the checks made before the model loads: sizes are multiples of 64 there
 * (VAE ×8 and UNet ×8: every SD 1.x model, the tiny test model too); generate() checks every
 * option again against the model's own configs.
 */
const SD1: GenerateModel = {
  configs: { unet: SD15_UNET, vae: SD15_VAE, text: SD15_TEXT, scheduler: sd15Scheduler() },
  sizeMultiple: 64, latentFactor: 8, latentMultiple: 8, crossAttentionLayers: crossAttentionLayers(SD15_UNET),
};

/**
 * Every check that needs no model: the plan → the options generate() will get. --image is read and
 * resized here (to its own size, or to cover --width x --height: a missing side keeps its aspect,
 * rounded to 64).
 */
export async function checkGenerate(plan: GenerateCommand): Promise<{ model: string; load: LoadOptions; opts: GenerateOptions }> {
  const model = required(plan.model, 'model', 'generate');
  const prompt = required(plan.gen.prompt, 'prompt', 'generate');
  const load = { ...plan.load, ...validateDevice(plan.load) };
  if (load.dtype === undefined) delete load.dtype;
  checkImageOutput(plan.out);
  const ids = loadIdentities(plan.identities);
  const given = ids.identity !== undefined || ids.identities !== undefined;
  if (plan.gen.identityScale !== undefined && !given) throw flagError('identity-scale', 'sets the strength of an identity: pass --identity too');
  if (plan.attentionMap !== undefined) {
    if (!given) throw flagError('attention-map', 'shows where an identity attends: pass --identity too');
    checkImageOutput(plan.attentionMap);
  }
  if (plan.gen.regions !== undefined && !given) throw flagError('region', 'keeps an identity inside a box: pass --identity too');
  // The seed is chosen here when none is given, so that the run can say which it was.
  const opts: GenerateOptions = { ...plan.gen, prompt, ...ids, seed: plan.gen.seed ?? Math.floor(Math.random() * 2 ** 31) };
  // The placeholders against the identities given (the bundled CLIP vocabulary is every SD 1.x's),
  // and the regions' names against the prompt's identities.
  const e = expandPrompt(ClipTokenizer.fromDir(BUNDLED_TOKENIZER_DIR), prompt, identityMap(opts));
  identityRegions(regionBoxes(opts.regions), e);
  if (plan.image !== undefined) {
    const size = await imageSize(plan.image);
    if (opts.width === undefined && opts.height === undefined) {
      if (size.width % SD1.sizeMultiple || size.height % SD1.sizeMultiple)
        throw new IdforgeError('E_SHAPE', `--image ${plan.image} is ${size.width}x${size.height}, not a multiple of ${SD1.sizeMultiple} a side; pass --width and --height to resize it`);
    }
    const round = (x: number) => Math.max(SD1.sizeMultiple, Math.round(x / SD1.sizeMultiple) * SD1.sizeMultiple);
    opts.width ??= opts.height === undefined ? size.width : round((opts.height * size.width) / size.height);
    opts.height ??= round((opts.width * size.height) / size.width);
    opts.image = await loadImageCover(plan.image, opts.width, opts.height);
  }
  await resolveGenerate(opts, SD1);
  // The LoRA files' headers now (each is checked against the model once it is loaded).
  for (const l of plan.loras) SafetensorsFile.open(l.path).close();
  return { model, load, opts };
}

async function writeResult(r: GenerateResult, plan: GenerateCommand, opts: GenerateOptions): Promise<string[]> {
  const n = r.images.length;
  const files = r.images.map((_, i) => numbered(plan.out, i, n));
  for (let i = 0; i < n; i++) await saveImage(r.images[i]!, files[i]!);
  if (plan.attentionMap !== undefined) {
    const names = opts.identities ? Object.keys(opts.identities) : [undefined];
    for (const name of names) {
      const maps = await imageHeatmaps(r, name === undefined ? '<id>' : `<id:${name}>`);
      for (let i = 0; i < n; i++) {
        const file = numbered(name === undefined ? plan.attentionMap : suffixed(plan.attentionMap, name), i, n);
        await saveImage(maps[i]!, file);
        files.push(file);
      }
    }
  }
  return files;
}

export async function generateCmd(argv: string[]): Promise<number> {
  const plan: GenerateCommand = { load: {}, gen: {}, identities: [], out: 'out.png', loras: [] };
  if (readFlags(argv, GENERATE_FLAGS, plan).help) {
    process.stdout.write(`${GENERATE_USAGE}\n`);
    return 0;
  }
  const { model, load, opts } = await checkGenerate(plan);
  const engine = await Engine.load(model, load);
  try {
    if (plan.loras.length) await engine.setLoras(plan.loras);
    if (plan.attentionMap !== undefined)
      opts.captureAttention = heatmapCapture(engine.crossAttentionLayers, (opts.height ?? 512) / engine.latentFactor, engine.configs.unet.blockOutChannels.length);
    const r = await interruptible((signal) => engine.generate({
      ...opts, signal, onProgress: (p) => process.stderr.write(progressBar(p.step, p.fraction, p.steps, p.elapsedMs)),
    }));
    process.stderr.write('\n');
    for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
    const files = await writeResult(r, plan, opts);
    r.latents.dispose();
    r.pixels.dispose();
    process.stderr.write(`wrote ${files.join(', ')} (${r.images[0]!.width}x${r.images[0]!.height}, seed ${opts.seed}, ${engine.backend.device} ${engine.backend.dtype})\n`);
    return 0;
  } finally {
    engine.dispose();
  }
}
