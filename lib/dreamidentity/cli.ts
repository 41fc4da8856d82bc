// `idforge train-encoder` and `idforge build-dataset` (issue #13): the DreamIdentity training
// path from the command line. lib/cli.ts dispatches these subcommands here.
import { parseArgs } from 'node:util';
import { Engine } from '../engine.js';
import { IdEncoder } from './encoder.js';
import { num, opt } from '../cliargs.js';
import { trainEncoder } from './train.js';
import type { TrainScope } from './encoder-trainer.js';
import { invalid } from '../validate.js';

export const TRAIN_USAGE = `usage: idforge train-encoder --model <sd> (--encoder <dir> | --backbone <vit.safetensors> --heads N --taps 2,4,6,final)
                     --out <dir> (--faces <dir> and/or --edit-set <dir> ...) [options]
  --projector-hidden N  projector width of a new encoder (1024)
  --mix X             chance a batch row is an edit sample (0.5)
  --steps N (1000)  --batch N (1)  --lr X (1e-4)  --warmup N (100)  --clip X (1)  --reg X (0.01)
  --train S           all | projectors | last:N (all)
  --align A           detect | centre: how photos are cropped for the encoder (detect, as encode does)
  --seed N (0)  --checkpoint-every N (100)  --no-resume  --device auto|cpu|cuda`;


function scope(v: string | undefined): TrainScope {
  if (v === undefined || v === 'all' || v === 'projectors') return v ?? 'all';
  const m = /^last:(\d+)$/.exec(v);
  if (!m) throw invalid('--train', 'all, projectors or last:N', v);
  return { lastBlocks: Number(m[1]) };
}

export async function trainCmd(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' }, encoder: { type: 'string' }, backbone: { type: 'string' }, heads: { type: 'string' },
      taps: { type: 'string' }, 'projector-hidden': { type: 'string' }, faces: { type: 'string' },
      'edit-set': { type: 'string', multiple: true }, mix: { type: 'string' }, out: { type: 'string' },
      steps: { type: 'string' }, batch: { type: 'string' }, lr: { type: 'string' }, warmup: { type: 'string' },
      clip: { type: 'string' }, reg: { type: 'string' }, train: { type: 'string' }, seed: { type: 'string' },
      'checkpoint-every': { type: 'string' }, 'no-resume': { type: 'boolean' }, align: { type: 'string' }, device: { type: 'string' }, help: { type: 'boolean' },
    },
  });
  if (values.help || !values.model || !values.out || (!values.encoder && !values.backbone)) {
    process.stderr.write(`${TRAIN_USAGE}\n`);
    return values.help ? 0 : 2;
  }
  // Training computes in float32 (EncoderTrainer refuses float16).
  const device = (values.device ?? 'auto') as 'auto' | 'cpu' | 'cuda';
  const engine = await Engine.load(values.model, { device, dtype: 'float32' });
  const seed = num(values.seed, 'seed') ?? 0;
  const encoder = values.encoder ?? IdEncoder.create({
    backbone: values.backbone!, device, dtype: 'float32', seed,
    ...opt('numHeads', num(values.heads, 'heads')),
    taps: (values.taps ?? 'final').split(',').map((t) => (t === 'final' ? 'final' : num(t, 'taps')!)),
    textDim: engine.configs.text.hiddenSize, projectorHidden: num(values['projector-hidden'], 'projector-hidden') ?? 1024,
  });
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  try {
    const r = await trainEncoder({
      engine, encoder, out: values.out, seed, signal: ac.signal,
      ...(values.faces ? { faces: values.faces } : {}), ...(values['edit-set'] ? { editSets: values['edit-set'] } : {}),
      // Only the flags given: the defaults are trainEncoder's (the CLI's own: 1000 steps, a 100-step warm-up).
      steps: num(values.steps, 'steps') ?? 1000, warmupSteps: num(values.warmup, 'warmup') ?? 100,
      ...opt('mix', num(values.mix, 'mix')), ...opt('batchSize', num(values.batch, 'batch')), ...opt('lr', num(values.lr, 'lr')),
      ...opt('clipNorm', num(values.clip, 'clip')), ...opt('regWeight', num(values.reg, 'reg')), train: scope(values.train),
      ...opt('checkpointEvery', num(values['checkpoint-every'], 'checkpoint-every')),
      resume: !values['no-resume'], ...(values.align ? { align: values.align as 'detect' | 'centre' } : {}),
      onProgress: (p) => process.stderr.write(`\rstep ${p.step}/${p.steps} loss ${p.loss.toFixed(4)} (diff ${p.lossDiff.toFixed(4)}) lr ${p.lr.toExponential(1)} |g| ${p.gradNorm.toFixed(3)} eta ${(p.etaMs / 1000).toFixed(0)}s   `),
    });
    process.stderr.write(`\nwrote ${r.encoderDir} (steps ${r.startStep}..${r.steps})\n`);
    return 0;
  } finally {
    if (typeof encoder !== 'string') encoder.dispose();
    engine.dispose();
  }
}

export const DATASET_USAGE = `usage: idforge build-dataset --model <sd> --clip <clip dir> --names <names.txt> --edit-prompt "{name} as a chef" [...] --out <dir> [options]
  --base-prompt TEXT  ("a photo of {name}")   --per-name N (number of edit prompts)   --keep X (0.25)
  --seed N (0)  --steps N (30)  --guidance X (7.5)  --width N --height N (the model's native size)
  --face-size N (224)  --device auto|cpu|cuda`;

export async function datasetCmd(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' }, clip: { type: 'string' }, names: { type: 'string' }, 'base-prompt': { type: 'string' },
      'edit-prompt': { type: 'string', multiple: true }, 'per-name': { type: 'string' }, keep: { type: 'string' }, seed: { type: 'string' },
      steps: { type: 'string' }, guidance: { type: 'string' }, width: { type: 'string' }, height: { type: 'string' },
      'face-size': { type: 'string' }, out: { type: 'string' }, device: { type: 'string' }, help: { type: 'boolean' },
    },
  });
  if (values.help || !values.model || !values.clip || !values.names || !values.out || !values['edit-prompt']?.length) {
    process.stderr.write(`${DATASET_USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const device = (values.device ?? 'auto') as 'auto' | 'cpu' | 'cuda';
  const [{ FaceAnalyzer }, { ClipScorer }, { buildEditDataset }] = await Promise.all([import('../faces/index.js'), import('../clip/index.js'), import('./dataset.js')]);
  const engine = await Engine.load(values.model, { device });
  const faces = await FaceAnalyzer.load();
  const clip = await ClipScorer.load(values.clip, { device });
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  try {
    const size = engine.runtime.nativeSize;
    const r = await buildEditDataset({
      engine, faces, clip, names: values.names, editPrompts: values['edit-prompt'], out: values.out, signal: ac.signal,
      generate: { steps: num(values.steps, 'steps') ?? 30, guidanceScale: num(values.guidance, 'guidance') ?? 7.5, width: num(values.width, 'width') ?? size, height: num(values.height, 'height') ?? size },
      ...opt('basePrompt', values['base-prompt']), ...opt('perName', num(values['per-name'], 'per-name')),
      ...opt('keep', num(values.keep, 'keep')), ...opt('seed', num(values.seed, 'seed')), ...opt('faceSize', num(values['face-size'], 'face-size')),
      onProgress: (p) => process.stderr.write(`${p.done}/${p.total} ${p.name}${p.skipped ? ` (skipped: ${p.skipped})` : ''}\n`),
    });
    process.stderr.write(`wrote ${r.manifest}: ${r.rows.length} rows, ${r.kept} kept\n`);
    return 0;
  } finally {
    clip.dispose();
    faces.dispose();
    engine.dispose();
  }
}

