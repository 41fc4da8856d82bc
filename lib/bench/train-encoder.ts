/**
 * `npm run bench -- --train-encoder`: the time of one DreamIdentity encoder training step
 * (EncoderTrainer.trainStep: encoder + text encoder + UNet forward and backward, clipping and the
 * Adam update in place on the device, one native call) per batch size, with peak memory and the
 * planned activation peak of the training graph (planMemory over shape-only weights). The SD-1.5-shaped run uses the synthetic
 * SD 1.5 (lib/bench/random-model.ts) and a random ViT-B/16 face encoder at 112² (12 blocks of
 * width 768, taps 3, 6, 9, final, projectors 768 → 1024 → 768).
 */
import { parseArgs } from 'node:util';
import { Engine } from '../engine.js';
import { planMemory } from '../graph/autodiff.js';
import { Graph } from '../graph/graph.js';
import { ShapeWeights } from '../graph/weights.js';
import type { IdEncoderConfig } from '../dreamidentity/config.js';
import { IdEncoder } from '../dreamidentity/encoder.js';
import { hostRefs, idEncoderLayout, type HostWeight } from '../dreamidentity/encoder-weights.js';
import { memory } from '../native.js';
import { normalGenerator, randn } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import { buildEncoderTrainGraph, EncoderTrainer } from '../dreamidentity/encoder-trainer.js';
import { TrainableWeights } from '../optim/params.js';
import { stats } from './index.js';
import { randomModelSource, textLayout, unetLayout } from './random-model.js';
import type { Stats } from './report.js';
import { invalid } from '../validate.js';

export const TRAIN_USAGE = `usage: npm run bench -- --train-encoder (--model DIR --encoder DIR | --random sd15) [options]
  --size N          image side (default 256; latents N/8)
  --batch 1,4       batch sizes to time (default 1,4)
  --steps N         timed steps per batch size (default 3)   --warmup N (default 1)
  --json FILE       also write the report as JSON`;

/** A ViT-B/16 face encoder at 112² for SD 1.5 (text width 768). */
export function vitB16Config(textDim = 768): IdEncoderConfig {
  return {
    imageSize: 112, patchSize: 16, hiddenSize: 768, numLayers: 12, numHeads: 12, mlpHidden: 3072, eps: 1e-6,
    taps: [3, 6, 9, 'final'], projectorHidden: 1024, textDim, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5],
  };
}

/** Seeded random weights: N(0, 0.02²) matrices and embeddings, unit norms, zero biases. */
export function randomIdEncoderWeights(c: IdEncoderConfig, seed = 0): Map<string, HostWeight> {
  const next = normalGenerator(seed);
  const m = new Map<string, HostWeight>();
  for (const { name, shape } of idEncoderLayout(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = name.endsWith('.bias') ? new Float32Array(n) : /norm\d?\.weight$/.test(name) ? new Float32Array(n).fill(1) : Float32Array.from({ length: n }, () => next() * 0.02);
    m.set(name, { shape, data });
  }
  return m;
}

export interface TrainBenchRow {
  batch: number;
  firstMs: number;
  /** The whole step: forward, backward, clipping and Adam (one native call). */
  stepMs: Stats;
  plannedActivationBytes: number;
}

export interface TrainBenchReport {
  command: string;
  model: string;
  encoder: string;
  size: number;
  trainableParams: number;
  rows: TrainBenchRow[];
  maxRssBytes: number;
  nativePeakBytes: number;
}

const now = () => performance.now();

/** The options of `npm run bench -- --train-encoder` (parsed once, by the CLI and by benchTrainEncoder). */
export function parseTrainBenchArgs(argv: string[]) {
  return parseArgs({
    args: argv.filter((a) => a !== '--train-encoder'),
    options: { model: { type: 'string' }, encoder: { type: 'string' }, random: { type: 'string' }, size: { type: 'string' }, batch: { type: 'string' }, steps: { type: 'string' }, warmup: { type: 'string' }, json: { type: 'string' }, quiet: { type: 'boolean' }, help: { type: 'boolean' } },
  }).values;
}

export async function benchTrainEncoder(argv: string[], log: (s: string) => void): Promise<TrainBenchReport> {
  const v = parseTrainBenchArgs(argv);
  if (!!v.model === !!v.random || (v.model && !v.encoder) || (v.random && v.random !== 'sd15')) throw invalid('the arguments', `as the usage says:\n${TRAIN_USAGE}`);
  const size = Number(v.size ?? 256);
  const batches = (v.batch ?? '1,4').split(',').map(Number);
  const steps = Number(v.steps ?? 3);
  const warmup = Number(v.warmup ?? 1);
  if (![size, steps, warmup, ...batches].every(Number.isInteger)) throw invalid('--size, --steps, --warmup and --batch', `integers, as the usage says:\n${TRAIN_USAGE}`);
  const engine = v.model ? await Engine.load(v.model, { device: 'cpu' }) : Engine.fromSource(randomModelSource('sd15'), { device: 'cpu', dtype: 'float32' });
  const enc = v.encoder ? await IdEncoder.load(v.encoder, { device: 'cpu' }) : undefined;
  const encoder = enc ?? { config: vitB16Config(engine.configs.text.hiddenSize), weights: randomIdEncoderWeights(vitB16Config(engine.configs.text.hiddenSize)) };
  let nativePeak = 0;
  const sample = () => (nativePeak = Math.max(nativePeak, memory().cpu));
  try {
    using trainer = new EncoderTrainer({ engine, encoder });
    const trainable = trainer.trainableCount;
    const weights = trainer.hostWeights();
    const cfg = trainer.config;
    const C = engine.configs.unet.inChannels;
    const h = size / engine.latentFactor;
    const rows: TrainBenchRow[] = [];
    // Shape-only weights for the memory planner (the same for every batch size).
    const text = new ShapeWeights('text', textLayout(engine.configs.text));
    const unet = new ShapeWeights('unet', unetLayout(engine.configs.unet));
    const shapeRefs = hostRefs(new Map([...weights].map(([n, w]) => [n, { shape: w.shape, data: new Float32Array(0) }])));
    for (const B of batches) {
      // The planned activation peak of this graph (no weights needed).
      const g = new Graph();
      const encW = new TrainableWeights('enc', shapeRefs, { device: 'cpu', dtype: 'float32' }, trainer.trainable);
      buildEncoderTrainGraph(g, { text, unet, encoder: encW }, engine.configs, cfg, [B, C, h, h], trainer.regWeight);
      const planned = planMemory(g).peakBytes;
      using faces = Tensor.from(randn(1, B * 3 * cfg.imageSize ** 2), [B, 3, cfg.imageSize, cfg.imageSize]);
      using latents = Tensor.from(randn(2, B * C * h * h), [B, C, h, h]);
      using noise = Tensor.from(randn(3, B * C * h * h), [B, C, h, h]);
      const batch = { faces, latents, noise, prompts: Array.from({ length: B }, () => 'a photo of <id> as a chef'), timesteps: Array.from({ length: B }, (_, i) => 100 + 200 * i) };
      let first = 0;
      const stepMs: number[] = [];
      for (let i = 0; i < warmup + steps; i++) {
        const s = now();
        const r = await trainer.trainStep(batch, { lr: 1e-6, clipNorm: 1 });
        const ms = now() - s;
        sample();
        if (i === 0) first = ms;
        if (i >= warmup) stepMs.push(ms);
        log(`batch ${B}: step ${i + 1}/${warmup + steps} ${ms.toFixed(0)} ms, loss ${r.loss.toFixed(4)}`);
      }
      rows.push({ batch: B, firstMs: first, stepMs: stats(stepMs), plannedActivationBytes: planned });
    }
    return {
      command: `npm run bench -- ${argv.join(' ')}`, model: v.model ?? 'random sd15', encoder: v.encoder ?? 'random ViT-B/16 at 112²', size,
      trainableParams: trainable, rows, maxRssBytes: process.resourceUsage().maxRSS * 1024, nativePeakBytes: nativePeak,
    };
  } finally {
    enc?.dispose();
    engine.dispose();
  }
}

export function formatTrainReport(r: TrainBenchReport): string {
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  const lines = [
    `encoder training step — ${r.model}, ${r.encoder}, ${r.size}×${r.size} (CPU float32), ${(r.trainableParams / 1e6).toFixed(2)} M trainable parameters`,
    'batch | first step ms | step ms median (min–max), Adam included | planned activation peak',
  ];
  for (const x of r.rows)
    lines.push(`${x.batch} | ${x.firstMs.toFixed(0)} | ${x.stepMs.median.toFixed(0)} (${x.stepMs.min.toFixed(0)}–${x.stepMs.max.toFixed(0)}) | ${gib(x.plannedActivationBytes)}`);
  lines.push(`peak RSS ${gib(r.maxRssBytes)}, native CPU peak ${gib(r.nativePeakBytes)}`);
  return lines.join('\n');
}
