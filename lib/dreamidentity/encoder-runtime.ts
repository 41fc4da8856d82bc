// The ID encoder's model runtime (lib/runtime/runtime.ts): one weight group, device, stream and
// programs (one per batch size).
import type { BackendSpec } from '../graph/program.js';
import type { Weights } from '../graph/weights.js';
import type { TensorRef } from '../io/checkpoint.js';
import { ModelRuntime } from '../runtime/runtime.js';

/** The encoder's model runtime: its weights (one group), device, stream and programs (one per batch size). */
export class IdEncoderRuntime extends ModelRuntime {
  readonly weights: Weights;
  /** Over checked refs: of an open file (`close` runs at dispose) or of float32 host weights (create(), a trainer's result). */
  constructor(backend: BackendSpec, refs: Map<string, TensorRef>, close?: () => void) {
    super(backend, 'IdEncoder');
    if (close) this.adopt(close);
    this.weights = this.addWeights('id-encoder', refs);
  }
}
