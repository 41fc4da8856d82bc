// The per-identity objectives as graphs over the frozen UNet: the diffusion MSE and the face-wise
// attention loss of SeFi-IDE (README "SeFi-IDE"), differentiated by lib/graph/autodiff.ts.
import { IdforgeError } from '../errors.js';
import { mseLoss } from '../graph/autodiff.js';
import type { Graph, Value } from '../graph/graph.js';
import { linearW, type Weights } from '../graph/weights.js';
import type { UNetConfig } from '../io/configs.js';
import { buildUNet, type CrossContext } from '../unet/unet.js';

export interface UNetLossInputs {
  x: Value; // z_t [B, C, h, w]
  t: Value; // [B]
  ctx: CrossContext;
  /** The diffusion target (the noise added). */
  epsTarget?: Value;
  /**
   * Attention loss: at each layer, A_t = the probabilities of the pass with `ctx.k`, A_r =
   * softmax(Q·K(context)ᵀ·scale) with the SAME queries Q and keys from the reference context;
   * A_r is a constant (no gradient flows through it, nor through its queries).
   */
  reference?: { context: Value; layers: readonly string[] };
}

export interface UNetLossOutputs {
  eps: Value;
  lossDiff?: Value;
  lossAtt?: Value;
  /** Values the caller must pass to grad() as `stop` (the reference maps). */
  stop: Value[];
}

/** Reference probabilities for a captured layer: the same attention op's queries against K(refContext). */
export function referenceProbs(g: Graph, w: Weights, layer: string, probs: Value, refContext: Value): Value {
  const op = g.ops.find((o) => o.op === 'attention' && o.out[1] === probs.id);
  if (!op) throw new IdforgeError('E_INTERNAL', `no attention op captures ${layer}`);
  const q = g.valueOf(op.in[0]!);
  const kr = linearW(g, w, refContext, `${layer}.to_k`);
  const heads = op.attrs!.heads as number;
  const scale = op.attrs!.scale as number;
  // v only sizes the (unused) output; the keys serve as values.
  const [, pr] = g.attention(q, kr, kr, { heads, scale, capture: true });
  return pr;
}

export function buildUNetLoss(g: Graph, w: Weights, cfg: UNetConfig, inp: UNetLossInputs): UNetLossOutputs {
  const layers = inp.reference?.layers ?? [];
  const r = buildUNet(g, w, cfg, inp.x, inp.t, inp.ctx, { capture: new Set(layers) });
  const out: UNetLossOutputs = { eps: r.eps, stop: [] };
  if (inp.epsTarget) out.lossDiff = mseLoss(g, r.eps, inp.epsTarget);
  if (inp.reference && layers.length) {
    let sum: Value | undefined;
    for (const l of layers) {
      const at = r.attention.get(l)!;
      const ar = referenceProbs(g, w, l, at, inp.reference.context);
      out.stop.push(ar);
      const m = mseLoss(g, at, ar);
      sum = sum ? g.add(sum, m) : m;
    }
    out.lossAtt = g.scale(sum!, 1 / layers.length);
  }
  return out;
}
