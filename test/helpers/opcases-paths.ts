// The op table's CPU kernel-path cases (they were test/native/cpu_ops_test.cc's own list): odd
// shapes across every microkernel block (MR, NR, KC = 256, MC = 168), the few-tokens
// weight-in-place LINEAR path, every CONV2D path (im2col, 1x1 direct, small images as one GEMM,
// Winograd F(2,3) / F(4,3) tiles on SiLU-like activations), the fused bias / residual operands,
// norms, attention (odd shapes, then SD 1.5 shapes), element-wise and layout ops, IEEE special
// values, and the bad shapes the native ops must refuse with a typed error. Each names the path
// its shape takes; SD 1.5 sizes compare sampled output indices (opfamilies.ts).
import type { InputSpec, OpCase } from './opcase.js';
import { attentionCase, binaryCase, convCase, errorCase, gegluCase, groupNormCase, layerNormCase, linearCase, matmulCase, S, unaryCase } from './opfamilies.js';
import * as R from './opref.js';

/** LINEAR's path (native/cpu/linear.cc): few rows and a large weight multiply the weight in place. */
function linearPath(rows: number, n: number, k: number): string {
  return rows <= 128 && n * k >= 262144 ? 'weight-in-place' : 'packed sgemm';
}

/**
 * CONV2D's path, mirroring op_CONV2D (native/cpu/conv.cc) and winogradTile (winograd.cc) to name
 * the case: a label, not a check (a moved threshold leaves the shape checked, under an old name).
 */
function convPath(xs: number[], o: number, k: number, s: number, p: number): string {
  const [B, C, H, W] = xs as [number, number, number, number];
  if (k === 3 && s === 1 && p === 1 && C >= 32 && o >= 32) {
    if (B * Math.ceil(H / 4) * Math.ceil(W / 4) >= 96) return 'wino F4';
    if (B * Math.ceil(H / 2) * Math.ceil(W / 2) >= 32) return 'wino F2';
  }
  const n = (Math.floor((H + 2 * p - k) / s) + 1) * (Math.floor((W + 2 * p - k) / s) + 1);
  if (2 * n >= o) return k === 1 && s === 1 && p === 0 ? '1x1 direct GEMM per image' : 'im2col GEMM per image';
  const gemm = n * B <= 128 ? 'weight-in-place' : 'packed';
  return B === 1 ? `small image, batch 1, ${gemm} GEMM` : `small images, one ${gemm} GEMM + scatter`;
}

const conv = (xs: number[], o: number, k: number, s: number, p: number, bias: 0 | 1 | 2, res = false, siluLike = false): OpCase =>
  convCase(xs, [o, xs[1]!, k, k], s, p, bias, res, true, { path: convPath(xs, o, k, s, p), siluLike });

const linear = (xs: number[], n: number, bias: boolean, res = false): OpCase =>
  linearCase(xs, n, { bias, res, stress: true, path: linearPath(xs.slice(0, -1).reduce((a, b) => a * b, 1), n, xs[xs.length - 1]!) });

export function pathCases(): OpCase[] {
  return [...gemmPaths(), ...convPaths(), ...otherPaths(), ...specialValues(), ...badShapes()];
}

function gemmPaths(): OpCase[] {
  const cs: OpCase[] = [
    // LINEAR / MATMUL: odd shapes cross every edge (MR, NR, KC = 256, MC = 168 blocks).
    linear([3, 7, 13], 17, true),
    linear([1, 300, 515], 333, false),
    linear([1001, 70], 45, true),
    linear([2, 77, 768], 320, true),
    linear([2, 1], 1280, true),
    // Few tokens, large weights: the weight-in-place path (yᵀ = w·xᵀ), with odd edges.
    linear([2, 1280], 1283, true),
    linear([3, 41, 517], 1001, false),
    linear([2, 64, 1280], 10240, true),
    linear([2, 4096, 320], 320, true),
    linear([2, 1024, 640], 5120, true),
    matmulCase([3, 19, 35], [3, 35, 23], false, true),
    matmulCase([2, 45, 260], [2, 37, 260], true, true),
    matmulCase([4, 9, 31], [1, 31, 70], false, true),
    matmulCase([16, 64, 40], [16, 77, 40], true, true),
    // The GEMM benchmark shapes of the perf listing (ops:perf).
    matmulCase([1, 4096, 320], [1, 320, 320], false, true, 'sgemm'),
    matmulCase([1, 1024, 640], [1, 640, 640], false, true, 'sgemm'),
    matmulCase([2, 320, 2880], [2, 2880, 4096], false, true, 'sgemm'),
  ];
  // LINEAR transX (x [B, K, R] → [B, R, N]) / transY (x [B, R, K] → [B, N, R]).
  for (const trans of ['transX', 'transY'] as const)
    for (const [b, k, r, n, bias, res] of [[2, 24, 35, 17, true, true], [1, 8, 5, 3, false, false], [2, 64, 256, 48, true, false], [3, 13, 1, 7, false, true]] as const)
      cs.push(linearCase(trans === 'transX' ? [b, k, r] : [b, r, k], n, { bias, res, trans, stress: true }));
  // The packed-SGEMM path (bias and residual as the values it accumulates onto) and the
  // weight-in-place path (added while transposing): the residual alone (3rd input) or after a bias.
  for (const [xs, n] of [[[3, 7, 13], 17], [[2, 77, 768], 320], [[2, 1280], 1283], [[3, 41, 517], 1001]] as const)
    for (const bias of [false, true]) cs.push(linear([...xs], n, bias, true));
  return cs;
}

function convPaths(): OpCase[] {
  const cs: OpCase[] = [
    conv([1, 3, 9, 11], 5, 3, 1, 1, 1),
    conv([2, 37, 9, 11], 29, 3, 1, 1, 1),
    conv([2, 37, 10, 13], 29, 3, 2, 1, 0),
    convCase([1, 5, 12, 7], [6, 5, 5, 3], 2, 2, 1, false, true, { path: 'im2col GEMM per image, 5x3 kernel' }),
    conv([2, 33, 6, 5], 65, 1, 1, 0, 1),
    conv([1, 4, 7, 7], 3, 3, 3, 0, 1),
    // Small images (Ho·Wo < O/2): one GEMM over all images' columns.
    conv([2, 37, 4, 5], 65, 3, 1, 1, 1),
    conv([2, 37, 5, 6], 96, 3, 2, 1, 0),
    conv([2, 33, 3, 3], 70, 1, 1, 0, 1),
    conv([1, 20, 3, 3], 50, 3, 1, 1, 1),
    conv([2, 16, 8, 9], 150, 3, 1, 1, 1),
    // SD 1.5 shapes (sampled references).
    conv([2, 4, 64, 64], 320, 3, 1, 1, 1),
    conv([2, 320, 64, 64], 320, 3, 2, 1, 1),
    conv([2, 640, 32, 32], 320, 1, 1, 0, 1),
    conv([2, 640, 32, 32], 640, 3, 1, 1, 1),
    conv([2, 1280, 4, 4], 1280, 3, 1, 1, 1),
    conv([1, 2560, 4, 4], 1283, 3, 1, 1, 0),
    conv([2, 1280, 8, 8], 1280, 3, 2, 1, 1),
    conv([2, 320, 64, 64], 4, 3, 1, 1, 1),
    // 3x3 stride 1 pad 1 with enough channels and pixels: Winograd (native/cpu/winograd.cc), its
    // edge tiles, several row blocks and K slabs, the narrow (2·MR x 16) GEMM tile; silu-x: inputs
    // as after GroupNorm + SiLU, which cancel less kindly in the transforms than zero-mean ones.
    conv([2, 37, 13, 11], 41, 3, 1, 1, 1),
    conv([2, 37, 27, 29], 41, 3, 1, 1, 1),
    conv([1, 32, 17, 33], 32, 3, 1, 1, 0),
    conv([2, 33, 31, 35], 300, 3, 1, 1, 1, false, true),
    conv([2, 300, 9, 15], 33, 3, 1, 1, 1, false, true),
    conv([2, 64, 8, 12], 100, 3, 1, 1, 1, false, true),
    conv([2, 320, 32, 32], 320, 3, 1, 1, 1, false, true),
    conv([2, 960, 32, 32], 320, 3, 1, 1, 1, false, true),
    conv([2, 640, 16, 16], 640, 3, 1, 1, 1, false, true),
    conv([2, 1920, 16, 16], 640, 3, 1, 1, 1),
    conv([2, 1280, 16, 16], 1280, 3, 1, 1, 1, false, true),
    conv([2, 1280, 8, 8], 1280, 3, 1, 1, 1, false, true),
  ];
  // Fused operands on every CONV2D path: a per-image bias [B, O], a bias + residual, a per-image
  // bias + residual, a residual alone (the 3rd input).
  for (const [xs, o, k, s, p] of [
    [[2, 40, 8, 8], 32, 1, 1, 0], [[2, 33, 3, 3], 70, 1, 1, 0], [[2, 16, 9, 11], 20, 3, 1, 1], [[2, 37, 10, 13], 29, 3, 2, 1],
    [[1, 20, 3, 3], 50, 3, 1, 1], [[2, 37, 4, 5], 65, 3, 1, 1], [[2, 16, 8, 9], 150, 3, 1, 1], [[2, 37, 13, 11], 41, 3, 1, 1],
    [[2, 37, 27, 29], 41, 3, 1, 1], [[2, 1280, 8, 8], 1280, 3, 1, 1], [[2, 320, 32, 32], 320, 3, 1, 1], [[2, 640, 32, 32], 320, 1, 1, 0],
  ] as const) {
    cs.push(conv([...xs], o, k, s, p, 2), conv([...xs], o, k, s, p, 1, true), conv([...xs], o, k, s, p, 2, true), conv([...xs], o, k, s, p, 0, true));
  }
  return cs;
}

const literal = (name: string, inputs: InputSpec[], build: OpCase['build'], ref: OpCase['ref']): OpCase => ({ name, inputs, build, ref, stress: true });

function otherPaths(): OpCase[] {
  const concat = (axis: number): OpCase => {
    const ax = axis < 0 ? axis + 4 : axis;
    const shapes = [2, 0, 1].map((d) => [2, 3, 4, 5].map((v, j) => (j === ax && d ? d : v)));  // 2, all, 1 along the axis
    return literal(`concat 3 inputs axis ${axis} ${shapes.map(S).join('+')}`, shapes.map((shape) => ({ shape })), (g, x) => g.concat(x, axis), (x) => [R.concat(x, shapes, axis)]);
  };
  const permute = (xs: number[], perm: number[]) => literal(`permute ${perm.join('')} ${S(xs)}`, [{ shape: xs }], (g, [x]) => g.permute(x!, perm), (x) => [R.permute(x[0]!, xs, perm)]);
  // slice through the raw op: the native op also takes negative bounds (the builder does not).
  const slice = (axis: number, start: number, end: number) => {
    const ax = axis < 0 ? axis + 3 : axis, d = [2, 11, 5][ax]!;
    const s0 = start < 0 ? start + d : start, e0 = end < 0 ? end + d : end;
    const os = [2, 11, 5].map((v, i) => (i === ax ? e0 - s0 : v));
    return literal(`slice [2,11,5] axis ${axis} ${start}:${end}`, [{ shape: [2, 11, 5] }], (g, [x]) => g.op('slice', [x!], [os], { axis, start, end })[0]!, (x) => [R.slice(x[0]!, [2, 11, 5], ax, s0, e0)]);
  };
  const step = (noise: boolean): OpCase => {
    const s = [2, 4, 8, 12];
    const c = noise ? [0.3, 1, -2, 0, 1, 0, -0.8, 0, 0.5] : [0.8, 1.3, -0.4, 0.9, 0.7, 0.2, 0, -0.15, 0];
    const ins: InputSpec[] = [{ shape: s }, { shape: s }, { shape: s }, { shape: [9], f32bits: c }, ...(noise ? [{ shape: s }] : [])];
    return literal(`sampler_step ${S(s)} ${noise ? 'noise' : 'state clip'}`, ins, (g, [x, m, st, k, z]) => g.samplerStep(x!, m!, st!, k!, z), (x) => R.samplerStep(x[0]!, x[1]!, x[2]!, x[3] as Int32Array, x[4]));
  };
  const temb = (dim: number, flip: boolean, shift: number) =>
    literal(`timestep_emb dim ${dim}${flip ? ' flip' : ''} shift ${shift} t 981, 1, 500.5`, [{ shape: [3], data: [981, 1, 500.5] }], (g, [t]) => g.timestepEmbedding(t!, { dim, flip, shift }), (x) => [R.timestepEmb(x[0]!, dim, flip, shift)]);
  return [
    // Norms
    groupNormCase([2, 12, 5, 3], 4, 1e-5, false, 0, true),
    groupNormCase([1, 6, 7], 3, 1e-5, true, 0, true),
    groupNormCase([2, 320, 64, 64], 32, 1e-5, true, 0, true),
    groupNormCase([2, 640, 32, 32], 32, 1e-5, false, 50, true),
    layerNormCase([3, 7, 33], 3, true),
    layerNormCase([2, 4096, 320], 3, true),
    layerNormCase([2, 77, 768], 3, true),
    // Attention: small odd shapes (key tiles of 256, query blocks, dv ≠ d), then SD 1.5 shapes.
    attentionCase(2, 3, 67, 300, 8, 12, { qAmp: 3, stress: true }),
    attentionCase(2, 3, 67, 300, 8, 12, { qAmp: 3, capture: true, stress: true }),
    attentionCase(1, 2, 130, 130, 16, 16, { causal: true, stress: true }),
    attentionCase(1, 2, 130, 130, 16, 16, { causal: true, capture: true, stress: true }),
    attentionCase(2, 12, 77, 77, 64, 64, { causal: true, capture: true, qAmp: 2, stress: true }),
    attentionCase(1, 1, 5, 1, 3, 2, { capture: true, stress: true }),
    attentionCase(2, 8, 4096, 4096, 40, 40, { qAmp: 4, stress: true }),
    attentionCase(2, 8, 1024, 1024, 80, 80, { qAmp: 4, stress: true }),
    attentionCase(2, 8, 256, 256, 160, 160, { qAmp: 4, stress: true }),
    attentionCase(2, 8, 4096, 77, 40, 40, { qAmp: 4, stress: true }),
    attentionCase(2, 8, 1024, 77, 80, 80, { qAmp: 4, capture: true, stress: true }),
    // Element-wise
    unaryCase('gelu', [3, 37, 29], 2, true),
    unaryCase('quick_gelu', [2, 77, 131], 2, true),
    unaryCase('silu', [2, 1281, 33], 10, true),
    literal('scale [1,4,13,9] ·0.18215 − 0.25', [{ shape: [1, 4, 13, 9] }], (g, [x]) => g.scale(x!, 0.18215, -0.25), (x) => [R.map(x[0]!, (v) => v * 0.18215 - 0.25)]),
    gegluCase([2, 77, 102], 1, true),
    gegluCase([2, 1024, 2560], 3, true),
    binaryCase('add', [3, 5, 7], [3, 5, 7], true),
    binaryCase('add', [2, 77, 768], [77, 768], true),
    binaryCase('add', [1, 5, 1], [3, 1, 7], true),
    binaryCase('add', [2, 3, 4, 5], [5], true),
    binaryCase('mul', [2, 3, 4, 5], [3, 1, 5], true),
    binaryCase('mul', [4, 1], [1, 9], true),
    binaryCase('mul', [2, 4096, 320], [2, 4096, 320], true),
    literal('cfg [4,4,9,11] 7.5', [{ shape: [4, 4, 9, 11] }], (g, [e]) => g.cfg(e!, 7.5), (x) => [R.cfg(x[0]!, 7.5)]),
    step(false),
    step(true),
    // Layout
    ...[0, 1, 3, -1].map(concat),
    permute([3, 67, 45], [0, 2, 1]),
    permute([3, 67, 45], [2, 0, 1]),
    permute([3, 67, 45], [1, 0, 2]),
    permute([2, 5, 33, 7], [0, 2, 3, 1]),
    permute([2, 5, 33, 7], [3, 2, 1, 0]),
    permute([2, 4096, 320], [0, 2, 1]),
    literal('reshape [2,3,35]→[6,5,7]', [{ shape: [2, 3, 35] }], (g, [x]) => g.reshape(x!, [6, 5, 7]), (x) => [R.map(x[0]!, (v) => v)]),
    slice(1, 2, 9),
    slice(2, 0, 3),
    slice(0, 1, 2),
    slice(-1, -3, 5),
    temb(320, true, 0),
    temb(33, false, 1),
    literal('embedding ids[2,5] table[10,13]', [{ shape: [2, 5], int: [0, 10], data: [0, 3, 9, 1, 1, 9, 2, 4, 8, 6] }, { shape: [10, 13] }], (g, [i, t]) => g.embedding(i!, t!), (x) => [R.embedding(x[0]!, x[1]!, 13)]),
    literal('inject x[2,6,9] vectors[3,9]', [{ shape: [2, 6, 9] }, { shape: [2, 6], int: [-1, 3], data: [-1, 0, -1, -1, 2, -1, 1, -1, -1, -1, -1, 0] }, { shape: [3, 9] }], (g, [x, s, v]) => g.inject(x!, s!, v!), (x) => [R.inject(x[0]!, x[1]!, x[2]!, 9)]),
  ];
}

/**
 * NaN and ±inf must come out as PyTorch's float32 ops give them, not be swallowed by the
 * vectorised exp/erf (no fast-math shortcuts): the reference is NaN / inf there too.
 */
function specialValues(): OpCase[] {
  const set: [number, number][] = [[3, NaN], [20, NaN], [21, Infinity], [22, -200], [23, 200]];
  const unary = (['silu', 'gelu', 'quick_gelu', 'relu', 'tanh'] as const).map((op): OpCase => ({ ...unaryCase(op, [40], 1, true), name: `${op} [40] with NaN, inf, ±200`, inputs: [{ shape: [40], set }], special: true }));
  // Query row 1 sees NaN scores: its outputs must be NaN, the other rows' not.
  const attn: OpCase = { ...attentionCase(1, 1, 3, 20, 4, 4, { stress: true }), name: 'attention q[1,3,4] k/v [1,20,4] with a NaN in query row 1', special: true };
  attn.inputs = [{ shape: [1, 3, 4], set: [[6, NaN]] }, { shape: [1, 20, 4] }, { shape: [1, 20, 4] }];
  return [...unary, attn];
}

/** A region table the ATTENTION op must refuse: q [1, 4, 4] on a 2x2 grid, 5 keys. */
function regionErrors(): OpCase[] {
  const q = { shape: [1, 4, 4] }, kv = { shape: [1, 5, 4] }, on = { heads: 1, regions: true, width: 2 };
  const table = (cols: number, owner: number[]) => ({ shape: [1, cols], int: [-1, 1] as [number, number], data: [...owner, ...Array<number>(cols - owner.length).fill(0)] });
  return [
    errorCase('attention region table [1,7] (not 5 keys + 4R)', 'E_SHAPE', 'attention', [q, kv, kv, table(7, [-1, -1, -1, -1, -1])], [[1, 4, 4]], on),
    errorCase('attention region table of 2 rows for batch 1', 'E_SHAPE', 'attention', [q, kv, kv, { ...table(9, [-1, 0, -1, -1, -1]), shape: [2, 9], data: Array<number>(18).fill(-1) }], [[1, 4, 4]], on),
    errorCase('attention region owner 1 of 1 region', 'E_ARGUMENT', 'attention', [q, kv, kv, table(9, [-1, 1, -1, -1, -1])], [[1, 4, 4]], on),
    errorCase('attention regions width 3 for 4 queries', 'E_SHAPE', 'attention', [q, kv, kv, table(9, [-1, 0, -1, -1, -1])], [[1, 4, 4]], { ...on, width: 3 }),
    errorCase('attention regions flag without a table', 'E_SHAPE', 'attention', [q, kv, kv], [[1, 4, 4]], on),
    errorCase('attention region table as float', 'E_ARGUMENT', 'attention', [q, kv, kv, { shape: [1, 9] }], [[1, 4, 4]], on),
    errorCase('attention_backward region owner -2', 'E_ARGUMENT', 'attention_backward', [q, kv, kv, q, table(9, [-2, 0, -1, -1, -1])], [[1, 4, 4], [1, 5, 4], [1, 5, 4]], on),
  ];
}

/** Bad shapes and ids: the native ops' own checks, reached through raw ops (no builder checks in between). */
function badShapes(): OpCase[] {
  const x = { shape: [2, 3, 8] }, w = { shape: [5, 8] }, b = { shape: [5] }, y = [2, 3, 5];
  const cx = { shape: [2, 3, 6, 6] }, cw = { shape: [4, 3, 3, 3] }, cy = [2, 4, 6, 6], cr = { shape: [2, 4, 6, 6] }, crBad = { shape: [2, 4, 6, 5] };
  return [
    errorCase('linear K mismatch', 'E_SHAPE', 'linear', [x, { shape: [5, 7] }], [y]),
    errorCase('linear wrong out shape', 'E_SHAPE', 'linear', [x, w], [[2, 3, 6]]),
    errorCase('linear transX and transY', 'E_SHAPE', 'linear', [{ shape: [2, 4, 3] }, { shape: [5, 4] }], [[2, 3, 5]], { transX: true, transY: true }),
    errorCase('linear transX wrong out', 'E_SHAPE', 'linear', [{ shape: [2, 4, 3] }, { shape: [5, 4] }], [[2, 5, 3]], { transX: true }),
    errorCase('linear transX rank 2', 'E_SHAPE', 'linear', [{ shape: [4, 3] }, { shape: [5, 4] }], [[2, 3, 5]], { transX: true }),
    errorCase('linear residual of the wrong shape', 'E_SHAPE', 'linear', [x, w, b, { shape: [2, 3, 6] }], [y], { residual: true }),
    errorCase('linear 3rd input neither bias nor residual', 'E_SHAPE', 'linear', [x, w, { shape: [2, 3, 6] }], [y]),
    errorCase('linear output-shaped 3rd input, no residual flag', 'E_SHAPE', 'linear', [x, w, { shape: y }], [y]),
    errorCase('linear residual flag, no residual', 'E_SHAPE', 'linear', [x, w], [y], { residual: true }),
    errorCase('linear bias of the wrong size, with residual', 'E_SHAPE', 'linear', [x, w, { shape: [6] }, { shape: y }], [y], { residual: true }),
    errorCase('linear 4 inputs, no residual flag', 'E_SHAPE', 'linear', [x, w, b, { shape: y }], [y]),
    errorCase('linear 5 inputs', 'E_SHAPE', 'linear', [x, w, b, { shape: y }, { shape: y }], [y], { residual: true }),
    errorCase('matmul inner mismatch', 'E_SHAPE', 'matmul', [{ shape: [2, 3, 4] }, { shape: [2, 5, 6] }], [[2, 3, 6]]),
    errorCase('conv2d channel mismatch', 'E_SHAPE', 'conv2d', [{ shape: [1, 3, 8, 8] }, { shape: [4, 2, 3, 3] }], [[1, 4, 8, 8]], { pad: 1 }),
    errorCase('conv2d bias [O, B] (transposed)', 'E_SHAPE', 'conv2d', [cx, cw, { shape: [4, 2] }], [cy], { pad: 1 }),
    errorCase('conv2d bias [3, O] for batch 2', 'E_SHAPE', 'conv2d', [cx, cw, { shape: [3, 4] }, cr], [cy], { pad: 1, residual: true }),
    errorCase('conv2d residual of the wrong shape', 'E_SHAPE', 'conv2d', [cx, cw, { shape: [4] }, crBad], [cy], { pad: 1, residual: true }),
    errorCase('conv2d groups 2 (groups = 1 only)', 'E_SHAPE', 'conv2d', [cx, cw, { shape: [4] }], [cy], { pad: 1, groups: 2 }),
    errorCase('conv2d 3rd input rank 4, not the output\'s shape', 'E_SHAPE', 'conv2d', [cx, cw, crBad], [cy], { pad: 1 }),
    errorCase('conv2d residual (flagged, 3rd input) of the wrong shape', 'E_SHAPE', 'conv2d', [cx, cw, crBad], [cy], { pad: 1, residual: true }),
    errorCase('group_norm groups not dividing C', 'E_SHAPE', 'group_norm', [{ shape: [1, 6, 4] }, { shape: [6] }, { shape: [6] }], [[1, 6, 4]], { groups: 4 }),
    errorCase('attention k/v length mismatch', 'E_SHAPE', 'attention', [{ shape: [1, 5, 12] }, { shape: [1, 7, 12] }, { shape: [1, 6, 12] }], [[1, 5, 12]], { heads: 3 }),
    ...regionErrors(),
    errorCase('add non-broadcastable', 'E_SHAPE', 'add', [{ shape: [2, 3] }, { shape: [4, 3] }], [[4, 3]]),
    errorCase('permute invalid perm', 'E_SHAPE', 'permute', [{ shape: [2, 3] }], [[3, 2]], { perm: [0, 0] }),
    errorCase('reshape numel mismatch', 'E_SHAPE', 'reshape', [{ shape: [2, 3] }], [[7]]),
    errorCase('embedding id out of range', 'E_ARGUMENT', 'embedding', [{ shape: [1, 2], int: [0, 1], data: [3, 10] }, { shape: [10, 13] }], [[1, 2, 13]]),
    errorCase('inject slot out of range', 'E_ARGUMENT', 'inject', [{ shape: [2, 6, 9] }, { shape: [2, 6], int: [-1, 4], data: [-1, 0, -1, -1, 3, -1, 1, -1, -1, -1, -1, 0] }, { shape: [3, 9] }], [[2, 6, 9]]),
  ];
}
