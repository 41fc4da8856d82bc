/**
 * The SeFi-IDE learning step as one program over the frozen SD model: the token generator
 * (lib/learn/generator.ts, its weights trainable graph inputs) → the 2·S tokens → the step
 * stage's K token and V token injected at the `<id>` slot of the prompt (two text-encoder passes)
 * → the UNet with keys from the K context and values from the V context at z_t →
 *   L = mean((ε_θ(z_t, t, c_K, c_V) − ε)²) + λ · mean_layers mean((A − A_ref)²)
 * (A: the cross-attention map, all 77 tokens, at each layer of side latent/2; A_ref: the map of
 * the same template with the init word in place of V*, taken with the target pass's queries and
 * held constant) → the gradient of every generator weight (lib/graph/autodiff.ts) → Adam.
 *
 * The stage is data, not structure: the slot row of the `<id>` token holds the stage index, and
 * INJECT picks that row of the K tokens [S, D] and of the V tokens (its backward gives the other
 * stages' rows zero gradient), so one compiled program serves every step.
 *
 * TokenTrainer keeps the generator's weights and their Adam moments on the engine's device
 * (lib/optim/device-adam.ts, the ID-encoder trainer's substrate); trainStep() is forward,
 * backward and Adam in ONE native call, in place, in float32.
 */
import { IdforgeError } from '../errors.js';
import { grad } from '../graph/autodiff.js';
import type { Graph, Value } from '../graph/graph.js';
import type { Weights } from '../graph/weights.js';
import type { ModelConfigs } from '../io/configs.js';
import { DeviceAdam, appendAdamUpdate, type OptimizerState } from '../optim/device-adam.js';
import { trainableLayout, type HostWeight, type TrainableWeights } from '../optim/params.js';
import { toHost } from '../runtime/runtime.js';
import type { SdRuntime } from '../runtime/sd.js';
import type { Tensor } from '../tensor.js';
import { buildTextEncoder } from '../text/clip.js';
import { buildTokenGenerator, generatorLayout, initialGeneratorWeights, type GeneratorShape } from './generator.js';
import { buildUNetLoss } from './objective.js';

/** The graph values the learning loss reads. */
export interface LearnLossInputs {
  ids: Value; // [1, 77] int32
  /** [1, 77] int32: the row of `k` / `v` injected at each position, −1 to keep the token. */
  slots: Value;
  k: Value; // [rows, D]
  v: Value; // [rows, D]
  /** The reference context [1, 77, Dc] (the init word in place of V*). */
  reference: Value;
  x: Value; // z_t [1, C, h, w]
  t: Value; // [1]
  eps: Value; // the noise added [1, C, h, w]
}

/** The SeFi-IDE loss (file comment) and the values grad() must hold constant. */
export function buildLearnLoss(g: Graph, w: { text: Weights; unet: Weights }, configs: Pick<ModelConfigs, 'text' | 'unet'>, layers: readonly string[], lambda: number, inp: LearnLossInputs): { loss: Value; lossDiff: Value; lossAtt: Value; stop: Value[] } {
  const ck = buildTextEncoder(g, w.text, configs.text, { ids: inp.ids, inject: { slots: inp.slots, vectors: inp.k } });
  const cv = buildTextEncoder(g, w.text, configs.text, { ids: inp.ids, inject: { slots: inp.slots, vectors: inp.v } });
  const r = buildUNetLoss(g, w.unet, configs.unet, { x: inp.x, t: inp.t, ctx: { k: ck, v: cv }, epsTarget: inp.eps, ...(layers.length ? { reference: { context: inp.reference, layers } } : {}) });
  const lossAtt = r.lossAtt ?? g.scale(r.lossDiff!, 0);
  return { loss: g.add(r.lossDiff!, g.scale(lossAtt, lambda)), lossDiff: r.lossDiff!, lossAtt, stop: r.stop };
}

/**
 * The learning graph: inputs ids, slots [1, 77] (int32), the reference context, z_t, t [1], ε,
 * the init embedding [1, 1, D], then the generator's weights (generatorLayout order) → outputs
 * loss, lossDiff, lossAtt; returns the weights' inputs and gradients. Exported for the memory
 * planner (lib/learn/plan.ts).
 */
export function buildLearnGraph(
  g: Graph, w: { text: Weights; unet: Weights; generator: TrainableWeights }, configs: Pick<ModelConfigs, 'text' | 'unet'>,
  layers: readonly string[], [h, wd]: [number, number], lambda: number, shape: GeneratorShape,
): { params: { name: string; value: Value }[]; loss: Value; grads: Value[] } {
  const C = configs.unet.inChannels;
  const ids = g.input([1, 77], 'int32', 'ids');
  const slots = g.input([1, 77], 'int32', 'slots');
  const reference = g.input([1, 77, configs.unet.crossAttentionDim], 'float', 'reference');
  const x = g.input([1, C, h, wd], 'float', 'z_t');
  const t = g.input([1], 'float', 't');
  const eps = g.input([1, C, h, wd], 'float', 'noise');
  const init = g.input([1, 1, shape.dim], 'float', 'init');
  w.generator.begin();
  // Every weight's input in layout order, before the generator reads them.
  const params = generatorLayout(shape).map(({ name }) => ({ name, value: w.generator.in(g, name) }));
  const tokens = buildTokenGenerator(g, w.generator, init, shape); // [2S, D]
  const S = shape.stages;
  const k = g.slice(tokens, 0, 0, S);
  const v = g.slice(tokens, 0, S, 2 * S);
  const r = buildLearnLoss(g, w, configs, layers, lambda, { ids, slots, k, v, reference, x, t, eps });
  g.output(r.loss, 'loss');
  g.output(r.lossDiff, 'lossDiff');
  g.output(r.lossAtt, 'lossAtt');
  return { params, loss: r.loss, grads: grad(g, r.loss, params.map((p) => p.value), { stop: r.stop }) };
}

/** One learning step's data (the stage is in `slots`). */
export interface LearnSample {
  ids: Int32Array;
  /** The template's slot row with the stage index at the `<id>` position (−1 elsewhere). */
  slots: Int32Array;
  /** The template's reference context [1, 77, Dc] on the engine's device (not disposed here). */
  reference: Tensor;
  zt: Float32Array;
  t: number;
  noise: Float32Array;
  /** The latent's shape [1, C, h, w]. */
  shape: number[];
}

export interface LearnStepValues {
  loss: number;
  lossDiff: number;
  lossAtt: number;
}

export interface TokenTrainerOptions {
  /** The init word's embedding [D]: the generator's input, and every token at the start. */
  init: Float32Array;
  stages: number;
  lambda: number;
  /** Layers of the attention loss (IdentityLearner's attentionLossLayersOf). */
  layers: readonly string[];
  /** Weights to start from (a checkpoint's); else the seeded initial ones. */
  weights?: ReadonlyMap<string, HostWeight>;
  seed?: number;
}

export class TokenTrainer implements Disposable {
  readonly shape: GeneratorShape;
  readonly #rt: SdRuntime;
  readonly #o: TokenTrainerOptions;
  readonly #w: TrainableWeights;
  readonly #adam: DeviceAdam;
  readonly #init: Tensor;
  readonly #names: string[];

  constructor(rt: SdRuntime, o: TokenTrainerOptions) {
    rt.assertLive();
    this.#rt = rt;
    this.#o = o;
    this.shape = { dim: o.init.length, stages: o.stages };
    const layout = generatorLayout(this.shape);
    this.#names = layout.map((e) => e.name);
    const weights = o.weights ?? initialGeneratorWeights(o.init, this.shape, o.seed ?? 0);
    for (const { name, shape } of layout) {
      const got = weights.get(name);
      if (!got || got.data.length !== shape.reduce((a, b) => a * b, 1))
        throw new IdforgeError('E_MODEL_FORMAT', `learnIdentity: the generator weight '${name}' is ${got ? `${got.data.length} values` : 'missing'}, expected ${JSON.stringify(shape)}`);
    }
    this.#w = trainableLayout('token generator', layout, rt.backend);
    this.#adam = new DeviceAdam(rt.backend, new Map(layout.map(({ name, shape }) => [name, { shape, data: weights.get(name)!.data }])), 'learnIdentity');
    this.#init = rt.floats(o.init, [1, 1, this.shape.dim]);
  }

  #key(mode: string, h: number, w: number): string {
    const { dim, stages } = this.shape;
    return `learn-${mode}:${h}x${w}:${dim}x${stages}:${this.#o.lambda}:${this.#o.layers.join(',')}`;
  }

  /** The step program: with `update` Adam closes it (appendAdamUpdate), else the gradients are outputs. */
  #program(h: number, w: number, update: boolean): ReturnType<SdRuntime['program']> {
    const rt = this.#rt;
    return rt.program(this.#key(update ? 'step' : 'grads', h, w), (g) => {
      const r = buildLearnGraph(g, { ...rt.weights, generator: this.#w }, rt.configs, this.#o.layers, [h, w], this.#o.lambda, this.shape);
      if (update) appendAdamUpdate(g, r.params, r.grads, r.loss);
      else r.grads.forEach((d, i) => g.output(d, `grad:${r.params[i]!.name}`));
    });
  }

  /** The sample's device inputs before the generator's weights (the caller disposes all but the reference and init). */
  #inputs(s: LearnSample): { all: Tensor[]; owned: Tensor[] } {
    const rt = this.#rt;
    const owned: Tensor[] = [];
    try {
      owned.push(rt.ints(s.ids, [1, 77]), rt.ints(s.slots, [1, 77]));
      const [ids, slots] = owned as [Tensor, Tensor];
      owned.push(rt.floats(s.zt, s.shape), rt.floats(new Float32Array([s.t]), [1]), rt.floats(s.noise, s.shape));
      return { all: [ids, slots, s.reference, ...owned.slice(2), this.#init], owned };
    } catch (e) {
      for (const x of owned) x.dispose();
      throw e;
    }
  }

  /**
   * One learning step in one native call: loss, the generator's gradients and Adam (no clipping)
   * applied in place on the device. A non-finite loss changes nothing and throws E_NUMERIC.
   */
  async trainStep(s: LearnSample, lr: number): Promise<LearnStepValues & { gradNorm: number }> {
    const p = this.#program(s.shape[2]!, s.shape[3]!, true);
    const { all, owned } = this.#inputs(s);
    try {
      const { values: [loss, lossDiff, lossAtt], gradNorm } = await this.#adam.step(p, all, this.#names, 3, { lr, clipNorm: 0 });
      return { loss: loss!, lossDiff: lossDiff!, lossAtt: lossAtt!, gradNorm };
    } finally {
      for (const x of owned) x.dispose();
    }
  }

  /** The loss and every generator weight's gradient for one sample (the weights as they are; nothing changes). */
  async lossAndGrads(s: LearnSample): Promise<LearnStepValues & { grads: Map<string, Float32Array> }> {
    const p = this.#program(s.shape[2]!, s.shape[3]!, false);
    const { all, owned } = this.#inputs(s);
    try {
      const vals = (await p.run([...all, ...this.#adam.tensors(this.#names)])).map((o) => {
        using h = toHost(o);
        return h.toFloat32();
      });
      const grads = new Map(this.#names.map((n, i) => [n, vals[3 + i]!]));
      return { loss: vals[0]![0]!, lossDiff: vals[1]![0]!, lossAtt: vals[2]![0]!, grads };
    } finally {
      for (const x of owned) x.dispose();
    }
  }

  /** The generator's output now: the K tokens [S·D] and the V tokens [S·D]. */
  async tokens(): Promise<{ k: Float32Array; v: Float32Array }> {
    const { dim: D, stages: S } = this.shape;
    const p = this.#rt.program(`learn-tokens:${D}x${S}`, (g) => {
      const init = g.input([1, 1, D], 'float', 'init');
      this.#w.begin();
      for (const n of this.#names) this.#w.in(g, n);
      g.output(buildTokenGenerator(g, this.#w, init, this.shape), 'tokens');
    });
    const [out] = await p.run([this.#init, ...this.#adam.tensors(this.#names)]);
    using h = toHost(out!);
    const all = h.toFloat32();
    return { k: all.slice(0, S * D), v: all.slice(S * D) };
  }

  /** How many values learn. */
  get parameterCount(): number {
    return this.#adam.count;
  }

  /** The generator's weights read back from the device (a checkpoint's generator.safetensors). */
  hostWeights(): Map<string, HostWeight> {
    return this.#adam.read();
  }

  optimizerState(): OptimizerState {
    return this.#adam.state();
  }

  setOptimizerState(s: OptimizerState): void {
    this.#adam.setState(s);
  }

  dispose(): void {
    this.#adam.dispose();
    this.#init.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
