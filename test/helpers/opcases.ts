// THE op table (in the spirit of ggml's test-backend-ops): one list of single-op cases (shapes,
// attributes, odd sizes) on random, never-zero inputs, driving every mode:
//   forward  CPU vs a naive float64 reference (test/helpers/opref.ts; sampled output indices where
//            a full one would be slow), outputs NaN-poisoned (IDFORGE_POISON) so an element a
//            kernel skips fails; errors and IEEE special values too     test/ops.test.ts
//   isa      the kernel cases' forward mode on each lower CPU kernel variant test/ops-isa.test.ts
//   grad     autodiff vs finite differences, every op with a backward rule  test/ops.test.ts
//   cuda     CUDA (fp32, fp16) vs CPU, forward and gradients              test/ops-cuda.test.ts
//   perf     a timing listing (GFLOP/s where the FLOPs are known)         test/helpers/ops-perf.ts
// Here: the op-by-op cases and the SD 1.5 / CUDA kernel-path shapes; test/helpers/opcases-paths.ts:
// the CPU backend's kernel paths (microkernel edges, Winograd tiles, fused operands), special
// values and bad shapes. The makers (one per op family) are in test/helpers/opfamilies.ts.
// Adding an op: its builder (lib/graph/graph.ts), cases here, the CPU op, the CUDA kernel and the
// autodiff rule. The CUDA kernel paths that only a native call can force (and the stream stress)
// keep their own checks (cuda_ops_test.cu).
import type { OpCase, InputSpec } from './opcase.js';
import { attentionCase, binaryCase, convCase, gegluCase, groupNormCase, ids, layerNormCase, linearCase, matmulCase, rawCase, S, unaryCase, type RegionSpec } from './opfamilies.js';
import { pathCases } from './opcases-paths.js';
import * as R from './opref.js';
import { regionColumns, regionTable } from '../../lib/regions.js';

export * from './opcase.js';

/**
 * Every case ('cpu': without the shapes that only pick CUDA kernel paths, for the lower CPU kernel
 * variants' run); modes filter (`stress` ones: no finite differences, not in the default perf listing).
 */
export function opCases(which: 'all' | 'cpu' = 'all'): OpCase[] {
  const cases: OpCase[] = [
    // ---- GEMM family
    linearCase([3, 5, 7], 9, { bias: true }),
    linearCase([13, 33], 17),
    linearCase([2, 3, 6], 5, { bias: true, res: true }),
    linearCase([1, 1, 9], 5, { res: true }),  // one row: a bias-sized residual, explicit since #11
    linearCase([2, 24, 35], 17, { bias: true, res: true, trans: 'transX' }),
    linearCase([1, 8, 5], 3, { trans: 'transX' }),
    linearCase([2, 35, 24], 17, { bias: true, res: true, trans: 'transY' }),
    linearCase([2, 4, 6], 9, { res: true, trans: 'transY' }),
    linearCase([2, 3, 0], 4, { bias: true, res: true }),  // K = 0: the epilogue alone
    matmulCase([2, 5, 7], [2, 7, 3]),
    matmulCase([2, 5, 7], [2, 3, 7], true),
    matmulCase([2, 3, 4], [2, 4, 5]),
    matmulCase([3, 9, 6], [4, 6], true),
    convCase([2, 5, 7, 9], [6, 5, 3, 3], 1, 1, 1),
    convCase([1, 4, 8, 10], [3, 4, 3, 3], 2, 1, 1),
    convCase([1, 4, 9, 9], [3, 4, 3, 3], 2, 0, 0),
    convCase([2, 6, 5, 3], [4, 6, 1, 1], 1, 0, 1),
    convCase([1, 3, 32, 48], [8, 3, 16, 16], 16, 0, 0),
    convCase([2, 3, 5, 6], [4, 3, 3, 3], 1, 1, 2, true),
    convCase([1, 4, 1, 1], [6, 4, 1, 1], 1, 0, 0, true),  // one-pixel output: a bias-sized residual
    // ---- norms
    groupNormCase([2, 12, 5, 3], 6, 1e-5, false),
    groupNormCase([2, 8, 7, 7], 4, 1e-6, true),
    groupNormCase([2, 4, 3, 3], 2, 1e-5, true, 3),
    groupNormCase([2, 6, 5, 3], 3, 1e-5, false),
    layerNormCase([3, 7, 33]),
    layerNormCase([2, 3, 8], 0.5),
    layerNormCase([3, 5, 7], 0.5),
    // ---- attention
    attentionCase(2, 4, 37, 37, 8, 8),
    attentionCase(2, 4, 77, 77, 8, 8, { causal: true }),
    attentionCase(2, 8, 50, 77, 4, 4, { capture: true }),
    attentionCase(1, 3, 9, 11, 4, 2),
    attentionCase(1, 2, 70, 9, 4, 2, { capture: true }),
    attentionCase(1, 2, 4, 9, 4, 4, { probsOnly: true }),
    ...regionCases(),
    // ---- elementwise
    gegluCase([2, 5, 14]),
    unaryCase('gelu', [3, 17], 3),
    unaryCase('quick_gelu', [3, 17], 3),
    unaryCase('silu', [3, 17], 3),
    unaryCase('relu', [3, 17], 3),
    unaryCase('tanh', [3, 17], 3),
    binaryCase('add', [2, 3, 4, 5], [2, 3, 1, 1]),
    binaryCase('add', [2, 7, 5], [7, 5]),
    binaryCase('add', [2, 3, 4], [4]),
    binaryCase('mul', [4, 9], [4, 9]),
    binaryCase('mul', [2, 3, 4], [1, 3, 1]),
    { name: 'scale ·−0.7 + 0.3', inputs: [{ shape: [5, 6] }], build: (g, [x]) => g.scale(x!, -0.7, 0.3), ref: (x) => [R.map(x[0]!, (v) => v * -0.7 + 0.3)], grad: [0] },
    // ---- layout
    { name: 'upsample2x [2,3,5,7]', inputs: [{ shape: [2, 3, 5, 7] }], build: (g, [x]) => g.upsample2x(x!), ref: (x) => [R.upsample2x(x[0]!, [2, 3, 5, 7])], grad: [0] },
    { name: 'concat axis 1', inputs: [{ shape: [2, 3, 4, 5] }, { shape: [2, 6, 4, 5] }], build: (g, [a, b]) => g.concat([a!, b!], 1), ref: (x) => [R.concat(x, [[2, 3, 4, 5], [2, 6, 4, 5]], 1)], grad: [0, 1] },
    { name: 'concat axis 0', inputs: [{ shape: [1, 3, 4] }, { shape: [2, 3, 4] }], build: (g, [a, b]) => g.concat([a!, b!], 0), ref: (x) => [R.concat(x, [[1, 3, 4], [2, 3, 4]], 0)], grad: [0, 1] },
    { name: 'permute 0231', inputs: [{ shape: [2, 3, 4, 5] }], build: (g, [x]) => g.permute(x!, [0, 2, 3, 1]), ref: (x) => [R.permute(x[0]!, [2, 3, 4, 5], [0, 2, 3, 1])], grad: [0] },
    { name: 'permute 201 + reshape', inputs: [{ shape: [2, 3, 4] }], build: (g, [x]) => g.reshape(g.permute(x!, [2, 0, 1]), [4, 6]), ref: (x) => [R.permute(x[0]!, [2, 3, 4], [2, 0, 1])], grad: [0] },
    { name: 'reshape [2,3,4]→[6,4]', inputs: [{ shape: [2, 3, 4] }], build: (g, [x]) => g.reshape(x!, [6, 4]), ref: (x) => [R.map(x[0]!, (v) => v)], grad: [0] },
    { name: 'slice axis 1 2:7', inputs: [{ shape: [2, 8, 3] }], build: (g, [x]) => g.slice(x!, 1, 2, 7), ref: (x) => [R.slice(x[0]!, [2, 8, 3], 1, 2, 7)], grad: [0] },
    { name: 'reduce_sum [2,3,4]→[3,1]', inputs: [{ shape: [2, 3, 4] }], build: (g, [x]) => g.reduceSum(x!, [3, 1]), ref: (x) => [R.reduceSum(x[0]!, [2, 3, 4], [3, 1])], grad: [0] },
    // ---- misc (no backward rule except inject)
    { name: 'timestep_emb dim 32 flip', inputs: [{ shape: [3], positive: true }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 32, flip: true, shift: 0 }), ref: (x) => [R.timestepEmb(x[0]!, 32, true, 0)] },
    { name: 'timestep_emb dim 9 shift 1 (odd)', inputs: [{ shape: [2], positive: true }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 9, flip: false, shift: 1 }), ref: (x) => [R.timestepEmb(x[0]!, 9, false, 1)] },
    { name: 'embedding ids[2,7] table[50,6]', inputs: [{ shape: [2, 7], int: [0, 50] }, { shape: [50, 6] }], build: (g, [i, tb]) => g.embedding(i!, tb!), ref: (x) => [R.embedding(x[0]!, x[1]!, 6)] },
    { name: 'inject x[2,7,6] vectors[3,6]', inputs: [{ shape: [2, 7, 6] }, { shape: [2, 7], int: [-1, 3] }, { shape: [3, 6] }], build: (g, [x, s, v]) => g.inject(x!, s!, v!), ref: (x) => [R.inject(x[0]!, x[1]!, x[2]!, 6)], grad: [0, 2] },
    { name: 'cfg [4,3,5] 7.5', inputs: [{ shape: [4, 3, 5] }], build: (g, [e]) => g.cfg(e!, 7.5), ref: (x) => [R.cfg(x[0]!, 7.5)] },
    { name: 'sampler_step state noise clip', inputs: [{ shape: [2, 4, 5, 6] }, { shape: [2, 4, 5, 6] }, { shape: [2, 4, 5, 6] }, { shape: [9], f32bits: [0.8, 1.3, -0.4, 0.9, 0.7, 0.2, 0.3, -0.15, 0.5] }, { shape: [2, 4, 5, 6] }], build: (g, [x, m, st, c, z]) => g.samplerStep(x!, m!, st!, c!, z), ref: (x) => R.samplerStep(x[0]!, x[1]!, x[2]!, x[3] as Int32Array, x[4]) },
    { name: 'sampler_step no noise, no clip', inputs: [{ shape: [1, 4, 5, 6] }, { shape: [1, 4, 5, 6] }, { shape: [1, 4, 5, 6] }, { shape: [9], f32bits: [1, 1.2, -0.5, 0, 0.6, 0.3, 0.2, 0, 0] }], build: (g, [x, m, st, c]) => g.samplerStep(x!, m!, st!, c!), ref: (x) => R.samplerStep(x[0]!, x[1]!, x[2]!, x[3] as Int32Array, undefined) },
    // ---- optimizer update (float32 only)
    { name: 'adam_step clipped by the global norm', inputs: [{ shape: [3, 5, 7] }, { shape: [3, 5, 7] }, { shape: [3, 5, 7], amp: 0.1 }, { shape: [3, 5, 7], positive: true, amp: 2e-5 }, { shape: [8], f32bits: [1e-3, 0.9, 0.999, 1e-8, 1 - 0.9 ** 3, 1 - 0.999 ** 3, 1, 0] }, { shape: [1], data: [37.5] }], build: (g, [p, gr, m, v, c, q]) => g.adamStep(p!, gr!, m!, v!, c!, q), ref: (x) => R.adamStep(x[0]!, x[1]!, x[2]!, x[3]!, x[4] as Int32Array, x[5]), float32Only: true },
    { name: 'adam_step unclipped, first step', inputs: [{ shape: [257] }, { shape: [257], amp: 0.01 }, { shape: [257], data: new Array(257).fill(0) }, { shape: [257], data: new Array(257).fill(0) }, { shape: [8], f32bits: [0.05, 0.8, 0.99, 1e-6, 0.2, 0.01, 0, 0] }], build: (g, [p, gr, m, v, c]) => g.adamStep(p!, gr!, m!, v!, c!), ref: (x) => R.adamStep(x[0]!, x[1]!, x[2]!, x[3]!, x[4] as Int32Array, undefined), float32Only: true },
    { name: 'adam_step non-finite norm: nothing changes', inputs: [{ shape: [4, 9] }, { shape: [4, 9] }, { shape: [4, 9] }, { shape: [4, 9], positive: true, amp: 2e-5 }, { shape: [8], f32bits: [1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 1, 0] }, { shape: [1], data: [NaN] }], build: (g, [p, gr, m, v, c, q]) => g.adamStep(p!, gr!, m!, v!, c!, q), ref: (x) => R.adamStep(x[0]!, x[1]!, x[2]!, x[3]!, x[4] as Int32Array, x[5]), float32Only: true },
  ];
  return [...cases, ...(which === 'all' ? gpuCases() : []), ...pathCases()];
}

/**
 * Regional attention (native/regions.h): boxes on cell edges, a cell centre on a box's edge, empty
 * and overlapping boxes, every key confined (rows that see none), regions on some batch rows only,
 * query blocks and key tiles past the CPU kernel's (64 queries, 256 keys), and the whole image
 * (checked against plain attention: no change).
 */
function regionCases(): OpCase[] {
  const rg = (name: string, grid: [number, number], list: { tokens: number[]; box: [number, number, number, number] }[], more: Partial<RegionSpec> = {}): RegionSpec => ({ name, grid, list, ...more });
  return [
    attentionCase(2, 2, 24, 11, 4, 4, { regions: rg('boxes on cell edges', [4, 6], [{ tokens: [2, 3], box: [0, 0, 0.5, 0.5] }, { tokens: [7], box: [0.5, 0.25, 1, 1] }]) }),
    attentionCase(1, 2, 9, 7, 4, 4, { capture: true, regions: rg('centres on box edges', [3, 3], [{ tokens: [1], box: [0.5, 0, 1, 0.5] }, { tokens: [2, 5], box: [0, 0.5, 0.5, 1] }]) }),
    attentionCase(1, 2, 16, 8, 4, 4, { capture: true, regions: rg('an empty box, an unused slot', [4, 4], [{ tokens: [1, 2], box: [0.3, 0.3, 0.35, 0.35] }, { tokens: [6], box: [0, 0, 0.5, 1] }], { capacity: 3 }) }),
    attentionCase(2, 2, 30, 10, 4, 4, { capture: true, regions: rg('overlapping boxes', [6, 5], [{ tokens: [1], box: [0.2, 0, 0.8, 0.6] }, { tokens: [4, 5], box: [0, 0.3, 1, 0.7] }, { tokens: [8], box: [0.4, 0.4, 1, 1] }]) }),
    attentionCase(1, 2, 16, 6, 4, 4, { capture: true, regions: rg('every key confined', [4, 4], [{ tokens: [0, 1, 2], box: [0, 0, 0.5, 0.5] }, { tokens: [3, 4, 5], box: [0.25, 0.25, 1, 0.75] }]) }),
    attentionCase(2, 2, 12, 9, 4, 4, { capture: true, regions: rg('batch row 1 only', [3, 4], [{ tokens: [3, 4], box: [0, 0, 0.5, 1] }], { rows: [false, true] }) }),
    attentionCase(1, 2, 90, 300, 8, 8, { regions: rg('query blocks, key tiles', [9, 10], [{ tokens: [5, 6], box: [0, 0, 0.4, 1] }, { tokens: [270, 299], box: [0.5, 0.5, 1, 1] }]) }),
    attentionCase(1, 2, 90, 300, 8, 8, { capture: true, regions: rg('query blocks, key tiles', [9, 10], [{ tokens: [5, 6], box: [0, 0, 0.4, 1] }, { tokens: [270, 299], box: [0.5, 0.5, 1, 1] }]) }),
    attentionCase(2, 2, 35, 9, 4, 4, { capture: true, regions: rg('the whole image = plain attention', [5, 7], [{ tokens: [0, 1, 2, 3], box: [0, 0, 1, 1] }], { plainRef: true }) }),
  ];
}

/** SD 1.5 shapes and the shapes that pick each CUDA kernel path (was cuda_ops_test.cu's list). */
function gpuCases(): OpCase[] {
  const cs: OpCase[] = [
    linearCase([2, 77, 768], 320, { bias: true, wAmp: 0.05, stress: true }),
    linearCase([1, 256, 640], 5120, { bias: true, wAmp: 0.05, stress: true }),
    linearCase([2, 4096, 320], 2560, { bias: true, wAmp: 0.05, stress: true }),
    linearCase([2, 77, 768], 320, { bias: true, res: true, wAmp: 0.05, stress: true }),
    linearCase([3, 7, 13], 5, { res: true, stress: true }),
    linearCase([1, 256, 640], 5120, { bias: true, res: true, wAmp: 0.05, stress: true }),
    linearCase([2, 320, 4096], 320, { bias: true, trans: 'transX', wAmp: 0.05, stress: true }),
    linearCase([3, 13, 7], 5, { trans: 'transX', stress: true }),
    linearCase([2, 1024, 640], 640, { bias: true, res: true, trans: 'transY', wAmp: 0.05, stress: true }),
    linearCase([2, 7, 13], 5, { res: true, trans: 'transY', stress: true }),
    linearCase([1, 1, 8], 6, { bias: true, trans: 'transY', stress: true }),
    linearCase([2, 96, 200], 40, { bias: true, res: true, trans: 'transX', wAmp: 0.1, stress: true }),
    linearCase([2, 200, 96], 40, { bias: true, trans: 'transY', wAmp: 0.1, stress: true }),
    linearCase([2, 3, 0], 4, { bias: true, stress: true }),  // K = 0: the epilogue alone
    linearCase([2, 3, 0], 4, { res: true, trans: 'transY', stress: true }),
    matmulCase([4, 33, 17], [4, 17, 29], false, true),
    matmulCase([2, 64, 40], [2, 50, 40], true, true),
    matmulCase([3, 16, 8], [1, 8, 12], false, true),
    matmulCase([2, 77, 320], [320, 768], false, true),
    matmulCase([5, 7], [7, 3], false, true),
    convCase([1, 320, 32, 32], [320, 320, 3, 3], 1, 1, 1, false, true),
    convCase([2, 64, 17, 17], [64, 64, 3, 3], 2, 1, 0, false, true),
    convCase([2, 640, 16, 16], [320, 640, 1, 1], 1, 0, 1, false, true),
    convCase([2, 4, 64, 64], [320, 4, 3, 3], 1, 1, 1, false, true),
    convCase([2, 4, 8, 8], [8, 4, 3, 3], 1, 1, 1, false, true),
    convCase([1, 3, 224, 224], [64, 3, 16, 16], 16, 0, 1, false, true),
    convCase([2, 320, 64, 64], [320, 320, 3, 3], 1, 1, 1, false, true),
    convCase([2, 640, 16, 16], [320, 640, 1, 1], 1, 0, 2, true, true),
    convCase([2, 320, 16, 16], [320, 320, 1, 1], 1, 0, 0, true, true),
    convCase([1, 320, 32, 32], [320, 320, 3, 3], 1, 1, 0, true, true),
    convCase([2, 320, 16, 16], [320, 320, 3, 3], 1, 1, 2, false, true),
    convCase([2, 320, 16, 16], [320, 320, 3, 3], 1, 1, 2, true, true),
    convCase([2, 64, 16, 16], [64, 64, 3, 3], 1, 1, 1, true, true),
    convCase([2, 64, 17, 17], [64, 64, 3, 3], 2, 1, 1, true, true),
    convCase([2, 8, 3, 3], [16, 8, 3, 3], 1, 0, 2, true, true),
    // The im2col scratch budget (256 MiB) split into pixel ranges of one image, and into images.
    convCase([1, 128, 256, 256], [32, 128, 3, 3], 1, 1, 1, true, true),
    convCase([3, 128, 192, 192], [16, 128, 3, 3], 1, 1, 2, true, true),
    groupNormCase([2, 320, 32, 32], 32, 1e-5, true, 0, true),
    groupNormCase([2, 640, 16, 16], 32, 1e-6, false, 0, true),
    groupNormCase([1, 128, 64, 64], 32, 1e-6, true, 3, true),
    groupNormCase([2, 640, 32, 32], 32, 1e-5, true, 0, true),
    groupNormCase([2, 1280], 32, 1e-5, true, 0, true),
    layerNormCase([2, 1024, 320], 0.5, true),
    layerNormCase([2, 77, 768], 0.5, true),
    attentionCase(1, 8, 4096, 4096, 40, 40, { stress: true }),
    attentionCase(2, 8, 1024, 1024, 80, 80, { stress: true }),
    attentionCase(2, 8, 256, 256, 160, 160, { stress: true }),
    attentionCase(2, 8, 64, 64, 160, 160, { stress: true }),
    attentionCase(2, 12, 77, 77, 64, 64, { causal: true, stress: true }),
    attentionCase(1, 8, 4096, 77, 40, 40, { capture: true, stress: true }),
    attentionCase(2, 8, 1024, 77, 80, 80, { capture: true, stress: true }),
    attentionCase(2, 8, 64, 77, 160, 160, { capture: true, stress: true }),
    attentionCase(1, 2, 1000, 1000, 64, 64, { causal: true, capture: true, stress: true }),
    attentionCase(2, 12, 1000, 1000, 40, 40, { causal: true, stress: true }),
    attentionCase(2, 8, 2048, 2048, 160, 160, { stress: true }),
    attentionCase(2, 8, 2000, 2000, 40, 40, { capture: true, stress: true }),
    attentionCase(2, 8, 2000, 2000, 80, 80, { capture: true, stress: true }),
    attentionCase(2, 2, 64, 77, 4, 4, { stress: true }),
    attentionCase(2, 2, 64, 64, 8, 8, { capture: true, stress: true }),
    attentionCase(2, 4, 197, 197, 16, 16, { capture: true, stress: true }),
    attentionCase(2, 3, 100, 33, 40, 40, { causal: true, stress: true }),
    attentionCase(1, 2, 50, 70, 24, 40, { stress: true }),
    attentionCase(1, 1, 1024, 1024, 512, 512, { stress: true }),
    gegluCase([2, 256, 2560], 3, true),
    gegluCase([3, 5, 6], 3, true),
    unaryCase('gelu', [1001], 4, true),
    unaryCase('gelu', [2, 77, 3072], 4, true),
    unaryCase('quick_gelu', [2, 77, 3072], 4, true),
    unaryCase('silu', [2, 320, 64, 64], 4, true),
    unaryCase('silu', [7, 3], 4, true),
    unaryCase('relu', [1, 64, 128, 128], 2, true),
    unaryCase('tanh', [1, 4, 64, 65], 2, true),
    binaryCase('add', [2, 320, 32, 32], [2, 320, 32, 32], true),
    binaryCase('add', [2, 320, 32, 32], [2, 320, 1, 1], true),
    binaryCase('add', [2, 1024, 320], [320], true),
    binaryCase('mul', [3, 1, 5], [4, 1], true),
    binaryCase('mul', [2, 3, 1, 5], [1, 3, 4, 1], true),
    binaryCase('add', [4, 6], [1], true),
    { name: 'cfg [4,4,64,64] 7.5', inputs: [{ shape: [4, 4, 64, 64] }], build: (g, [e]) => g.cfg(e!, 7.5), ref: (x) => [R.cfg(x[0]!, 7.5)], stress: true },
    { name: 'sampler_step [2,4,64,64] noise', inputs: [{ shape: [2, 4, 64, 64] }, { shape: [2, 4, 64, 64] }, { shape: [2, 4, 64, 64] }, { shape: [9], f32bits: [0.8, 1.3, -0.4, 0.9, 0.7, 0.2, 0.3, -0.15, 0.5] }, { shape: [2, 4, 64, 64] }], build: (g, [x, m, st, c, z]) => g.samplerStep(x!, m!, st!, c!, z), ref: (x) => R.samplerStep(x[0]!, x[1]!, x[2]!, x[3] as Int32Array, x[4]), stress: true },
    { name: 'sampler_step [1,4,9,7] no noise', inputs: [{ shape: [1, 4, 9, 7] }, { shape: [1, 4, 9, 7] }, { shape: [1, 4, 9, 7] }, { shape: [9], f32bits: [1, 1.2, -0.5, 0, 0.6, 0.3, 0.2, 0, 0] }], build: (g, [x, m, st, c]) => g.samplerStep(x!, m!, st!, c!), ref: (x) => R.samplerStep(x[0]!, x[1]!, x[2]!, x[3] as Int32Array, undefined), stress: true },
    { name: 'scale [5,9] ·0.18215 + 0.5', inputs: [{ shape: [5, 9] }], build: (g, [x]) => g.scale(x!, 0.18215, 0.5), ref: (x) => [R.map(x[0]!, (v) => v * 0.18215 + 0.5)], stress: true },
    { name: 'reshape [2,77,768]→[154,768]', inputs: [{ shape: [2, 77, 768] }], build: (g, [x]) => g.reshape(x!, [154, 768]), ref: (x) => [R.map(x[0]!, (v) => v)], stress: true },
    { name: 'upsample2x [2,640,16,16]', inputs: [{ shape: [2, 640, 16, 16] }], build: (g, [x]) => g.upsample2x(x!), ref: (x) => [R.upsample2x(x[0]!, [2, 640, 16, 16])], stress: true },
    { name: 'concat axis 1 [2,640,16,16]+[2,320,16,16]', inputs: [{ shape: [2, 640, 16, 16] }, { shape: [2, 320, 16, 16] }], build: (g, [a, b]) => g.concat([a!, b!], 1), ref: (x) => [R.concat(x, [[2, 640, 16, 16], [2, 320, 16, 16]], 1)], stress: true },
    { name: 'concat axis -1 [3,5]+[3,2]+[3,1]', inputs: [{ shape: [3, 5] }, { shape: [3, 2] }, { shape: [3, 1] }], build: (g, [a, b, c]) => g.concat([a!, b!, c!], -1), ref: (x) => [R.concat(x, [[3, 5], [3, 2], [3, 1]], -1)], stress: true },
    { name: 'permute 0231 [2,320,32,32]', inputs: [{ shape: [2, 320, 32, 32] }], build: (g, [x]) => g.permute(x!, [0, 2, 3, 1]), ref: (x) => [R.permute(x[0]!, [2, 320, 32, 32], [0, 2, 3, 1])], stress: true },
    { name: 'permute 0312 [2,32,32,320]', inputs: [{ shape: [2, 32, 32, 320] }], build: (g, [x]) => g.permute(x!, [0, 3, 1, 2]), ref: (x) => [R.permute(x[0]!, [2, 32, 32, 320], [0, 3, 1, 2])], stress: true },
    { name: 'permute 2031 [3,4,5,6]', inputs: [{ shape: [3, 4, 5, 6] }], build: (g, [x]) => g.permute(x!, [2, 0, 3, 1]), ref: (x) => [R.permute(x[0]!, [3, 4, 5, 6], [2, 0, 3, 1])], stress: true },
    { name: 'slice axis -1 [2,77,1536] 768:1536', inputs: [{ shape: [2, 77, 1536] }], build: (g, [x]) => g.slice(x!, -1, 768, 1536), ref: (x) => [R.slice(x[0]!, [2, 77, 1536], -1, 768, 1536)], stress: true },
    { name: 'slice axis 0 [4,3,5] 1:3', inputs: [{ shape: [4, 3, 5] }], build: (g, [x]) => g.slice(x!, 0, 1, 3), ref: (x) => [R.slice(x[0]!, [4, 3, 5], 0, 1, 3)], stress: true },
    { name: 'timestep_emb dim 320 flip shift 1', inputs: [{ shape: [4], data: [999, 981, 1, 500] }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 320, flip: true, shift: 1 }), ref: (x) => [R.timestepEmb(x[0]!, 320, true, 1)], stress: true },
    { name: 'timestep_emb dim 7 (odd)', inputs: [{ shape: [4], data: [999, 981, 1, 500] }], build: (g, [t]) => g.timestepEmbedding(t!, { dim: 7, flip: false, shift: 0 }), ref: (x) => [R.timestepEmb(x[0]!, 7, false, 0)], stress: true },
    { name: 'embedding ids[2,77] table[1000,768]', inputs: [ids([2, 77], (k) => (k * 7919) % 1000), { shape: [1000, 768] }], build: (g, [i, tb]) => g.embedding(i!, tb!), ref: (x) => [R.embedding(x[0]!, x[1]!, 768)], stress: true },
    { name: 'inject x[2,77,768] vectors[3,768]', inputs: [{ shape: [2, 77, 768] }, ids([2, 77], (k) => (k % 77 === 5 ? 0 : k % 77 === 6 ? 2 : k % 77 === 7 ? 1 : -1)), { shape: [3, 768] }], build: (g, [x, s, v]) => g.inject(x!, s!, v!), ref: (x) => [R.inject(x[0]!, x[1]!, x[2]!, 768)], stress: true },
  ];
  // SD 1.5's attention layers at batch 2 that the kernel-path shapes above leave out.
  cs.push(attentionCase(2, 8, 4096, 4096, 40, 40, { stress: true, tolF16: 5e-3 }));
  cs.push(attentionCase(2, 8, 4096, 77, 40, 40, { capture: true, stress: true }));
  cs.push(attentionCase(2, 8, 256, 77, 160, 160, { capture: true, stress: true }));
  // Two regions as generate() passes them (guidance: the conditional row only; 8 table slots) on
  // each CUDA path: flash fp16 (d 40 / 80 / 160) or, in fp32, unfused (64x64) and generic (the rest).
  const two = (grid: [number, number]): RegionSpec => ({ name: 'two, conditional row', grid, list: [{ tokens: [5, 6], box: [0, 0, 0.5, 1] }, { tokens: [8, 9], box: [0.5, 0.25, 1, 1] }], rows: [false, true], capacity: 8 });
  cs.push(attentionCase(2, 8, 4096, 77, 40, 40, { capture: true, stress: true, regions: two([64, 64]) }));
  cs.push(attentionCase(2, 8, 1024, 77, 80, 80, { stress: true, regions: two([32, 32]) }));
  cs.push(attentionCase(2, 8, 64, 77, 160, 160, { capture: true, stress: true, regions: two([8, 8]) }));
  cs.push(attentionCase(2, 2, 96, 77, 8, 8, { capture: true, stress: true, regions: two([8, 12]) }));
  cs.push({ name: 'linear + geglu SD1.5 proj x[2,4096,320]→2560→1280', inputs: [{ shape: [2, 4096, 320] }, { shape: [2560, 320], amp: 0.05 }, { shape: [2560] }], build: (g, [x, w, b]) => g.geglu(g.linear(x!, w!, b)),
    // output (r, i) = h[r, i]·gelu(h[r, 1280 + i]) with h = x·wᵀ + b: two linear references per index.
    refAt: (x, _out, idx) => {
      const h = (r: number, n: number) => R.linear(x[0]!, [8192, 320], x[1]!, [2560, 320], x[2]!, undefined, 'plain', [r * 2560 + n])[0]!;
      return Float64Array.from(idx, (e) => h(Math.floor(e / 1280), e % 1280) * R.unary.gelu(h(Math.floor(e / 1280), 1280 + (e % 1280))));
    },
    samples: 2000,
    stress: true });
  // Backward ops at SD 1.5 and odd shapes (their CPU side is checked by the grad mode).
  for (const [op, s] of [['gelu', [2, 77, 3072]], ['gelu', [1001]], ['quick_gelu', [2, 77, 3072]], ['quick_gelu', [7, 3]], ['silu', [2, 320, 64, 64]], ['silu', [5, 3, 1]]] as const)
    cs.push(rawCase(`${op}_backward ${S(s)}`, `${op}_backward`, [{ shape: [...s], amp: 4 }, { shape: [...s] }], [[...s]]));
  cs.push(rawCase('geglu_backward [2,256,2560]', 'geglu_backward', [{ shape: [2, 256, 2560], amp: 3 }, { shape: [2, 256, 1280] }], [[2, 256, 2560]]));
  cs.push(rawCase('geglu_backward [3,5,6]', 'geglu_backward', [{ shape: [3, 5, 6], amp: 3 }, { shape: [3, 5, 3] }], [[3, 5, 6]]));
  cs.push(rawCase('upsample2x_backward [2,640,32,32]', 'upsample2x_backward', [{ shape: [2, 640, 32, 32] }], [[2, 640, 16, 16]]));
  cs.push(rawCase('upsample2x_backward [1,3,10,6]', 'upsample2x_backward', [{ shape: [1, 3, 10, 6] }], [[1, 3, 5, 3]]));
  for (const [x, o] of [[[2, 320, 32, 32], [2, 320, 1, 1]], [[2, 320, 32, 32], [320, 1, 1]], [[2, 1024, 320], [320]], [[2, 77, 768], [1, 77, 768]], [[2, 3, 4, 5], [3, 1, 5]], [[2, 4, 64, 64], [1]], [[3, 5], []], [[4, 6], [4, 6]], [[3, 40, 1, 7], [3, 1, 1, 7]]])
    cs.push(rawCase(`reduce_sum ${S(x!)}→${S(o!)}`, 'reduce_sum', [{ shape: x! }], [o!]));
  for (const [x, groups, silu, offset, eps] of [[[2, 320, 32, 32], 32, true, 0, 1e-5], [[2, 640, 16, 16], 32, false, 0, 1e-6], [[1, 256, 64, 64], 32, true, 3, 1e-6], [[2, 6, 5, 3], 3, false, 0, 1e-5], [[2, 1280], 32, true, 0, 1e-5]] as const)
    cs.push(rawCase(`group_norm_backward ${S(x)} G${groups}${silu ? ' +silu' : ''}`, 'group_norm_backward', [{ shape: [...x] }, { shape: [...x], offset }, { shape: [x[1]] }, { shape: [x[1]] }], [[...x]], { groups, silu, eps }));
  for (const x of [[2, 1024, 320], [2, 77, 768], [3, 5, 7]])
    cs.push(rawCase(`layer_norm_backward ${S(x)}`, 'layer_norm_backward', [{ shape: x }, { shape: x, offset: 0.5 }, { shape: [x[x.length - 1]!] }], [x]));
  for (const [x, w, stride, pad] of [[[1, 320, 32, 32], [320, 320, 3, 3], 1, 1], [[2, 64, 17, 17], [64, 64, 3, 3], 2, 1], [[2, 8, 16, 16], [8, 8, 3, 3], 2, 1], [[2, 640, 16, 16], [320, 640, 1, 1], 1, 0], [[2, 4, 64, 64], [320, 4, 3, 3], 1, 1], [[1, 5, 9, 7], [6, 5, 3, 2], 1, 0], [[1, 3, 224, 224], [64, 3, 16, 16], 16, 0]] as const) {
    const ho = Math.floor((x[2] + 2 * pad - w[2]) / stride) + 1, wo = Math.floor((x[3] + 2 * pad - w[3]) / stride) + 1;
    cs.push(rawCase(`conv2d_backward_input ${S(x)}←${w[0]} k${w[2]}x${w[3]} s${stride} p${pad}`, 'conv2d_backward_input', [{ shape: [x[0], w[0], ho, wo] }, { shape: [...w], amp: 1 / Math.sqrt(w[0] * w[2] * w[3]) }], [[...x]], { stride, pad }));
  }
  for (const [b, h, nq, nk, d, dv, causal, dp] of [[2, 2, 64, 64, 8, 8, false, false], [2, 8, 1024, 77, 80, 80, false, true], [2, 12, 77, 77, 64, 64, true, false], [2, 3, 100, 33, 24, 40, true, true], [2, 8, 1024, 1024, 40, 40, false, false], [1, 8, 4096, 4096, 40, 40, false, false]] as const) {
    const ins: InputSpec[] = [{ shape: [b, nq, h * d] }, { shape: [b, nk, h * d] }, { shape: [b, nk, h * dv] }, { shape: [b, nq, h * dv] }];
    if (dp) ins.push({ shape: [b * h, nq, nk] });
    cs.push(rawCase(`attention_backward q[${b},${nq},${h * d}] k/v ${nk} H${h}${causal ? ' causal' : ''}${dp ? ' +dp' : ''}`, 'attention_backward', ins, [[b, nq, h * d], [b, nk, h * d], [b, nk, h * dv]], { heads: h, scale: 1 / Math.sqrt(d), causal }));
  }
  for (const [b, h, grid, d, dp] of [[2, 8, [32, 32], 80, true], [2, 2, [8, 12], 8, false]] as const) {
    const nq = grid[0] * grid[1], table = regionTable([{ tokens: [5, 6], box: [0, 0, 0.5, 1] }, { tokens: [8], box: [0.5, 0.25, 1, 1] }], 77, [false, true], 8);
    const ins: InputSpec[] = [{ shape: [b, nq, h * d] }, { shape: [b, 77, h * d] }, { shape: [b, 77, h * d] }, { shape: [b, nq, h * d] }];
    if (dp) ins.push({ shape: [b * h, nq, 77] });
    ins.push({ shape: [b, regionColumns(77, 8)], int: [-1, 1], data: [...table] });
    cs.push(rawCase(`attention_backward q[${b},${nq},${h * d}] k/v 77 H${h}${dp ? ' +dp' : ''} regions ${S(grid)}`, 'attention_backward', ins, [[b, nq, h * d], [b, 77, h * d], [b, 77, h * d]], { heads: h, scale: 1 / Math.sqrt(d), causal: false, regions: true, width: grid[1] }));
  }
  cs.push(rawCase('inject_backward dy[2,77,768] → [3,768]', 'inject_backward', [{ shape: [2, 77, 768] }, ids([2, 77], (k) => (k % 77 === 5 ? 0 : k % 77 === 6 ? 2 : k % 77 === 7 ? 1 : k % 77 === 9 ? 2 : -1))], [[3, 768]]));
  cs.push(rawCase('inject_backward dy[1,5,3] → [4,3] (unused slot)', 'inject_backward', [{ shape: [1, 5, 3] }, ids([1, 5], (k) => (k === 0 ? 1 : k === 3 ? 0 : k === 4 ? 1 : -1))], [[4, 3]]));
  return cs;
}

