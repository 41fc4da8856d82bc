/**
 * The self-augmented editability dataset of DreamIdentity (issue #13 part 4): for every name
 * the user lists (celebrities SD already knows), SD draws a base photo ("a photo of {name}") and
 * edited images ("{name} as a chef", fixed seeds); the face in the base image is detected and
 * aligned (the encoder's input), each edit is scored by ID similarity (its face against the base
 * face, FaceAnalyzer) and by the CLIP score of the image against its edit prompt (ClipScorer),
 * the two ranks are averaged and the top `keep` fraction is kept. trainEncoder() then learns to
 * map the aligned base face to words that reproduce the kept edits.
 *
 * Everything is written under `out`: <name>/base.png, face.png, edit-<k>.png; rows.jsonl (one
 * line per finished item, the resume log) and, at the end, manifest.jsonl (every row with its
 * scores, seeds, ranks and `kept`). A rerun skips what rows.jsonl records. The generator, the
 * face analyser and the CLIP scorer are interfaces: tests feed real photos in place of
 * generations.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { throwIfAborted } from '../errors.js';
import { similarity } from '../faces/analyzer.js';
import { decodeFace, prepareFace } from '../identity/face.js';
import { readRegularFile } from '../io/files.js';
import { saveImage, type RawImage } from '../io/image.js';
import type { GenerateOptions, GenerateResult } from '../generate/options.js';
import { integer, invalid, numberIn, text } from '../validate.js';

/** What draws an image for a prompt and seed (an Engine through engineGenerator, or photos in tests). */
export interface ImageGenerator {
  generate(prompt: string, seed: number, signal?: AbortSignal): Promise<RawImage>;
}

/** The part of FaceAnalyzer (lib/faces) the builder uses. */
export interface FaceScorer {
  detect(image: RawImage): Promise<{ landmarks: [number, number][] }[]>;
  embed(image: RawImage, face?: { landmarks: [number, number][] }): Promise<Float32Array>;
}

/** The part of ClipScorer (lib/clip) the builder uses. */
export interface TextImageScorer {
  score(image: RawImage, text: string): Promise<{ cosine: number; score: number }>;
}

/** An ImageGenerator over an Engine's text-to-image (the options given, the prompt and seed per call). */
export function engineGenerator(engine: { generate(o: GenerateOptions): Promise<GenerateResult> }, opts: Omit<GenerateOptions, 'prompt' | 'seed' | 'signal'> = {}): ImageGenerator {
  return {
    async generate(prompt, seed, signal) {
      const r = await engine.generate({ ...opts, prompt, seed, ...(signal ? { signal } : {}) });
      r.latents.dispose();
      r.pixels.dispose();
      return r.images[0]!;
    },
  };
}

export interface DatasetProgress {
  name: string;
  /** Names finished (or skipped) so far, of `total`. */
  done: number;
  total: number;
  /** Why this name was skipped, when it was. */
  skipped?: string;
}

export interface BuildEditDatasetOptions {
  /** SD: an Engine, drawing with its text-to-image at the `generate` options. */
  engine?: { generate(o: GenerateOptions): Promise<GenerateResult> };
  /** Options of the Engine's generate() (steps, size, guidance). */
  generate?: Omit<GenerateOptions, 'prompt' | 'seed' | 'signal'>;
  /** Or any ImageGenerator in place of the engine (tests feed photos). */
  generator?: ImageGenerator;
  faces: FaceScorer;
  clip: TextImageScorer;
  /** Names, or a text file with one name per line (blank lines and # comments ignored). */
  names: readonly string[] | string;
  /** With {name} (default "a photo of {name}"). */
  basePrompt?: string;
  /** Each with {name}; edit k uses editPrompts[k mod length]. */
  editPrompts: readonly string[];
  /** Edited images per name (default editPrompts.length). */
  perName?: number;
  /** Fraction of the rows kept by the combined rank (default 0.25). */
  keep?: number;
  seed?: number;
  /** Side of the aligned face written (default 224). */
  faceSize?: number;
  out: string;
  onProgress?: (p: DatasetProgress) => void;
  signal?: AbortSignal;
}

/** One line of manifest.jsonl. */
export interface DatasetRow {
  name: string;
  /** Edit index, or −1 for a skipped name. */
  edit: number;
  baseSeed: number;
  seed?: number;
  /** The edit prompt with <id> in place of the name (what the trainer uses). */
  prompt?: string;
  base?: string;
  face?: string;
  image?: string;
  /** Cosine similarity of the edited image's face with the base face (−1 when it has no face). */
  idSim?: number;
  /** CLIP score of the edited image against the edit prompt (the name replaced by "a person"). */
  clip?: number;
  skipped?: string;
  rankId?: number;
  rankClip?: number;
  rank?: number;
  kept?: boolean;
}

const where = 'buildEditDataset';

/** The names of a names file. */
export function readNames(file: string): string[] {
  // A regular file of sane size (a FIFO would hang the read).
  return readRegularFile(file, 16 << 20, 'names file').toString('utf8').split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

const slug = (name: string, i: number) => `${String(i).padStart(4, '0')}-${name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'name'}`;
const seedOf = (seed: number, i: number, k: number) => ((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca77) ^ Math.imul(k + 1, 0xc2b2ae3d)) >>> 0) % 2147483647;

/**
 * Ranks rows by ID similarity and by CLIP score (0 = best), averages the two ranks and keeps the
 * best ⌈keep · n⌉ (ties by order). Skipped rows are never kept.
 */
export function rankRows(rows: DatasetRow[], keep: number): DatasetRow[] {
  const scored = rows.filter((r) => !r.skipped);
  const order = (key: 'idSim' | 'clip') => {
    const idx = scored.map((_, i) => i).sort((a, b) => scored[b]![key]! - scored[a]![key]! || a - b);
    const rank = new Array<number>(scored.length);
    idx.forEach((j, r) => (rank[j] = r));
    return rank;
  };
  const ri = order('idSim');
  const rc = order('clip');
  scored.forEach((r, i) => Object.assign(r, { rankId: ri[i], rankClip: rc[i], rank: (ri[i]! + rc[i]!) / 2 }));
  const n = Math.ceil(keep * scored.length);
  const best = new Set(scored.map((_, i) => i).sort((a, b) => scored[a]!.rank! - scored[b]!.rank! || a - b).slice(0, n));
  scored.forEach((r, i) => (r.kept = best.has(i)));
  for (const r of rows) if (r.skipped) r.kept = false;
  return rows;
}

export async function buildEditDataset(o: BuildEditDatasetOptions): Promise<{ rows: DatasetRow[]; kept: number; manifest: string }> {
  if (!o || typeof o !== 'object') throw invalid('options', 'an object', o, { where });
  const names = typeof o.names === 'string' ? readNames(o.names) : o.names;
  if (!Array.isArray(names) || names.length === 0 || names.some((n) => typeof n !== 'string' || !n.trim())) throw invalid('names', 'a non-empty list of names (or a names file)', names, { where });
  const basePrompt = o.basePrompt ?? 'a photo of {name}';
  const edits = o.editPrompts;
  if (!Array.isArray(edits) || edits.length === 0) throw invalid('editPrompts', 'a non-empty list', edits, { where });
  for (const p of [basePrompt, ...edits]) if (typeof p !== 'string' || !p.includes('{name}')) throw invalid('every prompt', 'a string with {name}', p, { where });
  const perName = integer(o.perName ?? edits.length, 'perName', 1, Number.MAX_SAFE_INTEGER, where);
  const keep = numberIn(o.keep ?? 0.25, 'keep', 0, 1, { above: true, where });
  const seed = integer(o.seed ?? 0, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, where);
  const faceSize = o.faceSize ?? 224;
  if (!o.faces || typeof o.faces.detect !== 'function' || !o.clip || typeof o.clip.score !== 'function') throw invalid('faces and clip', 'given (a FaceAnalyzer and a ClipScorer)', undefined, { where });
  text(o.out, 'out (the output folder)', { nonEmpty: true, where });
  const gen = o.generator ?? (o.engine ? engineGenerator(o.engine, o.generate ?? {}) : undefined);
  if (!gen || typeof gen.generate !== 'function') throw invalid('engine or generator', 'given (an Engine or an ImageGenerator)', undefined, { where });

  fs.mkdirSync(o.out, { recursive: true });
  const log = path.join(o.out, 'rows.jsonl');
  const done = new Map<string, DatasetRow>();
  if (fs.existsSync(log))
    for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      try {
        const r = JSON.parse(line) as DatasetRow;
        done.set(`${r.name}\u0000${r.edit}`, r);
      } catch {
        // a line cut by a crash: that item is redone
      }
    }
  const record = (r: DatasetRow) => {
    fs.appendFileSync(log, `${JSON.stringify(r)}\n`);
    done.set(`${r.name}\u0000${r.edit}`, r);
  };
  const fill = (p: string, name: string) => p.split('{name}').join(name);

  for (const [i, name] of names.entries()) {
    throwIfAborted(o.signal, 'buildEditDataset');
    const dir = slug(name, i);
    const baseSeed = seedOf(seed, i, -1);
    const skip = done.get(`${name}\u0000-1`);
    const todo = Array.from({ length: perName }, (_, k) => k).filter((k) => !done.has(`${name}\u0000${k}`));
    if (skip || todo.length === 0) {
      o.onProgress?.({ name, done: i + 1, total: names.length, ...(skip?.skipped ? { skipped: skip.skipped } : {}) });
      continue;
    }
    fs.mkdirSync(path.join(o.out, dir), { recursive: true });
    const baseFile = path.join(o.out, dir, 'base.png');
    const base = fs.existsSync(baseFile) ? await decodeFace(baseFile) : await gen.generate(fill(basePrompt, name), baseSeed, o.signal);
    if (!fs.existsSync(baseFile)) await saveImage(base, baseFile);
    const [face] = await o.faces.detect(base);
    if (!face) {
      const r: DatasetRow = { name, edit: -1, baseSeed, base: path.join(dir, 'base.png'), skipped: 'no face in the base image' };
      record(r);
      o.onProgress?.({ name, done: i + 1, total: names.length, skipped: r.skipped! });
      continue;
    }
    const aligned = await prepareFace(base, { landmarks: face.landmarks, size: faceSize });
    await saveImage(aligned.image, path.join(o.out, dir, 'face.png'));
    const baseEmb = await o.faces.embed(base, face);
    for (const k of todo) {
      throwIfAborted(o.signal, 'buildEditDataset');
      const tmpl = edits[k % edits.length]!;
      const s = seedOf(seed, i, k);
      const img = await gen.generate(fill(tmpl, name), s, o.signal);
      const file = path.join(dir, `edit-${k}.png`);
      await saveImage(img, path.join(o.out, file));
      const [ef] = await o.faces.detect(img);
      const idSim = ef ? similarity(baseEmb, await o.faces.embed(img, ef)) : -1;
      const clip = (await o.clip.score(img, fill(tmpl, 'a person'))).score;
      record({ name, edit: k, baseSeed, seed: s, prompt: fill(tmpl, '<id>'), base: path.join(dir, 'base.png'), face: path.join(dir, 'face.png'), image: file, idSim, clip });
    }
    o.onProgress?.({ name, done: i + 1, total: names.length });
  }

  // The manifest: every row of this run's names, ranked.
  const rows: DatasetRow[] = [];
  for (const name of names) {
    const s = done.get(`${name}\u0000-1`);
    if (s) rows.push({ ...s });
    else for (let k = 0; k < perName; k++) rows.push({ ...done.get(`${name}\u0000${k}`)! });
  }
  rankRows(rows, keep);
  const manifest = path.join(o.out, 'manifest.jsonl');
  fs.writeFileSync(`${manifest}.tmp`, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  fs.renameSync(`${manifest}.tmp`, manifest);
  return { rows, kept: rows.filter((r) => r.kept).length, manifest };
}
