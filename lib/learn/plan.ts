/**
 * Activation-memory plan of a learning step without weights or a device: the learning graph is
 * built over shape-only stand-ins for the weights (the synthetic model layouts of
 * lib/io/layout.ts) and planMemory() replays the native runner's allocation order
 * (every value allocated by its op, released after its last reader).
 */
import { Graph } from '../graph/graph.js';
import { planMemory } from '../graph/autodiff.js';
import { ShapeWeights } from '../graph/weights.js';
import type { ModelConfigs } from '../io/configs.js';
import { textLayout, unetLayout } from '../io/layout.js';
import { buildUNet } from '../unet/unet.js';
import { buildTextEncoder } from '../text/clip.js';
import { appendAdamUpdate } from '../optim/device-adam.js';
import { trainableLayout } from '../optim/params.js';
import { generatorLayout } from './generator.js';
import { attentionLossLayersOf } from './learn.js';
import { buildLearnGraph } from './token-trainer.js';

export interface MemoryPlan {
  /** Peak live bytes of one learning step (loss, gradients and Adam; the generator's weights and moments included), float32. */
  learnPeakBytes: number;
  learnPeakOp: string;
  /** The same for the forward passes alone (text encoder + UNet), for comparison. */
  forwardPeakBytes: number;
  ops: number;
  weightBytes: number;
}

/** The memory plan of one learning step at image side `size` (latent side size / 8). */
export function learningMemoryPlan(configs: Pick<ModelConfigs, 'text' | 'unet' | 'vae'>, size: number, bytesPerElement = 4): MemoryPlan {
  const w = { text: new ShapeWeights('text_encoder', textLayout(configs.text)), unet: new ShapeWeights('unet', unetLayout(configs.unet)) };
  const f = 2 ** (configs.vae.blockOutChannels.length - 1);
  const h = size / f;
  const g = new Graph();
  const shape = { dim: configs.text.hiddenSize, stages: 5 };
  const generator = trainableLayout('token generator', generatorLayout(shape), { device: 'cpu', dtype: 'float32' });
  const r = buildLearnGraph(g, { ...w, generator }, configs, attentionLossLayersOf(configs.unet), [h, h], 0.003, shape);
  appendAdamUpdate(g, r.params, r.grads, r.loss);
  const learn = planMemory(g, bytesPerElement);
  const gf = new Graph();
  const ids = gf.input([1, 77], 'int32');
  const ctx = buildTextEncoder(gf, w.text, configs.text, { ids });
  const eps = buildUNet(gf, w.unet, configs.unet, gf.input([1, configs.unet.inChannels, h, h]), gf.input([1]), { k: ctx, v: ctx }).eps;
  gf.output(eps);
  const fwd = planMemory(gf, bytesPerElement);
  let weightBytes = 0;
  for (const e of [...textLayout(configs.text), ...unetLayout(configs.unet)]) weightBytes += e.shape.reduce((a, b) => a * b, 1) * bytesPerElement;
  return { learnPeakBytes: learn.peakBytes, learnPeakOp: learn.peakOpName, forwardPeakBytes: fwd.peakBytes, ops: g.ops.length, weightBytes };
}
