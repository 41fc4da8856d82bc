// Reverse-mode differentiation over the graph IR (DESIGN.md "Execution model"): grad() walks the
// recorded op list backwards and emits each op's vector-Jacobian product with the same builder,
// into the SAME graph, so one Program computes the loss and its gradients. Forward activations a
// VJP reads are ordinary values read later: the program's buffer planner keeps them alive until
// their last reader. Gradients flow to activations and to the `wrt` values only: a weight is
// trained by making it a graph input (lib/optim/params.ts) and naming it in `wrt`; the weight
// rules below (linear, patch-embedding conv2d, layer norm) are written with existing ops.
import { IdforgeError } from '../errors.js';
import type { NativeOp } from '../native.js';
import { numel } from '../tensor.js';
import { fusedOperands, type Graph, type Value } from './graph.js';
import { invalid, shown } from '../validate.js';

export interface GradOptions {
  /** Values treated as constants (stop-gradient): nothing flows through them. */
  stop?: readonly Value[];
  /** The incoming gradient of `loss` (default: ones of its shape). */
  seed?: Value;
}

type Attrs = NonNullable<NativeOp['attrs']>;

// Attribute defaults are stated once, by native/backend.h's OpAttrs: a backward op takes the
// forward op's attributes as they are (pick), and the few a rule computes with are ones the
// builder always writes (num throws when one is missing).
const num = (a: Attrs | undefined, k: string): number => {
  if (a && typeof a[k] === 'number') return a[k] as number;
  throw new IdforgeError('E_INTERNAL', `grad: the op has no '${k}' attribute`);
};
const flag = (a: Attrs | undefined, k: string): boolean => !!(a && a[k]);
const pick = (a: Attrs | undefined, ...keys: string[]): Attrs => Object.fromEntries(keys.filter((k) => a && k in a).map((k) => [k, a![k]!]));

/** dy summed down to `shape` (the adjoint of numpy broadcasting). */
function reduceTo(g: Graph, dy: Value, shape: readonly number[]): Value {
  if (dy.rank === shape.length && dy.shape.every((d, i) => d === shape[i])) return dy;
  return g.reduceSum(dy, shape);
}

function zerosLike(g: Graph, x: Value): Value {
  return g.scale(x, 0, 0);
}

/**
 * Gradients of the scalar-ish `loss` w.r.t. each of `wrt` (same shapes), emitted into `g`.
 * A `wrt` value the loss does not depend on gets a zero gradient. Throws E_ARGUMENT for an op
 * on the path that has no rule (timestep embedding, CFG, DDIM, embedding lookups).
 */
export function grad(g: Graph, loss: Value, wrt: readonly Value[], opts: GradOptions = {}): Value[] {
  const nOps = g.ops.length;
  const stop = new Set((opts.stop ?? []).map((v) => v.id));
  // Values that depend on a wrt value (forward sweep).
  const needs = new Set<number>();
  for (const w of wrt) if (!stop.has(w.id)) needs.add(w.id);
  for (let i = 0; i < nOps; i++) {
    const op = g.ops[i]!;
    if (op.in.some((id) => needs.has(id))) for (const id of op.out) if (!stop.has(id)) needs.add(id);
  }
  // Values the loss depends on through differentiable paths (backward sweep).
  const useful = new Set<number>([loss.id]);
  for (let i = nOps - 1; i >= 0; i--) {
    const op = g.ops[i]!;
    if (op.out.some((id) => useful.has(id))) for (const id of op.in) if (needs.has(id)) useful.add(id);
  }

  const grads = new Map<number, Value>();
  const accumulate = (id: number, d: Value): void => {
    if (!needs.has(id) || !useful.has(id)) return;
    const prev = grads.get(id);
    grads.set(id, prev ? g.add(prev, d) : d);
  };
  if (needs.has(loss.id)) grads.set(loss.id, opts.seed ?? g.scale(loss, 0, 1));

  for (let i = nOps - 1; i >= 0; i--) {
    const op = g.ops[i]!;
    if (!op.in.some((id) => needs.has(id) && useful.has(id))) continue;
    const douts = op.out.map((id) => grads.get(id));
    if (douts.every((d) => d === undefined)) continue;
    const ins = op.in.map((id) => g.valueOf(id));
    const wants = (id: number | undefined): id is number => id !== undefined && needs.has(id) && useful.has(id);
    const want = (k: number): boolean => wants(op.in[k]);
    const dy = douts[0]!;
    const a = op.attrs;
    switch (op.op) {
      case 'linear': {
        const transX = flag(a, 'transX'), transY = flag(a, 'transY');
        const f = fusedOperands(op);
        // dx = dy·W: MATMUL with a rank-2 right operand broadcasts it over dy's batch. With
        // transX / transY, dy or dx is channels first: a PERMUTE (backward passes only).
        if (wants(f.x)) {
          const w = g.valueOf(f.w);
          const tokens = transY ? g.permute(dy, [0, 2, 1]) : dy;  // [B, R, N]
          const dx = g.op('matmul', [tokens, w], [[...tokens.shape.slice(0, -1), w.dim(1)]])[0]!;
          accumulate(f.x, transX ? g.permute(dx, [0, 2, 1]) : dx);
        }
        if (wants(f.w)) accumulate(f.w, linearWeightGrad(g, g.valueOf(f.x), g.valueOf(f.w), dy, transX, transY));
        // The residual (shaped like y) takes dy; the bias [N], dy summed over the rows (with
        // transY the channels run along dim 1).
        if (wants(f.residual)) accumulate(f.residual, dy);
        if (wants(f.bias)) {
          const n = g.valueOf(f.bias).shape;
          accumulate(f.bias, transY ? g.reshape(reduceTo(g, dy, [n[0]!, 1]), [...n]) : reduceTo(g, dy, n));
        }
        break;
      }
      case 'matmul': {
        const [x, y] = ins as [Value, Value];
        const transB = flag(a, 'transB');
        if (want(0)) accumulate(x.id, g.matmul(dy, y, { transB: !transB }));
        if (want(1)) {
          const xt = g.permute(x, [0, 2, 1]);
          accumulate(y.id, transB ? g.matmul(g.permute(dy, [0, 2, 1]), x) : g.matmul(xt, dy));
        }
        break;
      }
      case 'conv2d': {
        const f = fusedOperands(op);
        if (wants(f.x)) {
          const x = g.valueOf(f.x);
          accumulate(f.x, g.op('conv2d_backward_input', [dy, g.valueOf(f.w)], [x.shape], pick(a, 'stride', 'pad'))[0]!);
        }
        if (wants(f.w)) accumulate(f.w, patchConvWeightGrad(g, g.valueOf(f.x), g.valueOf(f.w), dy, num(a, 'stride'), num(a, 'pad')));
        // The residual (shaped like y) takes dy; a bias [O], or per image [B, O] (a resnet's
        // time embedding), takes dy summed over the pixels (and the images).
        if (wants(f.residual)) accumulate(f.residual, dy);
        if (wants(f.bias)) {
          const b = g.valueOf(f.bias).shape;
          accumulate(f.bias, g.reshape(g.reduceSum(dy, [...b, 1, 1]), [...b]));
        }
        break;
      }
      case 'group_norm': {
        if (want(0)) {
          const [x, w, b] = ins as [Value, Value, Value];
          accumulate(x.id, g.op('group_norm_backward', [dy, x, w, b], [x.shape], pick(a, 'groups', 'eps', 'silu'))[0]!);
        }
        break;
      }
      case 'layer_norm': {
        if (want(0)) {
          const [x, w] = ins as [Value, Value];
          accumulate(x.id, g.op('layer_norm_backward', [dy, x, w], [x.shape], pick(a, 'eps'))[0]!);
        }
        // y = x̂·w + b: dw = Σ dy·x̂ over the rows, db = Σ dy. x̂ is recomputed by LAYER_NORM with
        // unit weight and zero bias (made from w by SCALE, so no constant needs a device).
        if (want(1)) {
          const [x, w] = ins as [Value, Value];
          const xhat = g.layerNorm(x, g.scale(w, 0, 1), g.scale(w, 0, 0), { eps: num(a, 'eps') });
          accumulate(w.id, g.reduceSum(g.mul(dy, xhat), [...w.shape]));
        }
        if (want(2)) accumulate(ins[2]!.id, g.reduceSum(dy, [...ins[2]!.shape]));
        break;
      }
      case 'attention': {
        const [q, k, v, table] = ins as [Value, Value, Value, Value | undefined];
        const o = g.valueOf(op.out[0]!);
        const dO = douts[0] ?? zerosLike(g, o);
        const dp = douts[1];
        // A region table (the last input) masks the recomputed probabilities as it masked the forward's.
        const [dq, dk, dv] = g.op('attention_backward', [q, k, v, dO, ...(dp ? [dp] : []), ...(table ? [table] : [])], [q.shape, k.shape, v.shape], pick(a, 'heads', 'scale', 'causal', 'regions', 'width'));
        if (want(0)) accumulate(q.id, dq!);
        if (want(1)) accumulate(k.id, dk!);
        if (want(2)) accumulate(v.id, dv!);
        break;
      }
      case 'geglu':
      case 'gelu':
      case 'quick_gelu':
      case 'silu': {
        const x = ins[0]!;
        accumulate(x.id, g.op(`${op.op}_backward`, [x, dy], [x.shape])[0]!);
        break;
      }
      case 'add': {
        const [x, y] = ins as [Value, Value];
        if (want(0)) accumulate(x.id, reduceTo(g, dy, x.shape));
        if (want(1)) accumulate(y.id, reduceTo(g, dy, y.shape));
        break;
      }
      case 'mul': {
        const [x, y] = ins as [Value, Value];
        if (want(0)) accumulate(x.id, reduceTo(g, g.mul(dy, y), x.shape));
        if (want(1)) accumulate(y.id, reduceTo(g, g.mul(dy, x), y.shape));
        break;
      }
      case 'scale':
        accumulate(ins[0]!.id, g.scale(dy, num(a, 'scale'), 0));
        break;
      case 'upsample2x': {
        const x = ins[0]!;
        accumulate(x.id, g.op('upsample2x_backward', [dy], [x.shape])[0]!);
        break;
      }
      case 'concat': {
        const axis = num(a, 'axis');
        let off = 0;
        ins.forEach((x, k) => {
          const n = x.dim(axis);
          if (want(k)) accumulate(x.id, ins.length === 1 ? dy : g.slice(dy, axis, off, off + n));
          off += n;
        });
        break;
      }
      case 'permute': {
        const perm = (a?.perm as number[] | undefined) ?? [];
        const inv = perm.map((_, i) => perm.indexOf(i));
        accumulate(ins[0]!.id, g.permute(dy, inv));
        break;
      }
      case 'reshape':
        accumulate(ins[0]!.id, g.reshape(dy, [...ins[0]!.shape]));
        break;
      case 'slice': {
        const x = ins[0]!;
        const axis = num(a, 'axis');
        const start = num(a, 'start');
        const end = num(a, 'end');
        const parts: Value[] = [];
        if (start > 0) parts.push(zerosLike(g, g.slice(x, axis, 0, start)));
        parts.push(dy);
        if (end < x.dim(axis)) parts.push(zerosLike(g, g.slice(x, axis, end, x.dim(axis))));
        accumulate(x.id, parts.length === 1 ? dy : g.concat(parts, axis));
        break;
      }
      case 'reduce_sum': {
        const x = ins[0]!;
        accumulate(x.id, g.add(zerosLike(g, x), dy));
        break;
      }
      case 'inject': {
        const [x, slots, vectors] = ins as [Value, Value, Value];
        if (want(2)) accumulate(vectors.id, g.op('inject_backward', [dy, slots], [vectors.shape])[0]!);
        if (want(0)) accumulate(x.id, g.inject(dy, slots, zerosLike(g, vectors)));
        break;
      }
      default:
        throw invalid('every op on the path from the loss to the inputs', `one with a gradient rule (there is no gradient rule for op '${op.op}')`, undefined, { where: 'grad' });
    }
  }
  return wrt.map((w) => grads.get(w.id) ?? zerosLike(g, w));
}

/**
 * dW of y = x·Wᵀ (LINEAR, W [N, K]) = Σ over every row r of dy[r]ᵀ·x[r]: one MATMUL over the
 * flattened rows. With transX (x [B, K, R], dy [B, R, N]) it is Σ_b x_b·dy_b = dWᵀ; with transY
 * (x [B, R, K], dy [B, N, R]) Σ_b dy_b·x_b.
 */
function linearWeightGrad(g: Graph, x: Value, w: Value, dy: Value, transX: boolean, transY: boolean): Value {
  const [n, k] = w.shape as [number, number];
  if (transX || transY) {
    const per = transX ? g.matmul(x, dy) : g.matmul(dy, x); // [B, K, N] or [B, N, K]
    const sum = g.reshape(per.dim(0) === 1 ? per : g.reduceSum(per, [1, per.dim(1), per.dim(2)]), [per.dim(1), per.dim(2)]);
    return transX ? g.permute(sum, [1, 0]) : sum;
  }
  const rows = numel(x.shape) / k;
  const x2 = g.reshape(x, [1, rows, k]);
  const dyT = g.permute(g.reshape(dy, [1, rows, n]), [0, 2, 1]); // [1, N, rows]
  return g.reshape(g.matmul(dyT, x2), [n, k]);
}

/**
 * dW of a CONV2D whose windows do not overlap (stride = kernel, no padding: a ViT's patch
 * embedding, or a 1×1 conv): the input cut into patches [B·Ho·Wo, C·kh·kw] is the x of a
 * LINEAR, so dW = dyᵀ·patches. Overlapping convolutions (the UNet's, which stays frozen) have no
 * weight rule.
 */
function patchConvWeightGrad(g: Graph, x: Value, w: Value, dy: Value, stride: number, pad: number): Value {
  const [o, c, kh, kw] = w.shape as [number, number, number, number];
  if (pad !== 0 || stride !== kh || stride !== kw)
    throw invalid('a conv2d whose weight gradient is taken', 'one of non-overlapping windows (stride = kernel, pad 0): only those are implemented', shown(`kernel ${kh}×${kw}, stride ${stride}, pad ${pad}`), { where: 'grad' });
  const [b, , ho, wo] = dy.shape as [number, number, number, number];
  let xin = x;
  if (x.dim(2) !== ho * kh) xin = g.slice(xin, 2, 0, ho * kh);
  if (x.dim(3) !== wo * kw) xin = g.slice(xin, 3, 0, wo * kw);
  const rows = b * ho * wo;
  const patches = kh === 1 && kw === 1
    ? g.reshape(g.permute(xin, [0, 2, 3, 1]), [1, rows, c])
    : g.reshape(g.permute(g.reshape(xin, [b, c, ho, kh, wo, kw]), [0, 2, 4, 1, 3, 5]), [1, rows, c * kh * kw]);
  const dyT = g.reshape(g.permute(dy, [1, 0, 2, 3]), [1, o, rows]); // [1, O, B·Ho·Wo]
  return g.reshape(g.matmul(dyT, patches), [o, c, kh, kw]);
}

/** mean((a − b)²) as a [1] value. */
export function mseLoss(g: Graph, a: Value, b: Value): Value {
  const d = g.add(a, g.scale(b, -1));
  return g.scale(g.reduceSum(g.mul(d, d), [1]), 1 / numel(d.shape));
}

/**
 * Planned activation memory of a graph run as the native runner executes it (native/program.cc):
 * every op output is allocated when its op runs and released after its last reader (outputs are
 * kept to the end); inputs are live for the whole run, constants are not counted. Returns the peak
 * of the live bytes and where it happens.
 */
export function planMemory(g: Graph, bytesPerElement = 4): { peakBytes: number; peakOp: number; peakOpName: string; inputBytes: number; outputBytes: number } {
  const n = g.values.length;
  const lastUse = new Int32Array(n).fill(-1);
  const produced = new Int32Array(n).fill(-1);
  g.ops.forEach((op, i) => {
    for (const id of op.in) lastUse[id] = i;
    for (const id of op.out) produced[id] = i;
  });
  const isOut = new Set(g.outputs.map((v) => v.id));
  const size = (id: number) => numel(g.values[id]!.shape) * (g.values[id]!.dtype === 'int32' ? 4 : bytesPerElement);
  const release: number[][] = g.ops.map(() => []);
  for (let id = 0; id < n; id++)
    if (produced[id]! >= 0 && !isOut.has(id)) release[lastUse[id]! >= 0 ? lastUse[id]! : produced[id]!]!.push(id);
  let live = 0;
  for (const v of g.inputs) live += size(v.id);
  const inputBytes = live;
  let peak = live;
  let peakOp = -1;
  g.ops.forEach((op, i) => {
    for (const id of op.out) live += size(id);
    if (live > peak) {
      peak = live;
      peakOp = i;
    }
    for (const id of release[i]!) live -= size(id);
  });
  let outputBytes = 0;
  for (const v of g.outputs) outputBytes += size(v.id);
  return { peakBytes: peak, peakOp, peakOpName: peakOp >= 0 ? g.ops[peakOp]!.op : 'input', inputBytes, outputBytes };
}
