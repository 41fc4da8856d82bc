/**
 * trainEncoder(): DreamIdentity encoder training on a frozen SD model (issue #13 part 5).
 *
 * Data: a folder of face photos (reconstruction: the photo is the target, prompts from templates
 * like "a photo of <id>") and/or edit datasets written by buildEditDataset (lib/dreamidentity/dataset.ts:
 * the base face in, the edited image as the target, its edit prompt), mixed at `mix` (the chance
 * that a batch row is an edit sample). Every image is VAE-encoded ONCE and cached in
 * out/cache/latents.safetensors (mean and σ of the latent posterior), so a step costs one
 * encoder + text encoder + UNet forward/backward.
 *
 * Everything random in step k (rows, templates, timesteps, the latent sample, the noise) is drawn
 * from the step stream of (seed, k) alone, so the data position is the step number and a run
 * resumed from a checkpoint continues bit for bit as if never interrupted. A checkpoint (every
 * `checkpointEvery` steps and at the end) is out/checkpoint/: the encoder (encoder/: config.json +
 * model.safetensors), the Adam state and state.json; an abort or a crash leaves the last one
 * intact. The step stream, the checkpoint folder and the latent cache are lib/optim/resume.ts's,
 * shared with SeFi-IDE learning. The result, out/encoder/, is a normal encoder folder for
 * IdEncoder.load.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IdforgeError, throwIfAborted } from '../errors.js';
import { parseIdEncoderConfig, type IdEncoderConfig } from './config.js';
import { IdEncoder, saveIdEncoder } from './encoder.js';
import { decodeFace, prepareFace } from '../identity/face.js';
import { readJsonFile } from '../io/configs.js';
import { toSignedCHW, type RawImage } from '../io/image.js';
import type { HostWeight } from '../optim/params.js';
import { LatentCache, loadWeights, readCheckpoint, stepRandom, writeCheckpoint } from '../optim/resume.js';
import type { SdRuntime } from '../runtime/sd.js';
import { randn } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import { latentPosterior, sampleLatent } from '../vae/posterior.js';
import { integer, invalid, nonNegative, numberIn, oneOf, text } from '../validate.js';
import { EncoderTrainer, type TrainScope } from './encoder-trainer.js';

/** Reconstruction prompt templates (the face photo is the target). */
export const RECONSTRUCTION_TEMPLATES: readonly string[] = Object.freeze([
  'a photo of <id>', 'a close-up photo of <id>', 'a portrait of <id>', 'a photo of the face of <id>',
]);

const IMAGE_EXT = /\.(png|jpe?g|webp)$/i;

export interface TrainProgress {
  step: number;
  steps: number;
  loss: number;
  lossDiff: number;
  lossReg: number;
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  elapsedMs: number;
  etaMs: number;
}

export interface TrainEncoderOptions {
  engine: { readonly runtime: SdRuntime };
  /** The encoder to start from: an IdEncoder (IdEncoder.create / load) or an encoder folder. */
  encoder: IdEncoder | string;
  /** A folder of face photos (reconstruction samples). */
  faces?: string;
  /** Folders written by buildEditDataset (manifest.jsonl; its kept rows are used). */
  editSets?: readonly string[];
  /** Chance that a batch row is an edit sample when both kinds exist (default 0.5). */
  mix?: number;
  /** Output folder: cache/, checkpoint/, encoder/. */
  out: string;
  steps: number;
  batchSize?: number;
  lr?: number;
  warmupSteps?: number;
  /** Global gradient-norm clip (default 1; 0 = off). */
  clipNorm?: number;
  regWeight?: number;
  train?: TrainScope;
  seed?: number;
  checkpointEvery?: number;
  /** Continue from out/checkpoint when it exists (default true). */
  resume?: boolean;
  templates?: readonly string[];
  /**
   * How the encoder sees a face photo: 'detect' (default) aligns the detected face onto the ArcFace
   * template, as IdEncoder.encode does at inference (E_NO_FACE naming a photo without one);
   * 'centre' takes the photo's centre square (already aligned crops, or drawings).
   */
  align?: 'detect' | 'centre';
  onProgress?: (p: TrainProgress) => void;
  signal?: AbortSignal;
}

export interface TrainResult {
  /** The trained encoder folder (IdEncoder.load reads it). */
  encoderDir: string;
  steps: number;
  /** The step training (re)started from (0 for a fresh run). */
  startStep: number;
  /** Losses of the steps run in this call. */
  losses: number[];
}

interface Sample {
  /** Normalised face [3, S, S]. */
  face: Float32Array;
  mean: Float32Array;
  std: Float32Array;
  /** Edit prompt, or undefined for a reconstruction sample. */
  prompt?: string;
}


function listImages(dir: string): string[] {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new IdforgeError('E_NOT_FOUND', `trainEncoder: faces folder not found: ${dir}`);
  return fs.readdirSync(dir).filter((f) => IMAGE_EXT.test(f)).sort().map((f) => path.join(dir, f));
}

/** Kept rows of an edit dataset's manifest: { face, image, prompt } paths relative to the set. */
export function readEditManifest(dir: string): { face: string; image: string; prompt: string }[] {
  const file = path.join(dir, 'manifest.jsonl');
  if (!fs.existsSync(file)) throw new IdforgeError('E_NOT_FOUND', `trainEncoder: ${dir} has no manifest.jsonl (build it with buildEditDataset)`);
  const rows: { face: string; image: string; prompt: string }[] = [];
  fs.readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new IdforgeError('E_MODEL_FORMAT', `${file}:${i + 1}: not a JSON line`);
    }
    if (r.kept !== true) return;
    if (typeof r.face !== 'string' || typeof r.image !== 'string' || typeof r.prompt !== 'string')
      throw new IdforgeError('E_MODEL_FORMAT', `${file}:${i + 1}: a kept row needs face, image and prompt`);
    rows.push({ face: path.join(dir, r.face), image: path.join(dir, r.image), prompt: r.prompt });
  });
  return rows;
}

/** Faces and latents of every sample; VAE-encoded once, then read from the latent cache (out/cache/latents.safetensors). */
async function loadSamples(rt: SdRuntime, encoder: { normalize(img: RawImage): Float32Array; size: number }, items: { face: string; image: string; prompt?: string; align: 'detect' | 'centre' }[], cacheFile: string, signal?: AbortSignal): Promise<Sample[]> {
  const size = rt.nativeSize;
  const key = JSON.stringify({ size, items: items.map((i) => [i.align, i.face, i.image, i.prompt ?? '', fs.statSync(i.image).size, fs.statSync(i.face).size]) });
  const cache = new LatentCache(cacheFile, key);
  const out: Sample[] = [];
  for (const [i, it] of items.entries()) {
    throwIfAborted(signal, 'trainEncoder');
    let face = cache.get(`face:${i}`);
    let faceImg: RawImage | undefined;
    if (!face) {
      faceImg = await decodeFace(it.face);
      face = encoder.normalize((await prepareFace(faceImg, { size: encoder.size, landmarks: it.align })).image);
      cache.set(`face:${i}`, [3, encoder.size, encoder.size], face);
    }
    const { mean, std } = await cache.posterior(String(i), async () => {
      const target = it.image === it.face ? (faceImg ?? await decodeFace(it.face)) : await decodeFace(it.image);
      using x = Tensor.from(toSignedCHW((await prepareFace(target, { size })).image), [1, 3, size, size]);
      return latentPosterior(await rt.vaeEncode(x));
    });
    out.push({ face, mean, std, ...(it.prompt !== undefined ? { prompt: it.prompt } : {}) });
  }
  cache.save();
  return out;
}

/** The encoder part of a checkpoint: encoder/ (config.json + model.safetensors). */
function readEncoder(dir: string): { config: IdEncoderConfig; weights: Map<string, HostWeight> } {
  const config = parseIdEncoderConfig(readJsonFile(path.join(dir, 'encoder', 'config.json')));
  return { config, weights: loadWeights(path.join(dir, 'encoder', 'model.safetensors')) };
}

export async function trainEncoder(opts: TrainEncoderOptions): Promise<TrainResult> {
  if (!opts || typeof opts !== 'object') throw invalid('options', 'an object', opts, { where: 'trainEncoder' });
  const rt = opts.engine?.runtime;
  const W = 'trainEncoder';
  if (!rt) throw invalid('engine', 'an Engine', opts.engine, { where: W });
  const steps = integer(opts.steps, 'steps', 1, Number.MAX_SAFE_INTEGER, W);
  const B = integer(opts.batchSize ?? 1, 'batchSize', 1, Number.MAX_SAFE_INTEGER, W);
  const lr = nonNegative(opts.lr ?? 1e-4, 'lr', { positive: true, where: W });
  const warm = integer(opts.warmupSteps ?? 0, 'warmupSteps', 0, Number.MAX_SAFE_INTEGER, W);
  const clip = opts.clipNorm ?? 1; // Infinity: never clip
  if (typeof clip !== 'number' || !(clip >= 0)) throw invalid('clipNorm', 'a number ≥ 0 (0: off)', clip, { where: W });
  const seed = integer(opts.seed ?? 0, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, W);
  const every = integer(opts.checkpointEvery ?? 100, 'checkpointEvery', 1, Number.MAX_SAFE_INTEGER, W);
  const mix = numberIn(opts.mix ?? 0.5, 'mix', 0, 1, { where: W });
  text(opts.out, 'out (the output folder)', { nonEmpty: true, where: W });
  const templates = opts.templates ?? RECONSTRUCTION_TEMPLATES;
  const align = oneOf(opts.align ?? 'detect', 'align', ['detect', 'centre'] as const, W);
  if (!templates.length || templates.some((t) => typeof t !== 'string' || !t.includes('<id>'))) throw new IdforgeError('E_IDENTITY', 'trainEncoder: every template needs the <id> placeholder');

  // Data.
  const recon = opts.faces !== undefined ? listImages(opts.faces).map((f) => ({ face: f, image: f })) : [];
  const edits = (opts.editSets ?? []).flatMap((d) => readEditManifest(d));
  if (opts.faces !== undefined && recon.length === 0 && edits.length === 0) throw invalid('faces', 'a folder with images (.png, .jpg, .webp)', opts.faces, { where: W });
  if (recon.length + edits.length === 0) throw invalid('faces or editSets', 'given (there is no training data)', undefined, { where: W });
  for (const e of edits) if (!e.prompt.includes('<id>')) throw new IdforgeError('E_IDENTITY', `trainEncoder: the edit prompt "${e.prompt}" has no <id> placeholder`);

  let encoder: IdEncoder | undefined = typeof opts.encoder === 'string' ? await IdEncoder.load(opts.encoder, { device: 'cpu' }) : opts.encoder;
  const ownEncoder = typeof opts.encoder === 'string';
  try {
    const fingerprint = JSON.stringify({ align, seed, B, lr, warm, clip, mix, reg: opts.regWeight ?? 0.01, train: opts.train ?? 'all', templates, recon: recon.map((r) => r.face), edits: edits.map((e) => [e.face, e.image, e.prompt]), config: encoder.config });
    fs.mkdirSync(opts.out, { recursive: true });
    const ck = opts.resume === false ? undefined
      : readCheckpoint(opts.out, { fingerprint, where: W, option: 'out', covers: 'seed, batch size, scope, data, schedule' }, readEncoder);
    const start = ck?.step ?? 0;
    const samples = await loadSamples(rt, { normalize: (img) => encoder!.normalize(img), size: encoder.config.imageSize },
      // Photos are aligned as encode() aligns them; an edit set's faces are aligned crops already.
      [...recon.map((r) => ({ ...r, align })), ...edits.map((e) => ({ ...e, align: 'centre' as const }))],
      path.join(opts.out, 'cache', 'latents.safetensors'), opts.signal);
    const nRecon = recon.length;
    using trainer = new EncoderTrainer({
      engine: { runtime: rt }, encoder: ck ? ck.model : encoder,
      ...(opts.regWeight !== undefined ? { regWeight: opts.regWeight } : {}), ...(opts.train !== undefined ? { train: opts.train } : {}),
    });
    if (ownEncoder) {
      encoder.dispose();
      encoder = undefined;
    }
    if (ck) trainer.setOptimizerState(ck.optimizer);
    const cfg = trainer.config;
    const S = cfg.imageSize;
    const lat = samples[0]!.mean.length;
    const latShape = [B, rt.configs.unet.inChannels, rt.nativeSize / rt.latentFactor, rt.nativeSize / rt.latentFactor];
    const T = rt.configs.scheduler.numTrainTimesteps;
    const sf = rt.configs.vae.scalingFactor;
    const losses: number[] = [];
    const t0 = Date.now();
    for (let step = start; step < steps; step++) {
      throwIfAborted(opts.signal, 'trainEncoder');
      const r = stepRandom(seed, step);
      const faces = new Float32Array(B * 3 * S * S);
      const z0 = new Float32Array(B * lat);
      const prompts: string[] = [];
      const timesteps: number[] = [];
      for (let b = 0; b < B; b++) {
        const useEdit = edits.length > 0 && (nRecon === 0 || r.nextDouble() < mix);
        const idx = useEdit ? nRecon + Math.floor(r.nextDouble() * edits.length) : Math.floor(r.nextDouble() * nRecon);
        const s = samples[idx]!;
        faces.set(s.face, b * 3 * S * S);
        prompts.push(s.prompt ?? templates[Math.floor(r.nextDouble() * templates.length)]!);
        timesteps.push(Math.floor(r.nextDouble() * T));
        sampleLatent(s, randn(r.next(), lat), sf, z0, b * lat);
      }
      using facesT = Tensor.from(faces, [B, 3, S, S]);
      using latents = Tensor.from(z0, latShape);
      using noise = Tensor.from(randn(r.next(), B * lat), latShape);
      const lrNow = warm > 0 ? lr * Math.min(1, (step + 1) / warm) : lr;
      // Forward, backward, clipping and Adam in one native call, in place on the device; a
      // non-finite loss leaves the weights as they were (E_NUMERIC) and the last checkpoint stands.
      // The signal is checked between steps (above).
      const v = await trainer.trainStep({ faces: facesT, prompts, latents, noise, timesteps }, { lr: lrNow, clipNorm: clip });
      losses.push(v.loss);
      const done = step + 1;
      if (done % every === 0 || done === steps)
        writeCheckpoint(opts.out, { step: done, seed, fingerprint }, trainer.optimizerState(), (dir) => saveIdEncoder(path.join(dir, 'encoder'), cfg, trainer.hostWeights()));
      const elapsed = Date.now() - t0;
      opts.onProgress?.({ step: done, steps, loss: v.loss, lossDiff: v.lossDiff, lossReg: v.lossReg, lr: lrNow, gradNorm: v.gradNorm, elapsedMs: elapsed, etaMs: (elapsed / (done - start)) * (steps - done) });
    }
    const encoderDir = path.join(opts.out, 'encoder');
    saveIdEncoder(encoderDir, cfg, trainer.hostWeights());
    return { encoderDir, steps, startStep: start, losses };
  } finally {
    if (ownEncoder) encoder?.dispose();
  }
}
