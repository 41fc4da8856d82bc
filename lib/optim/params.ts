/**
 * Trainable weights in the graph IR. A weight is made trainable by building the graph with it
 * as a graph INPUT instead of a constant: autodiff (lib/graph/autodiff.ts) then differentiates
 * the loss with respect to it like any other `wrt` value, with the parameter-gradient rules of
 * linear, patch conv2d and layer norm, and the program is fed the current values on every run.
 * Frozen weights stay constants (resident on the device once).
 */
import type { Graph, Value } from '../graph/graph.js';
import type { BackendSpec } from '../graph/program.js';
import { Weights } from '../graph/weights.js';
import type { TensorRef } from '../io/checkpoint.js';

/** A weight held on the host in float32 (what a trainer starts from, reads back and saves). */
export interface HostWeight {
  shape: number[];
  data: Float32Array;
}

/** TensorRefs over float32 host arrays (a weight group built from memory, not from a file). */
export function hostRefs(weights: ReadonlyMap<string, HostWeight>): Map<string, TensorRef> {
  const m = new Map<string, TensorRef>();
  for (const [name, w] of weights)
    m.set(name, {
      name, shape: [...w.shape], dtype: 'F32', file: '(memory)', key: name,
      readFloat32: () => w.data.slice(),
      readBytes: () => Buffer.from(w.data.buffer, w.data.byteOffset, w.data.byteLength),
    });
  return m;
}

/**
 * A weight group whose `trainable` names are graph inputs of the graph it builds (one graph per
 * instance of use: call begin() before building each graph); the others are constants.
 */
export class TrainableWeights extends Weights {
  #inputs = new Map<string, Value>();

  constructor(component: string, refs: Map<string, TensorRef>, backend: BackendSpec, readonly trainable: ReadonlySet<string>) {
    super(component, refs, backend);
  }

  /** Starts a new graph: the next in() calls create its parameter inputs. */
  begin(): void {
    this.#inputs = new Map();
  }

  /** The parameter inputs of the current graph, in creation order (name → Value). */
  get inputs(): ReadonlyMap<string, Value> {
    return this.#inputs;
  }

  override in(g: Graph, name: string): Value {
    if (!this.trainable.has(name)) return super.in(g, name);
    let v = this.#inputs.get(name);
    if (!v) {
      v = g.input(this.shape(name), 'float', name);
      this.#inputs.set(name, v);
    }
    return v;
  }
}

/**
 * A weight group that learns entirely, known by its names and shapes alone: every weight is a graph
 * input whose value the training program is given on each run (the values live elsewhere, e.g.
 * in a DeviceAdam), so nothing is read or uploaded here.
 */
export function trainableLayout(component: string, layout: readonly { name: string; shape: readonly number[] }[], backend: BackendSpec): TrainableWeights {
  const refs = new Map(layout.map((e) => [e.name, { name: e.name, shape: [...e.shape], dtype: 'F32', file: '(graph input)', key: e.name } as unknown as TensorRef]));
  return new TrainableWeights(component, refs, backend, new Set(refs.keys()));
}
