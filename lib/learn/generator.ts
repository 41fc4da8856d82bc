/**
 * The SeFi-IDE token generator as a graph: the learned parameters of one identity. A small
 * pre-norm transformer block of width D — two self-attention layers and one feed-forward layer,
 * each `x ← x + f(LayerNorm(x))` — reads the token embedding of the init word ("person"), and a
 * final linear map turns the result into 2·S vectors of width D: P_0^K … P_{S−1}^K, P_0^V … P_{S−1}^V.
 *
 * Its weights are trainable weights (lib/optim/params.ts: graph inputs), so the generator is part
 * of the learning step's program (lib/learn/token-trainer.ts): forward, backward and Adam for the
 * generator run with the text encoder and the UNet in one native call, in float32.
 *
 * Initialisation (so that every output starts at the init word's embedding e0 and the first
 * steps move the tokens, not noise): the output projections of the residual branches (attention
 * to_out, feed-forward fc2) and the final map's weight are zero, the final map's bias is e0
 * repeated 2·S times; the other weights are small seeded normals (σ = 0.02), norms are (1, 0).
 * The zero output weights open the paths one step at a time: the first gradients reach only the
 * final map, the second also the residual branches' output weights (to_out, fc2), the third every
 * weight before them.
 *
 * The input sequence is the single init token, so each attention's softmax is over one key (≡ 1)
 * and the layer computes to_out(to_v(LN(x))): its queries and keys get no gradient. The graph is
 * the general single-head attention (kept general so that several init words could be used). The feed-forward layer is D → 4D → D
 * with the exact (erf) GELU of the GELU op.
 */
import type { Graph, Value } from '../graph/graph.js';
import { layerNormW, linearW, type Weights } from '../graph/weights.js';
import type { HostWeight } from '../optim/params.js';
import { normalGenerator } from '../sched/random.js';

export interface GeneratorShape {
  dim: number;
  stages: number;
}

const LN_EPS = 1e-5;
const ATTENTION = ['attn0', 'attn1'] as const;

/** Every weight's name and shape, in the order the learning program takes them as inputs. */
export function generatorLayout({ dim: D, stages: S }: GeneratorShape): { name: string; shape: number[] }[] {
  const out: { name: string; shape: number[] }[] = [];
  const lin = (name: string, o: number, i: number) => out.push({ name: `${name}.weight`, shape: [o, i] }, { name: `${name}.bias`, shape: [o] });
  const norm = (name: string) => out.push({ name: `${name}.weight`, shape: [D] }, { name: `${name}.bias`, shape: [D] });
  for (const l of ATTENTION) {
    norm(`${l}.norm`);
    for (const p of ['to_q', 'to_k', 'to_v', 'to_out']) lin(`${l}.${p}`, D, D);
  }
  norm('ff.norm');
  lin('ff.fc1', 4 * D, D);
  lin('ff.fc2', D, 4 * D);
  lin('out', 2 * S * D, D);
  return out;
}

/** The initial weights of a generator over the init embedding `init` [D] (see the file comment). */
export function initialGeneratorWeights(init: ArrayLike<number>, shape: GeneratorShape, seed = 0): Map<string, HostWeight> {
  const D = shape.dim;
  const rnd = normalGenerator(seed);
  const w = new Map<string, HostWeight>();
  for (const { name, shape: s } of generatorLayout(shape)) w.set(name, { shape: s, data: new Float32Array(s.reduce((a, b) => a * b, 1)) });
  // The seeded weights, drawn in this order: q, k, v of each attention layer, then fc1.
  const normal = (name: string) => {
    const d = w.get(name)!.data;
    for (let i = 0; i < d.length; i++) d[i] = 0.02 * rnd();
  };
  for (const l of ATTENTION) {
    w.get(`${l}.norm.weight`)!.data.fill(1);
    for (const p of ['to_q', 'to_k', 'to_v']) normal(`${l}.${p}.weight`);
  }
  w.get('ff.norm.weight')!.data.fill(1);
  normal('ff.fc1.weight');
  const b = w.get('out.bias')!.data;
  for (let i = 0; i < 2 * shape.stages; i++) for (let d = 0; d < D; d++) b[i * D + d] = init[d]!;
  return w;
}

/** init [1, 1, D] → the tokens [2S, D]: the K token of each stage, then the V token of each. */
export function buildTokenGenerator(g: Graph, w: Weights, init: Value, { dim: D, stages: S }: GeneratorShape): Value {
  let x = init;
  for (const l of ATTENTION) {
    const h = layerNormW(g, w, x, `${l}.norm`, LN_EPS);
    const q = linearW(g, w, h, `${l}.to_q`);
    const k = linearW(g, w, h, `${l}.to_k`);
    const v = linearW(g, w, h, `${l}.to_v`);
    x = linearW(g, w, g.attention(q, k, v, { heads: 1 }), `${l}.to_out`, { residual: x });
  }
  const h = g.gelu(linearW(g, w, layerNormW(g, w, x, 'ff.norm', LN_EPS), 'ff.fc1'));
  x = linearW(g, w, h, 'ff.fc2', { residual: x });
  return g.reshape(linearW(g, w, x, 'out'), [2 * S, D]);
}
