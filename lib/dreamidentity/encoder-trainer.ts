/**
 * The DreamIdentity training step as one program (issue #13): faces → M² ID encoder words →
 * injected at the <id> slots of each prompt → the frozen text encoder → the frozen UNet at z_t →
 *   loss = mean((ε̂ − ε)²) + regWeight · mean(words²)
 * and the gradient of the loss with respect to every trainable encoder weight, in one native
 * call. Trainable weights are graph inputs (lib/optim/params.ts); the encoder's frozen weights and
 * the SD model's are constants. z_t = √ᾱ_t·z0 + √(1 − ᾱ_t)·ε (DDPM add_noise, the model's
 * schedule).
 *
 * The trainable weights and their Adam moments live on the engine's device for the trainer's
 * whole life (lib/optim/device-adam.ts, shared with SeFi-IDE learning). trainStep() is the training
 * step as ONE native call: forward, backward, the global gradient norm, clipping and the Adam
 * update (ADAM_STEP), written in place into those tensors, so neither weights nor gradients cross
 * to the host. lossAndGrads() is the same forward and backward with the gradients returned (the
 * golden check). hostWeights() and optimizerState() read the state back for checkpoints.
 */
import { IdforgeError } from '../errors.js';
import { grad, mseLoss } from '../graph/autodiff.js';
import { Graph, type Value } from '../graph/graph.js';
import { Program } from '../graph/program.js';
import type { Weights } from '../graph/weights.js';
import type { ModelConfigs } from '../io/configs.js';
import type { IdEncoderConfig } from './config.js';
import type { IdEncoder } from './encoder.js';
import { buildIdEncoder } from './encoder-graph.js';
import { Identity } from '../identity/identity.js';
import { expandPrompt } from '../identity/placeholders.js';
import { toHost } from '../runtime/runtime.js';
import type { SdRuntime } from '../runtime/sd.js';
import { addNoise } from '../sched/betas.js';
import { DDIMScheduler } from '../sched/ddim.js';
import { invalid, nonNegative, shown } from '../validate.js';
import { Tensor, numel } from '../tensor.js';
import { buildTextEncoder } from '../text/clip.js';
import { buildUNet } from '../unet/unet.js';
import { DeviceAdam, appendAdamUpdate, type OptimizerState } from '../optim/device-adam.js';
import { TrainableWeights, hostRefs, type HostWeight } from '../optim/params.js';

export type { OptimizerState } from '../optim/device-adam.js';

/**
 * What learns: the projectors only; the projectors plus the last N backbone blocks (and the
 * final norm); or every weight ('all', the default).
 */
export type TrainScope = 'projectors' | 'all' | { lastBlocks: number };

export interface EncoderTrainerOptions {
  /** The SD model (an Engine, or anything holding its SdRuntime): frozen, float32. */
  engine: { readonly runtime: SdRuntime };
  /** The encoder to train, or its config and weights (IdEncoder.create / a checkpoint). */
  encoder: IdEncoder | { config: IdEncoderConfig; weights: Map<string, HostWeight> };
  /** Weight of mean(words²) in the loss (default 0.01). */
  regWeight?: number;
  train?: TrainScope;
}

export interface TrainBatch {
  /** Normalised faces [B, 3, S, S] (S = the encoder's image size). */
  faces: Tensor;
  /** B prompts, each with the <id> placeholder. */
  prompts: readonly string[];
  /** Clean latents z0 [B, C, h, w] (VAE mean × scaling factor). */
  latents: Tensor;
  /** The noise ε [B, C, h, w]. */
  noise: Tensor;
  /** B integer timesteps in [0, numTrainTimesteps). */
  timesteps: readonly number[];
}

export interface LossAndGrads {
  loss: number;
  lossDiff: number;
  lossReg: number;
  /** Weight name (as in the encoder's model.safetensors) → gradient, float32 on the CPU; the caller disposes them. */
  grads: Map<string, Tensor>;
}

/** The same on host arrays. */
export interface StepValues {
  loss: number;
  lossDiff: number;
  lossReg: number;
  grads: Map<string, Float32Array>;
}

/** Options of one optimizer step (trainStep). */
export interface AdamStepOptions {
  /** Learning rate of this step (warm-up is the caller's schedule). */
  lr: number;
  /** Global gradient-norm clip (0 = off). */
  clipNorm: number;
}

/** What one training step reports. */
export interface TrainStepValues {
  loss: number;
  lossDiff: number;
  lossReg: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
}

const W = 'EncoderTrainer';

/** The names that learn under `scope`. */
export function trainableNames(names: Iterable<string>, config: IdEncoderConfig, scope: TrainScope): Set<string> {
  const all = [...names];
  if (scope === 'all') return new Set(all);
  if (scope === 'projectors') return new Set(all.filter((n) => n.startsWith('projector.')));
  const n = scope?.lastBlocks;
  if (!Number.isInteger(n) || n < 0 || n > config.numLayers)
    throw invalid('train.lastBlocks', `an integer in [0, ${config.numLayers}]`, n, { where: W });
  const first = config.numLayers - n;
  return new Set(all.filter((name) => {
    if (name.startsWith('projector.')) return true;
    const m = /^blocks\.(\d+)\./.exec(name);
    if (m) return Number(m[1]) >= first;
    return n > 0 && name.startsWith('norm.');
  }));
}

/**
 * The training graph: inputs face [B, 3, S, S], ids and slots [B, 77] (int32), z_t, t [B], noise,
 * then one input per trainable encoder weight (in `params` order) → outputs loss, lossDiff and
 * lossReg, and the gradient of each trainable weight as values (the caller outputs them or feeds
 * them to the optimizer). Exported for the memory planner (bench).
 */
export function buildEncoderTrainGraph(
  g: Graph, w: { text: Weights; unet: Weights; encoder: TrainableWeights }, configs: Pick<ModelConfigs, 'text' | 'unet'>,
  cfg: IdEncoderConfig, [b, c, h, wd]: [number, number, number, number], regWeight: number,
): { params: string[]; loss: Value; lossDiff: Value; lossReg: Value; grads: Value[] } {
  const face = g.input([b, 3, cfg.imageSize, cfg.imageSize], 'float', 'face');
  const ids = g.input([b, 77], 'int32', 'ids');
  const slots = g.input([b, 77], 'int32', 'slots');
  const zt = g.input([b, c, h, wd], 'float', 'z_t');
  const t = g.input([b], 'float', 't');
  const eps = g.input([b, c, h, wd], 'float', 'noise');
  const { words } = buildIdEncoder(g, w.encoder, cfg, face); // [B, M, D]
  const M = cfg.taps.length;
  const D = cfg.textDim;
  const ctx = buildTextEncoder(g, w.text, configs.text, { ids, inject: { slots, vectors: g.reshape(words, [b * M, D]) } });
  const pred = buildUNet(g, w.unet, configs.unet, zt, t, { k: ctx, v: ctx }).eps;
  const lossDiff = mseLoss(g, pred, eps);
  const lossReg = g.scale(g.reduceSum(g.mul(words, words), [1]), 1 / numel(words.shape));
  const loss = g.add(lossDiff, g.scale(lossReg, regWeight));
  const params = [...w.encoder.inputs.keys()];
  const grads = grad(g, loss, [...w.encoder.inputs.values()]);
  g.output(loss, 'loss');
  g.output(lossDiff, 'lossDiff');
  g.output(lossReg, 'lossReg');
  return { params, loss, lossDiff, lossReg, grads };
}

export class EncoderTrainer implements Disposable {
  readonly runtime: SdRuntime;
  readonly config: IdEncoderConfig;
  readonly regWeight: number;
  /** The trainable names. */
  readonly trainable: Set<string>;
  /** Every encoder weight; the trainable ones as of the last hostWeights() (the device holds the current values). */
  readonly #host: Map<string, HostWeight>;
  readonly #w: TrainableWeights;
  readonly #programs = new Map<string, { p: Program; params: string[] }>();
  readonly #alphasCumprod: Float32Array;
  /** On the device: the trainable weights, Adam's moments and step count. */
  readonly #adam: DeviceAdam;
  /** A step has changed the device weights since #host was last read back. */
  #hostStale = false;
  #disposed = false;

  constructor(opts: EncoderTrainerOptions) {
    if (!opts || typeof opts !== 'object') throw invalid('options', 'an object', opts, { where: W });
    const rt = opts.engine?.runtime;
    if (!rt || typeof rt.program !== 'function') throw invalid('engine', 'an Engine (or hold its SdRuntime as `runtime`)', opts.engine, { where: W });
    rt.assertLive();
    if (rt.backend.dtype !== 'float32')
      throw invalid('the engine', "float32 (gradients of the diffusion loss are not accurate in float16): load one with { dtype: 'float32' }", shown(`a ${rt.backend.dtype} engine`), { where: W });
    const enc = opts.encoder as IdEncoder | { config: IdEncoderConfig; weights: Map<string, HostWeight> };
    if (!enc || typeof enc !== 'object' || !enc.config) throw invalid('encoder', 'an IdEncoder or { config, weights }', enc, { where: W });
    this.config = enc.config;
    const given = 'hostWeights' in enc && typeof enc.hostWeights === 'function' ? enc.hostWeights() : (enc as { weights: Map<string, HostWeight> }).weights;
    // A copy: training never writes into the caller's arrays.
    this.#host = new Map([...given].map(([n, w]) => [n, { shape: [...w.shape], data: w.data.slice() }]));
    const D = rt.configs.text.hiddenSize;
    if (this.config.textDim !== D)
      throw new IdforgeError('E_SHAPE', `EncoderTrainer: the encoder's words are ${this.config.textDim} wide, the model's text encoder takes ${D}`);
    this.regWeight = nonNegative(opts.regWeight ?? 0.01, 'regWeight', { where: W });
    this.runtime = rt;
    this.trainable = trainableNames(this.#host.keys(), this.config, opts.train ?? 'all');
    this.#w = new TrainableWeights('id-encoder (training)', hostRefs(this.#host), rt.backend, this.trainable);
    this.#adam = new DeviceAdam(rt.backend, new Map([...this.trainable].map((n) => [n, this.#host.get(n)!])), 'EncoderTrainer');
    this.#alphasCumprod = DDIMScheduler.fromConfig(rt.configs.scheduler).alphasCumprod;
  }

  /** How many weights learn. */
  get trainableCount(): number {
    return this.#adam.count;
  }

  /** Every encoder weight, the trainable ones read back from the device (for saving). */
  hostWeights(): Map<string, HostWeight> {
    this.#live();
    if (this.#hostStale) for (const [n, w] of this.#adam.read()) this.#host.get(n)!.data = w.data;
    this.#hostStale = false;
    return this.#host;
  }

  /** Adam's state read back from the device (a checkpoint's optimizer.safetensors). */
  optimizerState(): OptimizerState {
    this.#live();
    return this.#adam.state();
  }

  /** Restores Adam's state (resuming from a checkpoint); moments missing from it start at zero. */
  setOptimizerState(s: OptimizerState): void {
    this.#live();
    this.#adam.setState(s);
  }

  #live(): void {
    if (this.#disposed) throw new IdforgeError('E_DISPOSED', 'EncoderTrainer used after dispose()');
  }

  /**
   * The program for a batch shape: with `update`, outputs loss, lossDiff, lossReg, the squared
   * global gradient norm and each weight's p', m', v' (appendAdamUpdate); else loss, lossDiff,
   * lossReg and each weight's gradient.
   */
  #program(b: number, c: number, h: number, w: number, update: boolean): { p: Program; params: string[] } {
    const key = `${b}:${c}x${h}x${w}:${update ? 'adam' : 'grads'}`;
    let e = this.#programs.get(key);
    if (e) return e;
    const rt = this.runtime;
    const g = new Graph();
    this.#w.begin();
    const r = buildEncoderTrainGraph(g, { text: rt.weights.text, unet: rt.weights.unet, encoder: this.#w }, rt.configs, this.config, [b, c, h, w], this.regWeight);
    if (!update) {
      r.grads.forEach((d, i) => g.output(d, `grad:${r.params[i]}`));
    } else {
      appendAdamUpdate(g, r.params.map((name) => ({ name, value: this.#w.inputs.get(name)! })), r.grads, r.loss);
    }
    e = { p: new Program(g, rt.backend), params: r.params };
    this.#programs.set(key, e);
    return e;
  }

  /** Token ids and slot rows (row b·M + j for word j of prompt b) of B prompts with <id>. */
  #prompts(prompts: readonly string[]): { ids: Int32Array; slots: Int32Array } {
    const M = this.config.taps.length;
    const D = this.config.textDim;
    const dummy = new Identity({ k: new Float32Array(M * D), stages: 1, words: M, dim: D, method: 'dreamidentity' });
    const ids = new Int32Array(prompts.length * 77);
    const slots = new Int32Array(prompts.length * 77);
    prompts.forEach((p, b) => {
      const e = expandPrompt(this.runtime.tokenizer, p, new Map([['id', dummy]]));
      ids.set(e.ids, b * 77);
      e.slots.forEach((s, i) => (slots[b * 77 + i] = s < 0 ? -1 : b * M + s));
    });
    return { ids, slots };
  }

  /** z_t = √ᾱ_t·z0 + √(1 − ᾱ_t)·ε per batch row (DDPM add_noise). */
  addNoise(z0: Float32Array, noise: Float32Array, timesteps: readonly number[]): Float32Array {
    return addNoise(this.#alphasCumprod, z0, noise, timesteps);
  }

  #check(batch: TrainBatch): void {
    this.#live();
    const { faces, latents, noise, prompts, timesteps } = batch ?? ({} as TrainBatch);
    const S = this.config.imageSize;
    if (!(faces instanceof Tensor) || faces.shape.length !== 4 || faces.shape[1] !== 3 || faces.shape[2] !== S || faces.shape[3] !== S || faces.shape[0]! < 1)
      throw new IdforgeError('E_SHAPE', `EncoderTrainer: faces must be a Tensor [B, 3, ${S}, ${S}], got ${faces instanceof Tensor ? JSON.stringify(faces.shape) : typeof faces}`);
    const b = faces.shape[0]!;
    const C = this.runtime.configs.unet.inChannels;
    for (const [name, t] of [['latents', latents], ['noise', noise]] as const)
      if (!(t instanceof Tensor) || t.shape.length !== 4 || t.shape[0] !== b || t.shape[1] !== C)
        throw new IdforgeError('E_SHAPE', `EncoderTrainer: ${name} must be a Tensor [${b}, ${C}, h, w], got ${t instanceof Tensor ? JSON.stringify(t.shape) : typeof t}`);
    if (latents.shape.some((d, i) => d !== noise.shape[i])) throw new IdforgeError('E_SHAPE', 'EncoderTrainer: latents and noise must have one shape');
    if (!Array.isArray(prompts) || prompts.length !== b) throw invalid('prompts', `${b} strings (one per face)`, prompts, { where: W });
    const T = this.#alphasCumprod.length;
    if (!Array.isArray(timesteps) || timesteps.length !== b || !timesteps.every((t) => Number.isInteger(t) && t >= 0 && t < T))
      throw invalid('timesteps', `${b} integers in [0, ${T})`, timesteps, { where: W });
  }

  /** The batch's device inputs (faces, ids, slots, z_t, t, noise): the caller disposes them. */
  #batchInputs(batch: TrainBatch): Tensor[] {
    const rt = this.runtime;
    const { ids, slots } = this.#prompts(batch.prompts);
    const [b, c, h, w] = batch.latents.shape as [number, number, number, number];
    const noise = batch.noise.toFloat32();
    const zt = this.addNoise(batch.latents.toFloat32(), noise, batch.timesteps);
    const inputs: Tensor[] = [];
    try {
      inputs.push(rt.upload(batch.faces), rt.ints(ids, [b, 77]), rt.ints(slots, [b, 77]), rt.floats(zt, [b, c, h, w]),
        rt.floats(Float32Array.from(batch.timesteps), [b]), rt.floats(noise, [b, c, h, w]));
      return inputs;
    } catch (e) {
      for (const t of inputs) t.dispose();
      throw e;
    }
  }

  /** One step's loss and gradients on host arrays (the weights as they are now; nothing changes). */
  async step(batch: TrainBatch): Promise<StepValues> {
    this.#check(batch);
    const [b, c, h, w] = batch.latents.shape as [number, number, number, number];
    const { p, params } = this.#program(b, c, h, w, false);
    const inputs = this.#batchInputs(batch);
    try {
      const outs = await p.run([...inputs, ...this.#adam.tensors(params)]);
      const vals = outs.map((o) => {
        using hst = toHost(o);
        return hst.toFloat32();
      });
      const grads = new Map<string, Float32Array>();
      params.forEach((n, i) => grads.set(n, vals[3 + i]!));
      return { loss: vals[0]![0]!, lossDiff: vals[1]![0]!, lossReg: vals[2]![0]!, grads };
    } finally {
      for (const t of inputs) t.dispose();
    }
  }

  /**
   * One training step in one native call: loss and gradients, the global gradient norm, clipping
   * to `clipNorm`, and Adam (step count + 1) applied in place to the weights on the device. A
   * non-finite loss changes nothing and throws E_NUMERIC.
   */
  async trainStep(batch: TrainBatch, opts: AdamStepOptions): Promise<TrainStepValues> {
    this.#check(batch);
    const { lr, clipNorm } = opts ?? ({} as AdamStepOptions);
    nonNegative(lr, 'lr', { positive: true, where: W });
    if (typeof clipNorm !== 'number' || !(clipNorm >= 0)) throw invalid('clipNorm', 'a number ≥ 0 (Infinity: no clipping)', clipNorm, { where: W });
    const [b, c, h, w] = batch.latents.shape as [number, number, number, number];
    const { p, params } = this.#program(b, c, h, w, true);
    const batchIn = this.#batchInputs(batch);
    try {
      const { values: [loss, lossDiff, lossReg], gradNorm } = await this.#adam.step(p, batchIn, params, 3, { lr, clipNorm });
      this.#hostStale = true;
      return { loss: loss!, lossDiff: lossDiff!, lossReg: lossReg!, gradNorm };
    } finally {
      for (const t of batchIn) t.dispose();
    }
  }

  /** The loss and the gradient of every trainable encoder weight for one batch. */
  async lossAndGrads(batch: TrainBatch): Promise<LossAndGrads> {
    const r = await this.step(batch);
    const grads = new Map<string, Tensor>();
    for (const [n, d] of r.grads) grads.set(n, Tensor.from(d, this.#host.get(n)!.shape));
    return { loss: r.loss, lossDiff: r.lossDiff, lossReg: r.lossReg, grads };
  }

  dispose(): void {
    this.#disposed = true;
    for (const e of this.#programs.values()) e.p.dispose();
    this.#programs.clear();
    this.#adam.dispose();
    this.#w.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
