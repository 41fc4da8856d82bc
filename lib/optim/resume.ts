/**
 * What makes a training run resumable bit for bit, shared by SeFi-IDE learning
 * (lib/learn/learn.ts) and DreamIdentity encoder training (lib/dreamidentity/train.ts):
 *  - the step stream: everything random in step k is drawn from stepRandom(seed, k), so the data
 *    position is the step number and a run resumed at step k draws what an uninterrupted one would;
 *  - the checkpoint folder <out>/checkpoint/: state.json (the step, the seed and a fingerprint of
 *    the options and data), optimizer.safetensors (Adam's step count and moments) and the model's
 *    own files; written under checkpoint.tmp and swapped in by renames, so an abort or a crash
 *    leaves the last one intact;
 *  - the latent cache <out>/cache/latents.safetensors: the VAE posteriors (and any other per-sample
 *    arrays) of a run's images, encoded once, keyed by what they were computed from.
 * The device-side state a checkpoint holds is lib/optim/device-adam.ts's.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IdforgeError } from '../errors.js';
import { readJsonFile } from '../io/configs.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { Xoshiro128 } from '../sched/random.js';
import { invalid } from '../validate.js';
import type { OptimizerState } from './device-adam.js';
import type { HostWeight } from './params.js';

/**
 * A uint32 from (seed, step, stream): the seed of what step `step` draws (the seed's low 32 bits
 * count). `stream` separates independent uses of one seed (0: the steps; others: e.g. a pool of
 * augmented images).
 */
export function stepSeed(seed: number, step: number, stream = 0): number {
  return (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(step + 1, 0x85ebca77) ^ Math.imul(stream, 0xc2b2ae3d)) >>> 0;
}

/** The random stream of step `step` of a run seeded `seed`. */
export function stepRandom(seed: number, step: number, stream = 0): Xoshiro128 {
  return new Xoshiro128(stepSeed(seed, step, stream));
}

interface StateFile {
  version: 1;
  step: number;
  fingerprint: string;
  seed?: number;
}

/** A checkpoint read back: the step it was taken after, the run's seed, Adam's state and the model's part. */
export interface Checkpoint<T> {
  step: number;
  seed: number | undefined;
  optimizer: OptimizerState;
  model: T;
}

export interface CheckpointCheck {
  /** The fingerprint the run's options and data give now: a checkpoint with another is refused. */
  fingerprint: string;
  /** The run's seed when the caller gave one: a checkpoint of another seed is refused. */
  seed?: number | undefined;
  /** The API in messages ("trainEncoder"), and its option that names the folder ("out"). */
  where: string;
  option: string;
  /** What the fingerprint covers, for the refusal ("seed, batch size, data"). */
  covers: string;
}

function writeOptimizer(file: string, s: OptimizerState): void {
  const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [n, a] of s.m) t[`m:${n}`] = { dtype: 'F32', shape: [a.length], data: a };
  for (const [n, a] of s.v) t[`v:${n}`] = { dtype: 'F32', shape: [a.length], data: a };
  writeSafetensors(file, t, { t: String(s.t) });
}

function readOptimizer(file: string): OptimizerState {
  using os = SafetensorsFile.open(file);
  const s: OptimizerState = { t: Number(os.metadata?.t), m: new Map(), v: new Map() };
  if (!Number.isSafeInteger(s.t) || s.t < 0) throw new Error('optimizer step count missing');
  for (const n of os.names()) (n.startsWith('m:') ? s.m : s.v).set(n.slice(2), os.readFloat32(n));
  return s;
}

/** Host weights as one float32 safetensors file (a trainer's model part of a checkpoint). */
export function saveWeights(file: string, weights: ReadonlyMap<string, HostWeight>): void {
  const t: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
  for (const [n, w] of weights) t[n] = { dtype: 'F32', shape: [...w.shape], data: w.data };
  writeSafetensors(file, t);
}

/** The weights saveWeights wrote. */
export function loadWeights(file: string): Map<string, HostWeight> {
  using st = SafetensorsFile.open(file);
  return new Map(st.names().map((n) => [n, { shape: [...st.info(n).shape], data: st.readFloat32(n) }]));
}

/**
 * Writes <out>/checkpoint: state.json, optimizer.safetensors, and what `writeModel(dir)` puts in
 * the folder. The previous checkpoint is replaced only once the new one is complete.
 */
export function writeCheckpoint(out: string, state: { step: number; seed?: number; fingerprint: string }, optimizer: OptimizerState, writeModel: (dir: string) => void): void {
  const tmp = path.join(out, 'checkpoint.tmp');
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  writeModel(tmp);
  writeOptimizer(path.join(tmp, 'optimizer.safetensors'), optimizer);
  const s: StateFile = { version: 1, step: state.step, fingerprint: state.fingerprint, ...(state.seed !== undefined ? { seed: state.seed } : {}) };
  fs.writeFileSync(path.join(tmp, 'state.json'), JSON.stringify(s));
  const cur = path.join(out, 'checkpoint');
  const old = path.join(out, 'checkpoint.old');
  fs.rmSync(old, { recursive: true, force: true });
  if (fs.existsSync(cur)) fs.renameSync(cur, old);
  fs.renameSync(tmp, cur);
  fs.rmSync(old, { recursive: true, force: true });
}

/**
 * Reads <out>/checkpoint (or checkpoint.old, when a swap was interrupted), its model part by
 * `readModel(dir)`; undefined when there is none. A checkpoint of other options or another seed
 * is E_ARGUMENT; an unreadable one E_MODEL_FORMAT.
 */
export function readCheckpoint<T>(out: string, check: CheckpointCheck, readModel: (dir: string) => T): Checkpoint<T> | undefined {
  const ck = ['checkpoint', 'checkpoint.old'].map((d) => path.join(out, d)).find((d) => fs.existsSync(d));
  if (!ck) return undefined;
  const bad = (msg: string) => new IdforgeError('E_MODEL_FORMAT', `${check.where}: the checkpoint ${ck} is corrupt: ${msg}`);
  let state: StateFile;
  try {
    state = readJsonFile(path.join(ck, 'state.json')) as unknown as StateFile;
  } catch (e) {
    throw bad(`state.json: ${(e as Error).message}`);
  }
  if (!state || state.version !== 1 || !Number.isSafeInteger(state.step) || state.step < 0) throw bad('state.json has no valid step');
  if (state.seed !== undefined && !Number.isSafeInteger(state.seed)) throw bad('state.json has an invalid seed');
  const other = state.fingerprint !== check.fingerprint || (check.seed !== undefined && state.seed !== undefined && check.seed !== state.seed);
  if (other)
    throw invalid(check.option, `a folder for this run: its checkpoint ${ck} was made with other options or data (${check.covers}); use another folder or resume: false`, undefined, { where: check.where });
  try {
    const optimizer = readOptimizer(path.join(ck, 'optimizer.safetensors'));
    return { step: state.step, seed: state.seed, optimizer, model: readModel(ck) };
  } catch (e) {
    throw bad((e as Error).message);
  }
}

/**
 * Per-sample float32 arrays of a training run (VAE posteriors, prepared faces), computed once and
 * kept in a safetensors file under a key naming what they were computed from: a file with another
 * key (other images, options or model) is ignored and rewritten. Without a file the cache lives in
 * memory for the run.
 */
export class LatentCache {
  readonly #arrays = new Map<string, { shape: number[]; data: Float32Array }>();
  #dirty = false;

  constructor(readonly file: string | undefined, readonly key: string) {
    if (!file || !fs.existsSync(file)) return;
    try {
      using st = SafetensorsFile.open(file);
      if (st.metadata?.key !== key) return;
      for (const n of st.names()) this.#arrays.set(n, { shape: [...st.info(n).shape], data: st.readFloat32(n) });
    } catch {
      // An unreadable cache is rebuilt.
      this.#arrays.clear();
    }
  }

  get(name: string): Float32Array | undefined {
    return this.#arrays.get(name)?.data;
  }

  set(name: string, shape: readonly number[], data: Float32Array): void {
    this.#arrays.set(name, { shape: [...shape], data });
    this.#dirty = true;
  }

  /** Sample `name`'s posterior (mean and σ): cached, or `encode()`d and kept. */
  async posterior(name: string, encode: () => Promise<{ mean: Float32Array; std: Float32Array; shape: readonly number[] }>): Promise<{ mean: Float32Array; std: Float32Array }> {
    const mean = this.get(`mean:${name}`);
    const std = this.get(`std:${name}`);
    if (mean && std) return { mean, std };
    const p = await encode();
    const shape = p.shape.slice(1);
    this.set(`mean:${name}`, shape, p.mean);
    this.set(`std:${name}`, shape, p.std);
    return p;
  }

  /** Writes the file (atomically) when anything was added since it was read. */
  save(): void {
    if (!this.file || !this.#dirty) return;
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    writeSafetensors(this.file, Object.fromEntries([...this.#arrays].map(([n, a]) => [n, { dtype: 'F32' as const, ...a }])), { key: this.key });
    this.#dirty = false;
  }
}
