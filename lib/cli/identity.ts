// `idforge identity encode|learn|show`: an identity file from a face photo (DreamIdentity's encoder,
// or SeFi-IDE learning on an SD model), and what a file holds. Every flag is checked, and the photo
// and the output path with it, before a model loads.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError, flagError, flagUsage, int, num, readFlags, required, type Flag } from '../cliargs.js';
import { Engine } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { Identity, IDENTITY_FORMAT } from '../identity/identity.js';
import { checkWritable, imageSize } from '../io/image.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { resolveLearn, type LearnOptions } from '../learn/options.js';
import type { LoadOptions } from '../runtime/sd.js';
import { validateDevice } from '../validate.js';
import { duration, interruptible } from './progress.js';

interface Plan {
  encoder?: string;
  model?: string;
  photos: string[];
  out?: string;
  name?: string;
  faceIndex?: number;
  centre?: boolean;
  load: LoadOptions;
  learn: LearnOptions;
  fresh?: boolean;
}

const shared: Flag<Plan>[] = [
  { name: 'photo', arg: 'FILE', help: 'face photo (JPEG, PNG, WebP, ...); the largest face is used (required)', set: (p, v) => { p.photos.push(String(v)); } },
  { name: 'out', arg: 'FILE', help: 'identity file to write, .safetensors (required)', set: (p, v) => { p.out = String(v); } },
  { name: 'name', arg: 'TEXT', help: 'a name stored in the file', set: (p, v) => { p.name = String(v); } },
  { name: 'face-index', arg: 'N', help: 'which face, by size: 0 the largest (0)', set: (p, v) => {
    p.faceIndex = int(String(v), 'face-index');
    if (p.faceIndex < 0) throw flagError('face-index', `must be ≥ 0, got ${p.faceIndex}`);
  } },
  { name: 'centre', help: "no face found: use the photo's centre square instead of failing with E_NO_FACE", set: (p) => { p.centre = true; } },
  { name: 'device', arg: 'D', help: 'auto | cpu | cuda (auto)', set: (p, v) => { p.load.device = String(v) as LoadOptions['device']; } },
];

export const ENCODE_FLAGS: Flag<Plan>[] = [
  { name: 'encoder', arg: 'DIR', help: 'DreamIdentity ID encoder folder (config.json + model.safetensors) (required)', set: (p, v) => { p.encoder = String(v); } },
  ...shared,
  { name: 'dtype', arg: 'T', help: 'float32 | float16 (float16 on CUDA, float32 on the CPU)', set: (p, v) => { p.load.dtype = String(v) as LoadOptions['dtype']; } },
];

export const LEARN_FLAGS: Flag<Plan>[] = [
  { name: 'model', arg: 'DIR|FILE', help: 'SD 1.x model to learn on (required)', set: (p, v) => { p.model = String(v); } },
  ...shared,
  { name: 'steps', arg: 'N', help: 'learning steps (1000; SD 1.5 wants ~1000)', set: (p, v) => { p.learn.steps = num(String(v), 'steps')!; } },
  { name: 'lr', arg: 'X', help: 'Adam learning rate (0.005)', set: (p, v) => { p.learn.lr = num(String(v), 'lr')!; } },
  { name: 'lambda', arg: 'X', help: 'weight of the face-wise attention loss (0.003)', set: (p, v) => { p.learn.lambda = num(String(v), 'lambda')!; } },
  { name: 'seed', arg: 'N', help: 'seed of the learning run (random)', set: (p, v) => { p.learn.seed = num(String(v), 'seed')!; } },
  { name: 'init', arg: 'WORD', help: 'the word every token starts from; a person word crops around the face (person)', set: (p, v) => { p.learn.init = String(v); } },
  { name: 'checkpoint', arg: 'DIR', help: 'folder that makes learning resumable: a rerun (more --steps, or after Ctrl-C) continues (OUT.checkpoint)', set: (p, v) => { p.learn.checkpoint = String(v); } },
  { name: 'checkpoint-every', arg: 'N', help: 'steps between checkpoints (100)', set: (p, v) => { p.learn.checkpointEvery = num(String(v), 'checkpoint-every')!; } },
  { name: 'fresh', help: 'start afresh, replacing the checkpoint', set: (p) => { p.fresh = true; } },
  { name: 'dtype', arg: 'T', help: 'float32 only: learning needs float32 compute (float32)', set: (p, v) => { p.load.dtype = String(v) as LoadOptions['dtype']; } },
];

export const IDENTITY_USAGE = `usage: idforge identity encode --encoder DIR --photo FILE --out ID.safetensors [options]   (DreamIdentity: instant)
       idforge identity learn --model DIR --photo FILE --out ID.safetensors [options]      (SeFi-IDE: learned, minutes)
       idforge identity show ID.safetensors [--json]
then:  idforge generate --model DIR --identity ID.safetensors --prompt "a photo of <id> as a chef"

identity encode:
${flagUsage(ENCODE_FLAGS)}
identity learn:
${flagUsage(LEARN_FLAGS)}`;

/** The photo (exactly one), the output path and the face choice, checked before any model loads. */
async function checkCommon(p: Plan, command: string): Promise<{ photo: string; out: string }> {
  if (p.photos.length === 0) required(undefined, 'photo', command);
  const photo = p.photos[0]!;
  const out = required(p.out, 'out', command);
  if (path.extname(out).toLowerCase() !== '.safetensors') throw flagError('out', `must name a .safetensors file, got '${out}'`);
  checkWritable(out);
  await imageSize(photo); // exists and decodes (header only)
  return { photo, out };
}

function loadOptions(p: Plan): LoadOptions {
  const { device, dtype } = validateDevice(p.load);
  return { device, ...(dtype ? { dtype } : {}) };
}

/** E_NO_FACE in command-line words (the library's message names its option, not the flag). */
function noFace(e: unknown, photo: string): never {
  if (e instanceof IdforgeError && e.code === 'E_NO_FACE')
    throw new IdforgeError('E_NO_FACE', `no face found in ${photo} (use a photo with a clear, frontal face, or pass --centre to use the photo's centre)`, { cause: e });
  throw e;
}

const faceChoice = (p: Plan) => ({ ...(p.faceIndex !== undefined ? { faceIndex: p.faceIndex } : {}), ...(p.centre ? { noFaceFallback: true } : {}) });

async function encode(argv: string[]): Promise<number> {
  const p: Plan = { photos: [], load: {}, learn: {} };
  if (readFlags(argv, ENCODE_FLAGS, p).help) return usage();
  const dir = required(p.encoder, 'encoder', 'identity encode');
  const { photo, out } = await checkCommon(p, 'identity encode');
  const load = loadOptions(p);
  const { IdEncoder } = await import('../dreamidentity/encoder.js');
  const encoder = await IdEncoder.load(dir, load);
  try {
    const t0 = Date.now();
    const identity = await encoder.encode(photo, {
      ...faceChoice(p), ...(p.name !== undefined ? { name: p.name } : {}), onWarning: (w) => process.stderr.write(`warning: ${w}\n`),
    }).catch((e: unknown) => noFace(e, photo));
    identity.save(out, { textDim: identity.dim, source: path.basename(photo) });
    process.stderr.write(`wrote ${out}: DreamIdentity, ${identity.words} words × ${identity.dim} (${duration((Date.now() - t0) / 1000)})\n`);
    return 0;
  } finally {
    encoder.dispose();
  }
}

/** The checkpoint folder: an existing folder, or a new one in a writable folder. */
function checkFolder(dir: string): void {
  if (fs.existsSync(dir)) {
    if (!fs.statSync(dir).isDirectory()) throw flagError('checkpoint', `${dir} exists and is not a folder`);
  } else checkWritable(dir);
}

async function learn(argv: string[]): Promise<number> {
  const p: Plan = { photos: [], load: {}, learn: {} };
  if (readFlags(argv, LEARN_FLAGS, p).help) return usage();
  const model = required(p.model, 'model', 'identity learn');
  const { photo, out } = await checkCommon(p, 'identity learn');
  if (p.load.dtype === 'float16') throw flagError('dtype', 'float16: learning needs float32 compute (its attention loss is not accurate in float16); generate with the identity on any engine');
  const checkpoint = p.learn.checkpoint ?? `${out.slice(0, -'.safetensors'.length)}.checkpoint`;
  checkFolder(checkpoint);
  // No seed given: the learner picks one, or takes the checkpoint's when it continues one.
  const opts: LearnOptions = { ...p.learn, checkpoint, ...(p.fresh ? { resume: false } : {}), ...(p.name !== undefined ? { name: p.name } : {}) };
  const o = resolveLearn(opts, ['<id>']); // the checks only: the learner brings its own templates
  if (p.faceIndex !== undefined || p.centre) opts.face = faceChoice(p);
  const engine = await Engine.load(model, { ...loadOptions(p), dtype: 'float32' });
  const keep = (identity: Identity) => identity.save(out, { textDim: identity.dim, vocabHash: engine.tokenizer.vocabHash, source: path.basename(photo) });
  let first = 0;
  let last = 0;
  try {
    const identity = await interruptible((signal) => engine.learnIdentity(photo, {
      ...opts, signal,
      onWarning: (w) => process.stderr.write(`warning: ${w}\n`),
      onProgress: (s) => {
        first ||= s.step;
        last = s.step;
        // A continued run starts past step 1: the pace is this run's steps over this run's time.
        const left = s.step >= first ? duration(((s.steps - s.step) * s.elapsedMs) / (s.step - first + 1) / 1000) : '?';
        process.stderr.write(`\rlearning ${s.step}/${s.steps}  loss ${s.loss.toFixed(4)} (diffusion ${s.lossDiff.toFixed(4)}, attention ${s.lossAtt.toExponential(2)})  ${duration(s.elapsedMs / 1000)}, ETA ${left}\x1b[K`);
      },
    })).catch((e: unknown) => {
      if (!(e instanceof IdforgeError && e.code === 'E_ABORTED')) return noFace(e, photo);
      // The learner wrote a checkpoint of the steps done before it stopped: keep its identity.
      const partial = path.join(checkpoint, 'checkpoint', 'identity.safetensors');
      if (!fs.existsSync(partial)) throw new IdforgeError('E_ABORTED', `stopped before the first step of ${o.steps}; nothing was learned`, { cause: e });
      keep(Identity.load(partial));
      throw new IdforgeError('E_ABORTED', `stopped after step ${last} of ${o.steps}: the identity learned so far is in ${out}; the same command continues from there (checkpoint ${checkpoint})`, { cause: e });
    });
    process.stderr.write('\n');
    keep(identity);
    const resumed = first > 1 ? `, continued from step ${first - 1}` : '';
    process.stderr.write(`wrote ${out}: SeFi-IDE, ${identity.stages} stages × ${identity.words} word × ${identity.dim}, ${o.steps} steps${resumed}; checkpoint ${checkpoint} (more --steps continue from it, --fresh starts over)\n`);
    return 0;
  } finally {
    engine.dispose();
  }
}

/** What an identity file holds (it is fully validated first: a damaged file is E_MODEL_FORMAT). */
export function describeIdentity(file: string): Record<string, string | number> {
  const id = Identity.load(file);
  const st = SafetensorsFile.open(file);
  try {
    const m = st.metadata;
    return {
      file, format: `${IDENTITY_FORMAT} ${m.version}`, method: id.method, ...(id.name !== undefined ? { name: id.name } : {}),
      stages: id.stages, words: id.words, dim: id.dim, ...(m.text_dim ? { textDim: Number(m.text_dim) } : {}),
      kv: id.kvShared ? 'shared (K = V)' : 'separate K and V', ...(m.source ? { photo: m.source } : {}),
      ...(m.created ? { created: m.created } : {}), vocabHash: m.vocab_hash || 'not recorded', bytes: fs.statSync(file).size,
    };
  } finally {
    st.close();
  }
}

const METHOD_NAMES: Record<string, string> = { dreamidentity: 'DreamIdentity (encoded)', 'sefi-ide': 'SeFi-IDE (learned)', custom: 'custom' };

function show(argv: string[]): number {
  const p = { json: false };
  const { positionals, help } = readFlags(argv, [{ name: 'json', help: 'print JSON', set: (q: typeof p) => { q.json = true; } }], p, { positionals: true });
  if (help) return usage();
  if (positionals.length !== 1) throw new UsageError(`identity show takes one identity file, got ${positionals.length} (see idforge identity --help)`);
  const d = describeIdentity(positionals[0]!);
  if (p.json) {
    process.stdout.write(`${JSON.stringify(d, null, 2)}\n`);
    return 0;
  }
  const kb = (Number(d.bytes) / 1024).toFixed(1);
  const lines = [
    `${d.file}: ${d.format}`,
    `  method   ${METHOD_NAMES[String(d.method)] ?? d.method}`,
    ...(d.name !== undefined ? [`  name     ${d.name}`] : []),
    `  shape    ${d.stages} stage(s) × ${d.words} word(s) × ${d.dim}${d.textDim !== undefined && d.textDim !== d.dim ? ` (text width ${d.textDim})` : ''}, ${d.kv}`,
    `  photo    ${d.photo ?? 'not recorded'}`,
    ...(d.created !== undefined ? [`  created  ${d.created}`] : []),
    `  vocab    ${String(d.vocabHash).slice(0, 16)}${String(d.vocabHash).length > 16 ? '…' : ''}`,
    `  size     ${kb} KiB (${d.bytes} bytes)`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

function usage(): number {
  process.stdout.write(`${IDENTITY_USAGE}\n`);
  return 0;
}

export async function identityCmd(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'encode') return encode(rest);
  if (sub === 'learn') return learn(rest);
  if (sub === 'show') return show(rest);
  if (sub === '--help' || sub === '-h') return usage();
  if (sub === undefined) throw new UsageError('identity needs a command: encode, learn or show (see idforge identity --help)');
  throw new UsageError(`unknown identity command '${sub}' (encode, learn or show; see idforge identity --help)`);
}
