// Adds fused into LINEAR / CONV2D (native/fused.h): a residual input shaped like the output and a
// per-image conv bias [B, O]. The model graphs must have no activation-sized ADD left where a
// fusion applies, and a fused op must compute (and differentiate) exactly what the unfused graph does.
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { grad } from '../lib/graph/autodiff.js';
import { fusedOperands, Graph, type Value } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { ShapeWeights, Weights } from '../lib/graph/weights.js';
import { sd15Configs, textLayout, unetLayout, vaeLayout } from '../lib/bench/random-model.js';
import type { TensorRef } from '../lib/io/checkpoint.js';
import { buildTextEncoder } from '../lib/text/clip.js';
import { Tensor } from '../lib/tensor.js';
import { buildUNet, crossAttentionLayers } from '../lib/unet/unet.js';
import { buildVaeDecoder } from '../lib/vae/vae.js';
import { TINY_SD } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';
import { rand, size } from './helpers/random.js';

const CPU = { device: 'cpu', dtype: 'float32' } as const;


/** The output shapes of a graph's ADD ops. */
const adds = (g: Graph): number[][] => g.ops.filter((o) => o.op === 'add').map((o) => g.values[o.out[0]!]!.shape);

const ofOp = (g: Graph, op: string): number => g.ops.filter((o) => o.op === op).length;

/** Ops that take a residual (flagged, and shaped like their output). */
const residualOps = (g: Graph, op: string): number => g.ops.filter((o) => {
  const r = o.op === op ? fusedOperands(o).residual : undefined;
  if (r === undefined) return false;
  const s = g.values[r]!.shape;
  const out = g.values[o.out[0]!]!.shape;
  return s.length === out.length && s.every((d, i) => d === out[i]);
}).length;
/** Convs with a per-image bias [B, O]. */
const imageBiasConvs = (g: Graph): number => g.ops.filter((o) => o.op === 'conv2d' && g.values[fusedOperands(o).bias ?? -1]?.shape.length === 2).length;


t.test('SD 1.5 graphs: every skip connection fused where the layout allows', async (t) => {
  const cfg = sd15Configs();
  const g = new Graph();
  const ctx = g.input([2, 77, 768]);
  buildUNet(g, new ShapeWeights('unet', unetLayout(cfg.unet)), cfg.unet, g.input([2, 4, 32, 32]), g.input([2]), { k: ctx, v: ctx });
  const a = adds(g);
  // Was 108: 2 per resnet, 4 per transformer. The time embedding is conv1's per-image bias, with
  // conv1's own bias folded into the time projection's on the host.
  t.same(a, [], 'no add: none per resnet, none per transformer');
  t.equal(ofOp(g, 'silu'), 2, 'silu twice: inside the time embedding, and once for all 22 time projections');
  t.equal(imageBiasConvs(g), 22, '22 convs (resnet conv1) take a per-image bias');
  t.equal(residualOps(g, 'conv2d'), 22, '22 convs (resnet conv2) take a residual');
  t.equal(residualOps(g, 'linear'), 4 * 16, '64 linears (to_out x2, ff.net.2, proj_out per transformer block) take a residual');
  t.equal(ofOp(g, 'permute'), 0, 'no permute: proj_in / proj_out change the layout inside their GEMMs');
  t.equal(g.ops.filter((o) => o.op === 'linear' && o.attrs?.['transX']).length, 16, '16 proj_in with transX');
  t.equal(g.ops.filter((o) => o.op === 'linear' && o.attrs?.['transY']).length, 16, '16 proj_out with transY');

  const gt = new Graph();
  buildTextEncoder(gt, new ShapeWeights('text', textLayout(cfg.text)), cfg.text, { ids: gt.input([2, 77], 'int32') });
  t.same(adds(gt), [[2, 77, 768]], 'text encoder: only the position-embedding add is left (24 residual adds fused)');

  const gv = new Graph();
  buildVaeDecoder(gv, new ShapeWeights('vae', vaeLayout(cfg.vae)), cfg.vae, gv.input([1, 4, 32, 32]));
  t.same(adds(gv), [], 'VAE decoder: no add left (the mid attention skip is to_out\'s residual)');
  t.equal(ofOp(gv, 'permute'), 0, 'VAE decoder: no permute (q/k/v read channels first, to_out writes channels first)');
});

t.test('tiny UNet graph: no activation-sized add left, goldens unchanged by the fusion', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const cfg = engine.configs.unet;
  const B = 2;
  const g = new Graph();
  const sample = g.input([B, cfg.inChannels, 16, 16]);
  const ts = g.input([B]);
  const ctx = g.input([B, 77, engine.configs.text.hiddenSize]);
  const { eps } = buildUNet(g, engine.runtime.weights.unet, cfg, sample, ts, { k: ctx, v: ctx });
  g.output(eps);
  const a = adds(g);
  const resnets = imageBiasConvs(g);
  const models = crossAttentionLayers(cfg).length / cfg.transformerLayersPerBlock;
  t.ok(resnets > 0 && models > 0, `${resnets} resnets fold their time embedding into conv1; ${models} transformers`);
  t.same(a, [], 'no add left');
  t.equal(residualOps(g, 'conv2d'), resnets, 'resnet conv2 takes the skip as residual');
  t.equal(residualOps(g, 'linear'), 3 * models * cfg.transformerLayersPerBlock + models, 'attention outputs, ff.net.2 and proj_out take the skip as residual');
  t.equal(ofOp(g, 'permute'), 0, 'no permute');
  // And it runs: finite output of the right shape.
  const p = new Program(g, CPU);
  t.teardown(() => p.dispose());
  const [out] = await p.run([
    Tensor.from(rand(B * cfg.inChannels * 256, 1), [B, cfg.inChannels, 16, 16]),
    Tensor.from(new Float32Array([999, 500]), [B]),
    Tensor.from(rand(B * 77 * engine.configs.text.hiddenSize, 2), [B, 77, engine.configs.text.hiddenSize]),
  ]);
  t.same(out!.shape, [B, cfg.inChannels, 16, 16]);
  t.ok(out!.toFloat32().every(Number.isFinite), 'finite');
  out!.dispose();
});

interface Case {
  name: string;
  x: number[];
  w: number[];
  /** 'channel': [N] / [O] constant; 'image': conv bias [B, O] as a graph input. */
  bias?: 'channel' | 'image';
  residual: boolean;
  conv?: { stride?: number; pad?: number };
}

/**
 * The fused op against ADDs of the unfused graph, forward and backward (gradients w.r.t. x, the
 * residual and a per-image bias through loss = Σ y·r), on random inputs.
 */
async function fusedVsUnfused(tt: typeof t, c: Case): Promise<void> {
  const conv = !!c.conv;
  const o = c.w[0]!;
  const outShape = conv
    ? [c.x[0]!, o, Math.floor((c.x[2]! + 2 * (c.conv!.pad ?? 0) - c.w[2]!) / (c.conv!.stride ?? 1)) + 1,
      Math.floor((c.x[3]! + 2 * (c.conv!.pad ?? 0) - c.w[3]!) / (c.conv!.stride ?? 1)) + 1]
    : [...c.x.slice(0, -1), o];
  const wT = Tensor.from(rand(size(c.w), 11, 1 / Math.sqrt(size(c.w.slice(1)))), c.w);
  const bT = c.bias === 'channel' ? Tensor.from(rand(o, 12), [o]) : undefined;
  const rT = Tensor.from(rand(size(outShape), 13), outShape);
  const imageBias = c.bias === 'image' ? [c.x[0]!, o] : undefined;
  const build = (fused: boolean) => {
    const g = new Graph();
    const x = g.input(c.x);
    const res = c.residual ? g.input(outShape) : undefined;
    const ib = imageBias ? g.input(imageBias) : undefined;
    const w = g.constant(wT);
    const b = bT ? g.constant(bT) : undefined;
    let y: Value;
    if (fused) {
      const bias = ib ?? b;
      y = conv
        ? g.conv2d(x, w, bias, { ...c.conv, ...(res ? { residual: res } : {}) })
        : g.linear(x, w, bias, res ? { residual: res } : {});
    } else {
      y = conv ? g.conv2d(x, w, b, c.conv) : g.linear(x, w, b);
      if (ib) y = g.add(y, g.reshape(ib, [...imageBias!, 1, 1]));
      if (res) y = g.add(y, res);
    }
    const forwardAdds = adds(g).length;
    const loss = g.reduceSum(g.mul(y, g.constant(rT)), [1]);
    g.output(y);
    const wrt = [x, ...(res ? [res] : []), ...(ib ? [ib] : [])];
    for (const d of grad(g, loss, wrt)) g.output(d);
    return { g, forwardAdds };
  };
  const inputs = [c.x, ...(c.residual ? [outShape] : []), ...(imageBias ? [imageBias] : [])].map((s, i) => rand(size(s), 100 + i));
  const shapes = [c.x, ...(c.residual ? [outShape] : []), ...(imageBias ? [imageBias] : [])];
  const run = async (g: Graph) => {
    const p = new Program(g, CPU);
    const outs = await p.run(inputs.map((a, i) => Tensor.from(a, shapes[i]!)));
    const r = outs.map((v) => v.toFloat32());
    outs.forEach((v) => v.dispose());
    p.dispose();
    return r;
  };
  const gf = build(true);
  const gu = build(false);
  tt.ok(gu.forwardAdds > 0 && gf.forwardAdds === 0, `${c.name}: the fused forward has no add`);
  const [fused, ref] = [await run(gf.g), await run(gu.g)];
  const names = ['y', 'dx', ...(c.residual ? ['dresidual'] : []), ...(imageBias ? ['dbias[B,O]'] : [])];
  names.forEach((n, i) => {
    const e = relL2(fused[i]!, ref[i]!);
    tt.ok(e <= 1e-6, `${c.name}: ${n} rel L2 ${e.toExponential(2)}`);
  });
  wT.dispose();
  bT?.dispose();
  rT.dispose();
}

t.test('fused linear / conv2d = the unfused graph, forward and backward', async (t) => {
  const cases: Case[] = [
    { name: 'linear +b +residual', x: [2, 5, 24], w: [17, 24], bias: 'channel', residual: true },
    { name: 'linear +residual', x: [2, 5, 24], w: [17, 24], residual: true },
    { name: 'linear few tokens (weight in place) +b +residual', x: [2, 300], w: [1000, 300], bias: 'channel', residual: true },
    { name: 'linear one row +residual', x: [1, 7], w: [5, 7], residual: true },
    { name: 'conv 1x1 +b +residual', x: [2, 40, 8, 8], w: [32, 40, 1, 1], bias: 'channel', residual: true, conv: {} },
    { name: 'conv 3x3 Winograd +b[B,O] +residual', x: [2, 32, 16, 16], w: [32, 32, 3, 3], bias: 'image', residual: true, conv: { pad: 1 } },
    { name: 'conv 3x3 Winograd +b[B,O]', x: [2, 32, 16, 16], w: [32, 32, 3, 3], bias: 'image', residual: false, conv: { pad: 1 } },
    { name: 'conv 3x3 im2col +b[B,O] +residual', x: [2, 8, 9, 7], w: [12, 8, 3, 3], bias: 'image', residual: true, conv: { pad: 1 } },
    { name: 'conv 3x3 stride 2 +b +residual', x: [2, 8, 10, 10], w: [12, 8, 3, 3], bias: 'channel', residual: true, conv: { stride: 2, pad: 1 } },
    { name: 'conv 3x3 small images +b[B,O] +residual', x: [2, 16, 4, 4], w: [64, 16, 3, 3], bias: 'image', residual: true, conv: { pad: 1 } },
    { name: 'conv 3x3 +residual, no bias', x: [1, 8, 6, 6], w: [12, 8, 3, 3], residual: true, conv: { pad: 1 } },
  ];
  for (const c of cases) await fusedVsUnfused(t, c);
});

t.test('bad bias / residual shapes are E_SHAPE, in the builder and in the backend', async (t) => {
  const g = new Graph();
  const x = g.input([2, 3, 8]);
  const w = g.input([5, 8]);
  t.throws(() => g.linear(x, w, undefined, { residual: g.input([2, 3, 6]) }), { code: 'E_SHAPE', message: /residual/ });
  t.throws(() => g.linear(x, w, undefined, { residual: g.input([3, 5]) }), { code: 'E_SHAPE' });
  const cx = g.input([2, 3, 6, 6]);
  const cw = g.input([4, 3, 3, 3]);
  t.throws(() => g.conv2d(cx, cw, g.input([4, 2]), { pad: 1 }), { code: 'E_SHAPE', message: /bias/ });
  t.throws(() => g.conv2d(cx, cw, g.input([3, 4]), { pad: 1 }), { code: 'E_SHAPE' });
  t.throws(() => g.conv2d(cx, cw, undefined, { pad: 1, residual: g.input([2, 4, 6, 5]) }), { code: 'E_SHAPE', message: /residual/ });

  // An op list the builder would refuse still fails cleanly in the backend.
  const gb = new Graph();
  const bx = gb.input([2, 3, 6, 6]);
  const bw = gb.constant(Tensor.from(rand(4 * 3 * 9, 3), [4, 3, 3, 3]));
  const bad = gb.input([2, 4, 6, 5]);
  gb.output(gb.op('conv2d', [bx, bw, bad], [[2, 4, 6, 6]], { pad: 1 })[0]!);
  const p = new Program(gb, CPU);
  t.teardown(() => p.dispose());
  await t.rejects(p.run([Tensor.from(rand(2 * 3 * 36, 4), [2, 3, 6, 6]), Tensor.from(rand(2 * 4 * 30, 5), [2, 4, 6, 5])]), { code: 'E_SHAPE' });
});

t.test('linear with transX / transY = permute + linear, forward and backward', async (t) => {
  // [B, K, R] channels-first in (transX) or [B, N, R] channels-first out (transY), with bias and
  // residual, against the explicit permutes, through loss = Σ y·r (gradients w.r.t. x and r).
  for (const [mode, B, K, R, N, withBias, withRes] of [
    ['transX', 2, 24, 35, 17, true, true],
    ['transX', 1, 8, 5, 3, false, false],
    ['transY', 2, 24, 35, 17, true, true],
    ['transY', 2, 6, 4, 9, false, true],
    ['transY', 1, 300, 2, 1000, true, false],
  ] as const) {
    const xShape = mode === 'transX' ? [B, K, R] : [B, R, K];
    const yShape = mode === 'transX' ? [B, R, N] : [B, N, R];
    const wT = Tensor.from(rand(N * K, 21, 1 / Math.sqrt(K)), [N, K]);
    const bT = withBias ? Tensor.from(rand(N, 22), [N]) : undefined;
    const rT = Tensor.from(rand(size(yShape), 23), yShape);
    const build = (fused: boolean) => {
      const g = new Graph();
      const x = g.input(xShape);
      const res = withRes ? g.input(yShape) : undefined;
      const w = g.constant(wT);
      const b = bT ? g.constant(bT) : undefined;
      let y: Value;
      if (fused) {
        y = g.linear(x, w, b, { [mode]: true, ...(res ? { residual: res } : {}) });
      } else {
        const tokens = mode === 'transX' ? g.permute(x, [0, 2, 1]) : x;
        y = g.linear(tokens, w, b);
        if (mode === 'transY') y = g.permute(y, [0, 2, 1]);
        if (res) y = g.add(y, res);
      }
      const forward = ofOp(g, 'permute') + adds(g).length;
      const loss = g.reduceSum(g.mul(y, g.constant(rT)), [1]);
      g.output(y);
      for (const d of grad(g, loss, [x, ...(res ? [res] : [])])) g.output(d);
      return { g, forward };
    };
    const inputs = [xShape, ...(withRes ? [yShape] : [])].map((s, i) => Tensor.from(rand(size(s), 200 + i), s));
    const run = async (g: Graph) => {
      const p = new Program(g, CPU);
      const outs = await p.run(inputs);
      const r = outs.map((v) => v.toFloat32());
      outs.forEach((v) => v.dispose());
      p.dispose();
      return r;
    };
    const gf = build(true);
    t.equal(gf.forward, 0, `${mode} ${JSON.stringify(xShape)}: the fused forward has no permute or add`);
    const [fused, ref] = [await run(gf.g), await run(build(false).g)];
    ['y', 'dx', ...(withRes ? ['dresidual'] : [])].forEach((n, i) => {
      const e = relL2(fused[i]!, ref[i]!);
      t.ok(e <= 1e-6, `${mode} ${JSON.stringify(xShape)} → ${JSON.stringify(yShape)}${withBias ? ' +b' : ''}${withRes ? ' +residual' : ''}: ${n} rel L2 ${e.toExponential(2)}`);
    });
    inputs.forEach((v) => v.dispose());
    wT.dispose();
    bT?.dispose();
    rT.dispose();
  }
  const g = new Graph();
  const w = g.input([5, 4]);
  t.throws(() => g.linear(g.input([2, 4, 3]), w, undefined, { transX: true, transY: true }), { code: 'E_SHAPE', message: /both/ });
  t.throws(() => g.linear(g.input([4, 3]), w, undefined, { transX: true }), { code: 'E_SHAPE', message: /rank 3/ });
  t.throws(() => g.linear(g.input([2, 3, 4]), w, undefined, { transX: true }), { code: 'E_SHAPE' });
  t.throws(() => g.linear(g.input([2, 3, 4]), w, undefined, { transY: true, residual: g.input([2, 3, 5]) }), { code: 'E_SHAPE', message: /residual/ });
});

t.test('Weights.sum: two biases folded on the host, once', async (t) => {
  const ref = (data: number[], shape: number[]) => ({ shape, dtype: 'F32', readFloat32: () => Float32Array.from(data) }) as unknown as TensorRef;
  const w = new Weights('unet', new Map([
    ['a', ref([1, 2, 3], [3])],
    ['b', ref([0.5, -2, 10], [3])],
    ['c', ref([1, 2], [2])],
  ]), CPU);
  t.teardown(() => w.dispose());
  const g = new Graph();
  const s = w.sum(g, 'a', 'b');
  t.equal(w.sum(g, 'a', 'b').id !== s.id && g.consts.get(s.id) === g.consts.get(w.sum(g, 'a', 'b').id), true, 'the summed tensor is made once');
  t.same([...g.consts.get(s.id)!.toFloat32()], [1.5, 0, 13]);
  t.throws(() => w.sum(g, 'a', 'c'), { code: 'E_MODEL_FORMAT', message: /one shape/ });
  t.throws(() => w.sum(g, 'a', 'missing'), { code: 'E_MODEL_FORMAT' });
});
