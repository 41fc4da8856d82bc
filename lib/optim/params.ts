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
