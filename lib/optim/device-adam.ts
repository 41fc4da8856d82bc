/**
 * Trainable weights resident on the device with Adam's state, and the update a training program
 * ends with: the one training substrate of idforge (the ID-encoder trainer,
 * lib/dreamidentity/encoder-trainer.ts, and SeFi-IDE's token generator, lib/learn/token-trainer.ts).
 *
 * A training program is built with its trainable weights as graph inputs (lib/optim/params.ts),
 * differentiated by grad() (lib/graph/autodiff.ts) and closed by appendAdamUpdate: the squared
 * global gradient norm, then one ADAM_STEP per weight (global-norm clipping on the device). Its
 * inputs are [the caller's inputs…, the weights…, Adam's coefficients, m and v per weight], its
 * outputs [the caller's outputs…, ‖g‖², p', m', v' per weight]. DeviceAdam.step runs it as ONE
 * native call with p', m', v' written in place into the resident tensors (Program.run's `into`),
 * so neither weights nor gradients cross to the host.
 */
import { IdforgeError } from '../errors.js';
import type { Graph, Value } from '../graph/graph.js';
import type { BackendSpec, Program } from '../graph/program.js';
import { Tensor, numel } from '../tensor.js';
import { integer } from '../validate.js';
import { ADAM_COEFS, adamCoefficients } from './adam.js';
import type { HostWeight } from './params.js';

/** Adam's state as host arrays: the step count and a first and second moment per trainable weight. */
export interface OptimizerState {
  t: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

/**
 * Closes a training graph: `weights` are the trainable weights' graph inputs and `grads` the
 * gradients of `loss` with respect to them (same order). Adds the coefficient input and m, v per
 * weight, and the outputs ‖g‖² and p', m', v' per weight. A non-finite loss makes ‖g‖² NaN
 * (0·loss is added), and ADAM_STEP then leaves every weight as it was.
 */
export function appendAdamUpdate(g: Graph, weights: readonly { name: string; value: Value }[], grads: readonly Value[], loss: Value): void {
  if (weights.length !== grads.length || weights.length === 0)
    throw new IdforgeError('E_INTERNAL', `appendAdamUpdate: ${weights.length} weights, ${grads.length} gradients`);
  const coefs = g.input([ADAM_COEFS], 'int32', 'adam');
  let gsq = grads.map((d) => g.reduceSum(g.mul(d, d), [1])).reduce((a, x) => g.add(a, x));
  gsq = g.add(gsq, g.scale(loss, 0));
  g.output(gsq, 'gradNormSq');
  weights.forEach(({ name, value }, i) => {
    const m = g.input(value.shape, 'float', `m:${name}`);
    const v = g.input(value.shape, 'float', `v:${name}`);
    for (const o of g.adamStep(value, grads[i]!, m, v, coefs, gsq)) g.output(o);
  });
}

/** What DeviceAdam.step reports. */
export interface DeviceStep {
  /** The first element of each of the caller's outputs (the losses), as numbers. */
  values: number[];
  /** The global gradient norm before clipping. */
  gradNorm: number;
}

export class DeviceAdam implements Disposable {
  readonly #p = new Map<string, Tensor>();
  readonly #m = new Map<string, Tensor>();
  readonly #v = new Map<string, Tensor>();
  #t = 0;
  #disposed = false;

  /** Uploads `weights` (float32) to `backend`; `where` names the trainer in error messages. */
  constructor(readonly backend: BackendSpec, weights: ReadonlyMap<string, HostWeight>, readonly where: string) {
    if (backend.dtype !== 'float32') throw new IdforgeError('E_INTERNAL', `${where}: device Adam needs a float32 backend`);
    try {
      for (const [n, w] of weights) this.#p.set(n, Tensor.from(w.data, w.shape, backend));
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** The trainable names, in the order they were given. */
  get names(): string[] {
    return [...this.#p.keys()];
  }

  /** Steps taken (Adam's t). */
  get stepCount(): number {
    return this.#t;
  }

  /** How many values learn. */
  get count(): number {
    let n = 0;
    for (const p of this.#p.values()) n += numel(p.shape);
    return n;
  }

  /** The resident weights named, in that order (program inputs; not to be disposed). */
  tensors(names: readonly string[]): Tensor[] {
    this.#live();
    return names.map((n) => {
      const p = this.#p.get(n);
      if (!p) throw new IdforgeError('E_INTERNAL', `${this.where}: '${n}' does not learn here`);
      return p;
    });
  }

  /** The current weights read back from the device. */
  read(): Map<string, HostWeight> {
    this.#live();
    return new Map([...this.#p].map(([n, p]) => [n, { shape: [...p.shape], data: p.toFloat32() }]));
  }

  /** Adam's state read back from the device (empty moments before the first step). */
  state(): OptimizerState {
    this.#live();
    const read = (m: Map<string, Tensor>) => new Map([...m].map(([n, x]) => [n, x.toFloat32()]));
    return { t: this.#t, m: read(this.#m), v: read(this.#v) };
  }

  /** Restores Adam's state (resuming from a checkpoint); moments missing from it start at zero. */
  setState(s: OptimizerState): void {
    this.#live();
    integer(s?.t, 'the optimizer step count', 0, Number.MAX_SAFE_INTEGER, this.where);
    for (const [name, src] of [['first', s.m], ['second', s.v]] as const)
      for (const [n, a] of src) {
        const p = this.#p.get(n);
        if (!p) throw new IdforgeError('E_MODEL_FORMAT', `${this.where}: the optimizer state has a ${name} moment for '${n}', which does not learn here`);
        if (a.length !== numel(p.shape)) throw new IdforgeError('E_MODEL_FORMAT', `${this.where}: the ${name} moment of '${n}' has ${a.length} values, the weight ${numel(p.shape)}`);
      }
    for (const [n, p] of this.#p)
      for (const [src, dst] of [[s.m, this.#m], [s.v, this.#v]] as const) {
        dst.get(n)?.dispose();
        dst.set(n, Tensor.from(src.get(n) ?? new Float32Array(numel(p.shape)), p.shape, this.backend));
      }
    this.#t = s.t;
  }

  /**
   * One optimizer step: runs `program` (closed by appendAdamUpdate over the weights `names`, after
   * `outputs` outputs of its own) on `inputs` (the inputs before the weights) as one native call,
   * Adam's step t + 1 applied in place. A non-finite loss or gradient changes nothing (weights,
   * moments, step count) and throws E_NUMERIC.
   */
  async step(program: Program, inputs: readonly Tensor[], names: readonly string[], outputs: number, opts: { lr: number; clipNorm: number }): Promise<DeviceStep> {
    const ps = this.tensors(names);
    if (!this.#m.size) this.setState({ t: this.#t, m: new Map(), v: new Map() });
    using coefs = Tensor.from(adamCoefficients(this.#t + 1, opts.lr, opts.clipNorm), [ADAM_COEFS], { device: this.backend.device, stream: this.backend.stream ?? 0 });
    const state = names.flatMap((n) => [this.#m.get(n)!, this.#v.get(n)!]);
    const into = [...new Array<undefined>(outputs + 1), ...names.flatMap((n) => [this.#p.get(n)!, this.#m.get(n)!, this.#v.get(n)!])];
    // No AbortSignal inside the step: with one, CPU ops split their work by timing and a step
    // would not be bit-reproducible (resume must be); callers check theirs between steps.
    const outs = await program.run([...inputs, ...ps, coefs, ...state], { into });
    const head = outs.slice(0, outputs + 1).map((o) => {
      try {
        return o.toFloat32()[0]!;
      } finally {
        o.dispose();
      }
    });
    const gsq = head.pop()!;
    if (!Number.isFinite(gsq))
      throw new IdforgeError('E_NUMERIC', `${this.where}: the loss (${head[0]}) or a gradient is not finite at step ${this.#t + 1}; the weights are unchanged`);
    this.#t++;
    return { values: head, gradNorm: Math.sqrt(gsq) };
  }

  #live(): void {
    if (this.#disposed) throw new IdforgeError('E_DISPOSED', `${this.where} used after dispose()`);
  }

  dispose(): void {
    this.#disposed = true;
    for (const m of [this.#p, this.#m, this.#v]) {
      for (const x of m.values()) x.dispose();
      m.clear();
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
