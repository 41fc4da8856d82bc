/**
 * LoRA merging on the runtime's device. For every weight W a set of LoRA files targets,
 *   W' = W + Σ_files scale·(alpha/rank)·up@down
 * is one GEMM (the files' pairs side by side along the rank, the scales folded into `up` on the
 * host) whose result is written in place into the resident weight (Program.run's `into`): every
 * compiled program keeps reading the same memory, so nothing recompiles. W is the base as the
 * model's file holds it, uploaded again for each merge: the base is never reconstructed by
 * subtraction, and a weight no file targets any more is copied back from it exactly.
 * The runtime's gate (ModelRuntime.exclusive) keeps calls and merges apart.
 */
import { IdforgeError } from '../errors.js';
import type { Graph, Value } from '../graph/graph.js';
import type { Weights } from '../graph/weights.js';
import type { LoraComponent, LoraFile } from '../io/lora.js';
import { Tensor } from '../tensor.js';
import { bool, invalid, numberIn, options, shown, text } from '../validate.js';
import type { ModelRuntime } from './runtime.js';

/** One LoRA file of Engine.setLoras. */
export interface LoraOptions {
  /** A .safetensors LoRA (kohya / A1111 naming, or diffusers / PEFT). */
  path: string;
  /** Its strength: W' = W + scale·(alpha/rank)·up@down (default 1; negative subtracts the style). */
  scale?: number;
}

export interface SetLorasOptions {
  /**
   * true (default): a key naming no module of the model, or a shape that does not fit, is
   * E_MODEL_FORMAT. false: those modules are skipped and reported in the result's warnings.
   */
  strict?: boolean;
}

/** setLoras' arguments: at most 64 files, each a path and a finite scale in [−1000, 1000] (default 1). */
export function resolveLoras(loras: unknown, opts: unknown): { loras: { path: string; scale: number }[]; strict: boolean } {
  const where = 'setLoras';
  if (!Array.isArray(loras)) throw invalid('loras', 'an array of { path, scale? } ([] removes every LoRA)', loras, { where });
  if (loras.length > 64) throw invalid('loras', 'at most 64 files', shown(`${loras.length}`), { where });
  const out = loras.map((l: unknown, i) => {
    const o = l as { path?: unknown; scale?: unknown } | null;
    if (o === null || typeof o !== 'object') throw invalid(`loras[${i}]`, '{ path: string, scale?: number }', l, { where });
    const path = text(o.path, `loras[${i}].path`, { nonEmpty: true, where });
    return { path, scale: numberIn(o.scale ?? 1, `loras[${i}].scale`, -1000, 1000, { where }) };
  });
  const o = options(opts as { strict?: unknown } | undefined, 'options', where);
  return { loras: out, strict: o.strict === undefined ? true : bool(o.strict, 'strict', where) };
}

/** What a merge needs from the runtime: its resident weights and one-off programs. */
export interface LoraHost {
  readonly weights: Record<LoraComponent, Weights>;
  runOnce: ModelRuntime['runOnce'];
}

/** One weight to write: the base plus (when any file targets it) up [O, R] @ down [R, I]. */
interface Write {
  component: LoraComponent;
  weight: string;
  shape: number[];
  delta?: { up: Float32Array; downT: Float32Array; rank: number };
}

/** Base bytes per merge program (float32): bounds the extra memory a merge takes. */
const CHUNK_ELEMENTS = 32 * 2 ** 20;

const key = (c: LoraComponent, w: string) => `${c}:${w}`;

/** Σ over files: ups side by side [O, R] (each scaled by scale·alpha/rank), downs transposed and side by side [I, R]. */
function stack(pairs: { up: Float32Array; down: Float32Array; rank: number; factor: number }[], O: number, I: number): NonNullable<Write['delta']> {
  const R = pairs.reduce((a, p) => a + p.rank, 0);
  const up = new Float32Array(O * R);
  const downT = new Float32Array(I * R);
  let r0 = 0;
  for (const p of pairs) {
    for (let o = 0; o < O; o++) for (let r = 0; r < p.rank; r++) up[o * R + r0 + r] = p.up[o * p.rank + r]! * p.factor;
    for (let r = 0; r < p.rank; r++) for (let i = 0; i < I; i++) downT[i * R + r0 + r] = p.down[r * I + i]!;
    r0 += p.rank;
  }
  return { up, downT, rank: R };
}

type WeightId = { component: LoraComponent; weight: string };

export class LoraMerger {
  /** Weights that differ from their base now, by key(). */
  #merged = new Map<string, WeightId>();

  constructor(private readonly host: LoraHost) {}

  /** A write of the base alone (the weight back as its file holds it). */
  #base({ component, weight }: WeightId): Write {
    return { component, weight, shape: this.host.weights[component].shape(weight) };
  }

  /**
   * Makes the resident weights base + the given files' deltas (none: the base). On any failure the
   * weights are put back to their base before the error is thrown.
   */
  async apply(files: readonly { file: LoraFile; scale: number }[]): Promise<void> {
    const writes = this.#plan(files);
    const touched = new Map([...this.#merged, ...writes.map((w) => [key(w.component, w.weight), w] as const)]);
    try {
      await this.#write(writes);
      // Names only: the deltas (up to hundreds of MB) are not kept.
      this.#merged = new Map(writes.filter((w) => w.delta).map((w) => [key(w.component, w.weight), { component: w.component, weight: w.weight }]));
    } catch (e) {
      // Back to the base everywhere this merge may have written, then report the merge's error.
      this.#merged.clear();
      try {
        await this.#write([...touched.values()].map((w) => this.#base(w)));
      } catch (r) {
        const err = e as Error;
        throw new IdforgeError('E_INTERNAL', `${err.message}; putting the base weights back failed too (${(r as Error).message}): dispose this engine`, { cause: e });
      }
      throw e;
    }
  }

  /** Every weight to write: those the files target (with their summed delta) and those merged before (back to base). */
  #plan(files: readonly { file: LoraFile; scale: number }[]): Write[] {
    const groups = new Map<string, { component: LoraComponent; weight: string; pairs: { up: Float32Array; down: Float32Array; rank: number; factor: number }[] }>();
    for (const { file, scale } of files) {
      for (const m of file.modules) {
        const k = key(m.component, m.weight);
        let g = groups.get(k);
        if (!g) groups.set(k, (g = { component: m.component, weight: m.weight, pairs: [] }));
        g.pairs.push({ up: m.up, down: m.down, rank: m.rank, factor: (scale * m.alpha) / m.rank });
      }
    }
    const writes: Write[] = [];
    for (const g of groups.values()) {
      const shape = this.host.weights[g.component].shape(g.weight);
      const O = shape[0]!;
      writes.push({ component: g.component, weight: g.weight, shape, delta: stack(g.pairs, O, shape.reduce((a, b) => a * b, 1) / O) });
    }
    for (const [k, w] of this.#merged) if (!groups.has(k)) writes.push(this.#base(w));
    return writes;
  }

  /** The writes in programs of at most CHUNK_ELEMENTS base elements each. */
  async #write(writes: Write[]): Promise<void> {
    let chunk: Write[] = [];
    let size = 0;
    for (const w of writes) {
      const n = w.shape.reduce((a, b) => a * b, 1);
      if (chunk.length && size + n > CHUNK_ELEMENTS) {
        await this.#run(chunk);
        chunk = [];
        size = 0;
      }
      chunk.push(w);
      size += n;
    }
    if (chunk.length) await this.#run(chunk);
  }

  /**
   * One program: per weight, out = base + up@down (LINEAR with the base as its residual; a conv
   * kernel adds the reshaped product) or out = base·1 + (−0), an exact copy (−0 keeps the sign of
   * zeros), written into the resident tensor. A result that is not finite is E_NUMERIC.
   */
  async #run(chunk: Write[]): Promise<void> {
    const inputs: Tensor[] = [];
    let fresh: Tensor[] = [];  // the results when they are not written into the resident tensors
    try {
      const into = chunk.map((w) => this.host.weights[w.component].tensor(w.weight));
      // Weights stored in another dtype than the compute (float16 weights on the CPU): the merge
      // runs in the compute dtype and its results are converted into the resident tensors.
      const compute = this.host.weights.unet.backend.dtype;
      const direct = into.every((t) => t.dtype === compute);
      for (const w of chunk) {
        const weights = this.host.weights[w.component];
        const base = weights.fromFile(w.weight);
        if (base.dtype === compute) inputs.push(base);
        else {
          inputs.push(base.to(compute));
          base.dispose();
        }
        if (w.delta) {
          const O = w.shape[0]!;
          const I = w.delta.downT.length / w.delta.rank;
          inputs.push(Tensor.from(w.delta.up, [O, w.delta.rank], weights.backend));
          inputs.push(Tensor.from(w.delta.downT, [I, w.delta.rank], weights.backend));
        }
      }
      const outs = await this.host.runOnce((g) => {
        for (const w of chunk) g.output(mergeGraph(g, w));
      }, inputs, direct ? { into } : {});
      if (!direct) {
        fresh = outs;
        into.forEach((t, i) => t.copyFrom(outs[i]!));
      }
      chunk.forEach((w, i) => {
        const bad = into[i]!.countNonFinite();
        if (bad) throw new IdforgeError('E_NUMERIC', `LoRA merge: ${w.component} weight '${w.weight}' would hold ${bad} NaN/Inf value(s)${into[i]!.dtype === 'float16' ? " (beyond float16's range: lower the scale or use dtype float32)" : ''}`);
      });
    } finally {
      for (const t of inputs) t.dispose();
      for (const t of fresh) t.dispose();
    }
  }
}

function mergeGraph(g: Graph, w: Write): Value {
  const base = g.input(w.shape);
  if (!w.delta) return g.scale(base, 1, -0);
  const O = w.shape[0]!;
  const R = w.delta.rank;
  const up = g.input([O, R]);
  const downT = g.input([w.delta.downT.length / R, R]);
  if (w.shape.length === 2) return g.linear(up, downT, undefined, { residual: base });
  return g.add(base, g.reshape(g.linear(up, downT), w.shape));
}
