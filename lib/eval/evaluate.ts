/**
 * evaluate(): generates a prompt set × seeds with an engine (and an identity, or none) and measures
 * every image the way the identity-customisation papers do:
 *  - ID similarity: cosine of the face embeddings of the largest face in the image and of the
 *    reference photo's largest face (0 when no face is detected);
 *  - CLIP-T: the CLIP cosine of the image and the prompt (with `<id>` read as "a person"), and
 *    the CLIP score 100·max(cos, 0);
 *  - ID(Prompt) (SeFi-IDE): the ID similarity, counted only when the CLIP cosine ≥ a threshold
 *    (0.23 by default), else 0 — identity that came at the price of ignoring the prompt scores 0;
 *  - the generation time.
 * Aggregates are mean ± std (population) over the images. Two rows anchor the scale: the reference
 * photo against itself (ID 1, and its CLIP-T against the prompts) and the generic person (the same
 * prompts and seeds with identityScale 0, i.e. the identity's words replaced by "person").
 */
import { throwIfAborted } from '../errors.js';
import { bool, imageSide, integer, invalid, nonNegative, text } from '../validate.js';
import type { Engine } from '../engine.js';
import type { Identity } from '../identity/identity.js';
import { decodeImage, type RawImage } from '../io/image.js';
import { cosine, clipScore, type ClipScorer } from '../clip/scorer.js';
import { similarity, type Face, type FaceAnalyzer } from '../faces/index.js';
import { DEFAULT_PROMPTS, plainPrompt } from './prompts.js';

/** The measuring settings of evaluate() (lib/eval/evaluate.ts); defaults in resolveEvaluate below. */
export interface EvalSettings {
  /** Prompts with `<id>` where the person goes (default: the 20 of lib/eval/prompts.ts). */
  prompts?: readonly string[];
  /** One image per prompt and seed (default [0]). */
  seeds?: readonly number[];
  steps?: number;
  width?: number;
  height?: number;
  guidanceScale?: number;
  negativePrompt?: string;
  /** The identity's strength in the identity row (default 1). */
  identityScale?: number;
  /** CLIP cosine from which an image's ID similarity counts towards ID(Prompt) (default 0.23, as in SeFi-IDE). */
  threshold?: number;
  /** Also generate the generic-person row (default true when there is an identity). */
  baseline?: boolean;
}

export type ValidEval = Required<Omit<EvalSettings, 'prompts' | 'seeds'>> & { prompts: string[]; seeds: number[] };

/** evaluate()'s settings with their defaults; `multiple` is the model's size multiple. */
export function resolveEvaluate(o: EvalSettings, multiple: number, defaultPrompts: readonly string[]): ValidEval {
  const where = 'evaluate';
  const prompts = [...(o.prompts ?? defaultPrompts)];
  if (!Array.isArray(o.prompts ?? defaultPrompts) || prompts.length === 0 || prompts.some((p) => typeof p !== 'string' || !p.trim()))
    throw invalid('prompts', 'a non-empty list of non-empty strings', o.prompts, { where });
  if (prompts.some((p) => /<id:[^<>]*>/.test(p))) throw invalid('prompts', 'written with <id> for the one identity, not <id:name>', prompts.find((p) => /<id:[^<>]*>/.test(p)), { where });
  const seeds = [...(o.seeds ?? [0])];
  if (seeds.length === 0) throw invalid('seeds', 'a non-empty list', o.seeds, { where });
  seeds.forEach((s, i) => integer(s, `seeds[${i}]`, 0, 2 ** 32 - 1, where));
  const threshold = o.threshold ?? 0.23;
  if (typeof threshold !== 'number' || !(threshold >= -1 && threshold <= 1)) throw invalid('threshold', 'a cosine in [-1, 1]', threshold, { where });
  const negativePrompt = text(o.negativePrompt ?? '', 'negativePrompt', { where });
  const baseline = bool(o.baseline ?? true, 'baseline', where);
  return {
    prompts, seeds, threshold, negativePrompt, baseline,
    identityScale: nonNegative(o.identityScale ?? 1, 'identityScale', { where }),
    steps: integer(o.steps ?? 30, 'steps', 1, 1000, where),
    width: imageSide(o.width ?? 512, 'width', multiple),
    height: imageSide(o.height ?? 512, 'height', multiple),
    guidanceScale: nonNegative(o.guidanceScale ?? 7.5, 'guidanceScale', { where }),
  };
}

export interface EvalProgress {
  /** Images finished so far / in all (both rows). */
  done: number;
  total: number;
  variant: EvalVariant;
  prompt: string;
  seed: number;
  elapsedMs: number;
}

export type EvalVariant = 'identity' | 'generic';

export interface EvaluateOptions extends EvalSettings {
  engine: Engine;
  clip: ClipScorer;
  faces: FaceAnalyzer;
  /** The reference face photo: RawImage, file path or encoded Buffer. */
  reference: RawImage | string | Buffer;
  /** The identity `<id>` names; without one, `<id>` reads as "a person" and only the generic row is made. */
  identity?: Identity;
  onProgress?: (p: EvalProgress) => void;
  signal?: AbortSignal;
}

export interface ImageRecord {
  /** 1-based; the number under the image on the contact sheet. */
  index: number;
  variant: EvalVariant;
  prompt: string;
  seed: number;
  /** Cosine of the face embeddings (0 when no face was detected). */
  idSimilarity: number;
  faceDetected: boolean;
  clipCosine: number;
  clipScore: number;
  /** idSimilarity when clipCosine ≥ threshold, else 0. */
  idPrompt: number;
  timeMs: number;
  image: RawImage;
}

export interface Stat {
  mean: number;
  std: number;
}

export interface RowSummary {
  label: string;
  images: number;
  idSimilarity: Stat;
  /** Share of images with a detected face. */
  faceRate: number;
  clipCosine: Stat;
  clipScore: Stat;
  idPrompt: Stat;
  timeMs: Stat | null;
}

export interface EvalResult {
  images: ImageRecord[];
  /** identity (when given), generic person, reference photo against itself. */
  rows: { identity?: RowSummary; generic?: RowSummary; reference: RowSummary };
  reference: { image: RawImage; faceDetected: boolean };
  settings: {
    prompts: string[]; seeds: number[]; steps: number; width: number; height: number; guidanceScale: number;
    negativePrompt: string; identityScale: number; threshold: number; identity: string | null;
    model: string; clip: string; device: string; dtype: string;
  };
  warnings: string[];
}

export function stat(xs: readonly number[]): Stat {
  if (xs.length === 0) return { mean: NaN, std: NaN };
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length;
  return { mean, std: Math.sqrt(v) };
}

/** The largest face in the image (the person the prompt is about), or null: detect() lists it first. */
async function largestFace(faces: FaceAnalyzer, image: RawImage): Promise<Face | null> {
  return (await faces.detect(image))[0] ?? null;
}

function summarize(label: string, recs: readonly Pick<ImageRecord, 'idSimilarity' | 'faceDetected' | 'clipCosine' | 'clipScore' | 'idPrompt' | 'timeMs'>[], timed: boolean): RowSummary {
  return {
    label,
    images: recs.length,
    idSimilarity: stat(recs.map((r) => r.idSimilarity)),
    faceRate: recs.filter((r) => r.faceDetected).length / recs.length,
    clipCosine: stat(recs.map((r) => r.clipCosine)),
    clipScore: stat(recs.map((r) => r.clipScore)),
    idPrompt: stat(recs.map((r) => r.idPrompt)),
    timeMs: timed ? stat(recs.map((r) => r.timeMs)) : null,
  };
}

export async function evaluate(opts: EvaluateOptions): Promise<EvalResult> {
  if (!opts || typeof opts !== 'object') throw invalid('options', 'an object', opts, { where: 'evaluate' });
  const { engine, clip, faces, signal } = opts;
  if (!engine || !clip || !faces) throw invalid('engine, clip and faces', 'given (an Engine, a ClipScorer and a FaceAnalyzer)', undefined, { where: 'evaluate' });
  const { prompts, seeds, threshold, identityScale, steps, width, height, guidanceScale, negativePrompt, baseline } =
    resolveEvaluate(opts, engine.sizeMultiple, DEFAULT_PROMPTS);
  const identity = opts.identity;
  const warnings: string[] = [];
  throwIfAborted(signal, 'evaluate');

  // The reference: its face embedding, and (anchor row) its CLIP-T against every prompt.
  const refImage = await decodeImage(opts.reference, 'reference photo');
  const refFace = await largestFace(faces, refImage);
  if (!refFace) warnings.push('no face detected in the reference photo: every ID similarity is 0');
  const refEmbedding = refFace ? await faces.embed(refImage, refFace) : null;
  const texts = prompts.map(plainPrompt);
  using textEmb = await clip.embedText(texts);
  const E = clip.dim;
  const allText = textEmb.toFloat32();
  const textRows = prompts.map((_, i) => allText.subarray(i * E, (i + 1) * E));
  let refImgEmb: Float32Array;
  {
    using px = await clip.preprocess(refImage);
    using e = await clip.embedImage(px);
    refImgEmb = e.toFloat32();
  }
  const refSelf = refEmbedding ? similarity(refEmbedding, refEmbedding) : 0;
  const refRecs = textRows.map((t) => {
    const c = cosine(refImgEmb, t);
    return { idSimilarity: refSelf, faceDetected: !!refFace, clipCosine: c, clipScore: clipScore(c), idPrompt: c >= threshold ? refSelf : 0, timeMs: 0 };
  });

  const variants: EvalVariant[] = identity ? (baseline ? ['identity', 'generic'] : ['identity']) : ['generic'];
  const total = variants.length * prompts.length * seeds.length;
  const images: ImageRecord[] = [];
  const start = Date.now();
  for (const variant of variants)
    for (let pi = 0; pi < prompts.length; pi++)
      for (const seed of seeds) {
        throwIfAborted(signal, 'evaluate');
        const prompt = prompts[pi]!;
        const t0 = Date.now();
        const r = await engine.generate({
          prompt: identity ? prompt : texts[pi]!,
          ...(identity ? { identity, identityScale: variant === 'identity' ? identityScale : 0 } : {}),
          negativePrompt, steps, width, height, guidanceScale, seed,
          ...(signal ? { signal } : {}),
        });
        const timeMs = Date.now() - t0;
        r.latents.dispose();
        r.pixels.dispose();
        for (const w of r.warnings) if (!warnings.includes(w)) warnings.push(w);
        const image = r.images[0]!;
        const face = await largestFace(faces, image);
        const idSimilarity = face && refEmbedding ? similarity(await faces.embed(image, face), refEmbedding) : 0;
        using px = await clip.preprocess(image);
        using ie = await clip.embedImage(px);
        const c = cosine(ie.toFloat32(), textRows[pi]!);
        images.push({
          index: images.length + 1, variant, prompt, seed, idSimilarity, faceDetected: !!face,
          clipCosine: c, clipScore: clipScore(c), idPrompt: c >= threshold ? idSimilarity : 0, timeMs, image,
        });
        opts.onProgress?.({ done: images.length, total, variant, prompt, seed, elapsedMs: Date.now() - start });
      }

  const of = (v: EvalVariant) => images.filter((r) => r.variant === v);
  const rows: EvalResult['rows'] = { reference: summarize('reference photo vs itself', refRecs, false) };
  if (identity) rows.identity = summarize(`identity${identity.name ? ` "${identity.name}"` : ''} (scale ${identityScale})`, of('identity'), true);
  if (variants.includes('generic')) rows.generic = summarize('generic "person" (identityScale 0)', of('generic'), true);
  const b = engine.backend;
  return {
    images, rows, reference: { image: refImage, faceDetected: !!refFace },
    settings: {
      prompts, seeds, steps, width, height, guidanceScale, negativePrompt, identityScale, threshold,
      identity: identity ? (identity.name ?? '(unnamed)') : null,
      model: engine.modelPath, clip: clip.dir, device: b.device, dtype: b.dtype,
    },
    warnings,
  };
}
