// Backward ops and autodiff: each new op against finite differences on random, never-zero inputs;
// gradients through the tiny UNet against the reference goldens (grad.safetensors), and a
// finite-difference check of a few gradient entries through the whole UNet.
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { grad, mseLoss, planMemory } from '../lib/graph/autodiff.js';
import { Graph, type Value } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { buildUNetLoss } from '../lib/learn/objective.js';
import { learningMemoryPlan } from '../lib/learn/plan.js';
import { sd15Configs } from '../lib/bench/random-model.js';
import { Tensor } from '../lib/tensor.js';
import { GoldenFile, MODELS } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';
import { rand, rng, size } from './helpers/random.js';

const CPU = { device: 'cpu', dtype: 'float32' } as const;


interface OpCase {
  name: string;
  inputs: number[][]; // shapes of the differentiable inputs
  consts?: { shape: number[]; data?: Float32Array; dtype?: 'float' | 'int32'; int?: Int32Array }[];
  build: (g: Graph, xs: Value[], cs: Value[]) => Value | [Value, Value];
  tol?: number;
}

/**
 * loss = Σ y·r (+ Σ p·r2 for a second output); gradient by autodiff vs central differences in
 * float32 on a sample of entries.
 */
async function checkOp(tt: typeof t, c: OpCase): Promise<void> {
  const g = new Graph();
  const xs = c.inputs.map((s) => g.input(s));
  const consts: Tensor[] = [];
  const cs = (c.consts ?? []).map((k, i) => {
    const tns = k.int ? Tensor.from(k.int, k.shape) : Tensor.from(k.data ?? rand(size(k.shape), 900 + i), k.shape);
    consts.push(tns);
    return g.constant(tns, k.int ? 'int32' : 'float');
  });
  const res = c.build(g, xs, cs);
  const outs = Array.isArray(res) ? res : [res];
  const rTensors: Tensor[] = [];
  let loss: Value | undefined;
  outs.forEach((y, i) => {
    const rt = Tensor.from(rand(size(y.shape), 500 + i), y.shape);
    rTensors.push(rt);
    const term = g.reduceSum(g.mul(y, g.constant(rt)), [1]);
    loss = loss ? g.add(loss, term) : term;
  });
  g.output(loss!);
  for (const d of grad(g, loss!, xs)) g.output(d);
  const p = new Program(g, CPU);
  const data = c.inputs.map((s, i) => rand(size(s), 100 + i));
  const run = async (arrs: Float32Array[]) => {
    const ins = arrs.map((a, i) => Tensor.from(a, c.inputs[i]!));
    const o = await p.run(ins);
    ins.forEach((x) => x.dispose());
    const r = o.map((x) => x.toFloat32());
    o.forEach((x) => x.dispose());
    return r;
  };
  const base = await run(data);
  const r = rng(7);
  let worst = 0;
  for (let k = 0; k < data.length; k++) {
    const gk = base[1 + k]!;
    for (let s = 0; s < 6; s++) {
      const j = Math.floor(r() * data[k]!.length);
      const h = 1e-2 * Math.max(1, Math.abs(data[k]![j]!));
      const plus = data.map((a) => a.slice());
      plus[k]![j]! += h;
      const minus = data.map((a) => a.slice());
      minus[k]![j]! -= h;
      const fd = ((await run(plus))[0]![0]! - (await run(minus))[0]![0]!) / (2 * h);
      let scaleRef = 0;
      for (const v of gk) scaleRef = Math.max(scaleRef, Math.abs(v));
      worst = Math.max(worst, Math.abs(fd - gk[j]!) / Math.max(scaleRef, 1e-6));
    }
  }
  tt.ok(worst < (c.tol ?? 2e-2), `${c.name}: worst |fd − ad| / max|ad| = ${worst.toExponential(2)}`);
  p.dispose();
  consts.forEach((x) => x.dispose());
  rTensors.forEach((x) => x.dispose());
}

t.test('backward ops against finite differences', async (t) => {
  const cases: OpCase[] = [
    { name: 'linear', inputs: [[2, 3, 6]], consts: [{ shape: [5, 6] }, { shape: [5] }], build: (g, [x], [w, b]) => g.linear(x!, w!, b!) },
    { name: 'linear + residual', inputs: [[2, 3, 6], [2, 3, 5]], consts: [{ shape: [5, 6] }, { shape: [5] }], build: (g, [x, r], [w, b]) => g.linear(x!, w!, b!, { residual: r! }) },
    { name: 'matmul', inputs: [[2, 3, 4], [2, 4, 5]], build: (g, [a, b]) => g.matmul(a!, b!) },
    { name: 'matmul transB', inputs: [[2, 3, 4], [2, 5, 4]], build: (g, [a, b]) => g.matmul(a!, b!, { transB: true }) },
    { name: 'conv2d 3x3 pad 1', inputs: [[2, 3, 5, 6]], consts: [{ shape: [4, 3, 3, 3] }, { shape: [4] }], build: (g, [x], [w, b]) => g.conv2d(x!, w!, b!, { pad: 1 }) },
    {
      name: 'conv2d 3x3 + per-image bias + residual', inputs: [[2, 3, 5, 6], [2, 4], [2, 4, 5, 6]], consts: [{ shape: [4, 3, 3, 3] }],
      build: (g, [x, b, r], [w]) => g.conv2d(x!, w!, b!, { pad: 1, residual: r! }),
    },
    { name: 'conv2d 3x3 stride 2', inputs: [[1, 3, 6, 6]], consts: [{ shape: [4, 3, 3, 3] }], build: (g, [x], [w]) => g.conv2d(x!, w!, undefined, { stride: 2, pad: 1 }) },
    { name: 'conv2d 1x1', inputs: [[1, 3, 4, 4]], consts: [{ shape: [5, 3, 1, 1] }], build: (g, [x], [w]) => g.conv2d(x!, w!, undefined) },
    { name: 'group_norm', inputs: [[2, 4, 3, 3]], consts: [{ shape: [4] }, { shape: [4] }], build: (g, [x], [w, b]) => g.groupNorm(x!, w!, b!, { groups: 2, eps: 1e-5 }) },
    { name: 'group_norm + silu', inputs: [[2, 4, 3, 3]], consts: [{ shape: [4] }, { shape: [4] }], build: (g, [x], [w, b]) => g.groupNorm(x!, w!, b!, { groups: 2, eps: 1e-5, silu: true }) },
    { name: 'layer_norm', inputs: [[2, 3, 8]], consts: [{ shape: [8] }, { shape: [8] }], build: (g, [x], [w, b]) => g.layerNorm(x!, w!, b!, { eps: 1e-5 }) },
    { name: 'attention', inputs: [[2, 5, 8], [2, 7, 8], [2, 7, 6]], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads: 2 }) },
    { name: 'attention causal', inputs: [[1, 6, 8], [1, 6, 8], [1, 6, 8]], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads: 2, causal: true }) },
    { name: 'attention + probabilities', inputs: [[1, 70, 8], [1, 9, 8], [1, 9, 4]], build: (g, [q, k, v]) => g.attention(q!, k!, v!, { heads: 2, capture: true }) },
    { name: 'probabilities only', inputs: [[1, 4, 8], [1, 9, 8]], build: (g, [q, k]) => g.attention(q!, k!, k!, { heads: 2, capture: true })[1] },
    { name: 'geglu', inputs: [[2, 3, 8]], build: (g, [x]) => g.geglu(x!) },
    { name: 'gelu', inputs: [[3, 7]], build: (g, [x]) => g.gelu(x!) },
    { name: 'quick_gelu', inputs: [[3, 7]], build: (g, [x]) => g.quickGelu(x!) },
    { name: 'silu', inputs: [[3, 7]], build: (g, [x]) => g.silu(x!) },
    { name: 'add broadcast', inputs: [[2, 3, 4, 4], [2, 3, 1, 1]], build: (g, [a, b]) => g.add(a!, b!) },
    { name: 'add rank broadcast', inputs: [[2, 3, 4], [4]], build: (g, [a, b]) => g.add(a!, b!) },
    { name: 'mul broadcast', inputs: [[2, 3, 4], [1, 3, 1]], build: (g, [a, b]) => g.mul(a!, b!) },
    { name: 'scale', inputs: [[5]], build: (g, [x]) => g.scale(x!, -1.5, 2) },
    { name: 'upsample2x', inputs: [[1, 2, 3, 4]], build: (g, [x]) => g.upsample2x(x!) },
    { name: 'concat', inputs: [[1, 2, 3], [1, 4, 3]], build: (g, [a, b]) => g.concat([a!, b!], 1) },
    { name: 'permute + reshape', inputs: [[2, 3, 4]], build: (g, [x]) => g.reshape(g.permute(x!, [2, 0, 1]), [4, 6]) },
    { name: 'slice', inputs: [[2, 6, 3]], build: (g, [x]) => g.slice(x!, 1, 2, 5) },
    { name: 'reduce_sum', inputs: [[2, 3, 4]], build: (g, [x]) => g.reduceSum(x!, [3, 1]) },
    {
      name: 'inject (w.r.t. the vectors and x)', inputs: [[2, 5, 4], [3, 4]],
      consts: [{ shape: [2, 5], int: Int32Array.from([-1, 0, 2, -1, 0, 1, -1, -1, -1, 2]) }],
      build: (g, [x, v], [s]) => g.inject(x!, s!, v!),
    },
    // Parameter gradients (issue #13): the weights are differentiable inputs here.
    { name: 'linear w.r.t. x, weight, bias', inputs: [[2, 3, 6], [5, 6], [5]], build: (g, [x, w, b]) => g.linear(x!, w!, b!) },
    { name: 'linear transX w.r.t. weight, bias', inputs: [[2, 6, 3], [5, 6], [5]], build: (g, [x, w, b]) => g.linear(x!, w!, b!, { transX: true }) },
    { name: 'linear transY w.r.t. weight, bias', inputs: [[2, 3, 6], [5, 6], [5]], build: (g, [x, w, b]) => g.linear(x!, w!, b!, { transY: true }) },
    { name: 'linear + residual w.r.t. weight', inputs: [[1, 4, 6], [5, 6], [1, 4, 5]], build: (g, [x, w, r]) => g.linear(x!, w!, undefined, { residual: r! }) },
    { name: 'patch conv2d (stride = kernel) w.r.t. x, weight, bias', inputs: [[2, 3, 6, 7], [4, 3, 2, 2], [4]], build: (g, [x, w, b]) => g.conv2d(x!, w!, b!, { stride: 2 }) },
    { name: 'conv2d 1x1 w.r.t. weight', inputs: [[2, 3, 4, 4], [5, 3, 1, 1]], build: (g, [x, w]) => g.conv2d(x!, w!, undefined) },
    { name: 'layer_norm w.r.t. x, weight, bias', inputs: [[2, 3, 8], [8], [8]], build: (g, [x, w, b]) => g.layerNorm(x!, w!, b!, { eps: 1e-5 }) },
    {
      name: 'CLS token + position embedding (concat, broadcast add)', inputs: [[2, 4, 5], [1, 1, 5], [1, 5, 5]],
      build: (g, [x, c, p]) => g.add(g.concat([g.concat([c!, c!], 0), x!], 1), p!),
    },
  ];
  for (const c of cases) await checkOp(t, c);
});

t.test('grad refuses ops without a rule', async (t) => {
  const g = new Graph();
  const x = g.input([2, 3]);
  const y = g.cfg(x, 7.5);
  t.throws(() => grad(g, y, [x]), { code: 'E_ARGUMENT' });
  // Weight gradients of overlapping convolutions are not implemented: a typed refusal.
  const w = g.input([4, 3, 3, 3]);
  const c = g.conv2d(g.input([1, 3, 5, 5]), w, undefined, { pad: 1 });
  t.throws(() => grad(g, g.reduceSum(c, [1]), [w]), { code: 'E_ARGUMENT' });
});

t.test('activation memory plan of a learning step (SD 1.5 at 512x512, no weights needed)', async (t) => {
  const p = learningMemoryPlan(sd15Configs(), 512);
  const gib = (b: number) => (b / 2 ** 30).toFixed(2);
  t.comment(`SD 1.5 512x512 learning step: ${p.ops} ops, planned activation peak ${gib(p.learnPeakBytes)} GiB at ${p.learnPeakOp} (forward alone ${gib(p.forwardPeakBytes)} GiB; UNet + text weights ${gib(p.weightBytes)} GiB), float32`);
  t.ok(p.learnPeakBytes > p.forwardPeakBytes, 'the backward keeps activations alive');
  t.ok(p.learnPeakBytes < 4 * 2 ** 30, 'under 4 GiB of activations');
});

const TOL = 1e-4;

for (const [layout, path] of MODELS) {
  t.test(`grad goldens from the ${layout}`, async (t) => {
    const engine = await Engine.load(path, { device: 'cpu' });
    t.teardown(() => engine.dispose());
    const gf = new GoldenFile('grad');
    t.teardown(() => gf.close());
    const cases = JSON.parse((await import('node:fs')).readFileSync(new URL('./fixtures/golden/cases.json', import.meta.url), 'utf8')).grad as { timestep: number; att_layers: string[] };
    const cfg = engine.configs.unet;
    const w = engine.w.unet;
    const xs = gf.shape('z_t');
    const cs = gf.shape('context_t');
    const tIn = () => Tensor.from(new Float32Array([cases.timestep]), [1]);
    const run = async (p: Program, ins: Tensor[]) => {
      const o = await p.run(ins);
      ins.forEach((x) => x.dispose());
      const r = o.map((x) => x.toFloat32());
      o.forEach((x) => x.dispose());
      return r;
    };
    const relS = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

    t.test('diffusion loss and d/dcontext', async (t) => {
      const g = new Graph();
      const x = g.input(xs);
      const tt = g.input([1]);
      const c = g.input(cs);
      const e = g.input(xs);
      const r = buildUNetLoss(g, w, cfg, { x, t: tt, ctx: { k: c, v: c }, epsTarget: e });
      g.output(r.lossDiff!);
      g.output(grad(g, r.lossDiff!, [c])[0]!);
      const p = new Program(g, engine.backend);
      const [loss, dc] = await run(p, [gf.tensor('z_t'), tIn(), gf.tensor('context_t'), gf.tensor('eps_target')]);
      const el = relS(loss![0]!, gf.f32('loss_diff')[0]!);
      const eg = relL2(dc!, gf.f32('grad_context_diff'));
      t.ok(el <= 1e-5, `loss_diff rel ${el.toExponential(2)}`);
      t.ok(eg <= TOL, `grad_context_diff rel L2 ${eg.toExponential(2)}`);
      p.dispose();
    });

    t.test('attention loss (reference maps constant) and d/dcontext', async (t) => {
      const g = new Graph();
      const x = g.input(xs);
      const tt = g.input([1]);
      const c = g.input(cs);
      const cr = g.input(cs);
      const r = buildUNetLoss(g, w, cfg, { x, t: tt, ctx: { k: c, v: c }, reference: { context: cr, layers: cases.att_layers } });
      g.output(r.lossAtt!);
      g.output(grad(g, r.lossAtt!, [c], { stop: r.stop })[0]!);
      const p = new Program(g, engine.backend);
      const [loss, dc] = await run(p, [gf.tensor('z_t'), tIn(), gf.tensor('context_t'), gf.tensor('context_r')]);
      const el = relS(loss![0]!, gf.f32('loss_att')[0]!);
      const eg = relL2(dc!, gf.f32('grad_context_att'));
      t.ok(el <= 1e-5, `loss_att rel ${el.toExponential(2)}`);
      t.ok(eg <= TOL, `grad_context_att rel L2 ${eg.toExponential(2)}`);
      p.dispose();
    });

    t.test('dual K/V contexts: d/dkey context and d/dvalue context', async (t) => {
      const g = new Graph();
      const x = g.input(xs);
      const tt = g.input([1]);
      const k = g.input(cs);
      const v = g.input(cs);
      const e = g.input(xs);
      const r = buildUNetLoss(g, w, cfg, { x, t: tt, ctx: { k, v }, epsTarget: e });
      g.output(r.lossDiff!);
      const [dk, dv] = grad(g, r.lossDiff!, [k, v]);
      g.output(dk!);
      g.output(dv!);
      const p = new Program(g, engine.backend);
      const [loss, gk, gv] = await run(p, [gf.tensor('z_t'), tIn(), gf.tensor('context_t'), gf.tensor('context_r'), gf.tensor('eps_target')]);
      const el = relS(loss![0]!, gf.f32('loss_dual')[0]!);
      const ek = relL2(gk!, gf.f32('grad_context_k'));
      const ev = relL2(gv!, gf.f32('grad_context_v'));
      t.ok(el <= 1e-5, `loss_dual rel ${el.toExponential(2)}`);
      t.ok(ek <= TOL, `grad_context_k rel L2 ${ek.toExponential(2)}`);
      t.ok(ev <= TOL, `grad_context_v rel L2 ${ev.toExponential(2)}`);
      p.dispose();
    });

    if (layout !== 'folder') return;
    t.test('finite differences through the whole UNet (diffusion + attention loss)', async (t) => {
      const g = new Graph();
      const x = g.input(xs);
      const tt = g.input([1]);
      const c = g.input(cs);
      const cr = g.input(cs);
      const e = g.input(xs);
      const r = buildUNetLoss(g, w, cfg, { x, t: tt, ctx: { k: c, v: c }, epsTarget: e, reference: { context: cr, layers: cases.att_layers } });
      const loss = g.add(r.lossDiff!, g.scale(r.lossAtt!, 10));
      g.output(loss);
      g.output(grad(g, loss, [c], { stop: r.stop })[0]!);
      const mem = planMemory(g);
      t.ok(mem.peakBytes > 0, `planned peak ${mem.peakBytes} bytes at op ${mem.peakOp} (${mem.peakOpName})`);
      const p = new Program(g, engine.backend);
      const ctx = gf.f32('context_t');
      const go = (cd: Float32Array) => run(p, [gf.tensor('z_t'), tIn(), Tensor.from(cd, cs), gf.tensor('context_r'), gf.tensor('eps_target')]);
      const [, d] = await go(ctx);
      let big = 0;
      for (const v of d!) big = Math.max(big, Math.abs(v));
      // The largest-gradient entries (where finite differences in float32 are meaningful).
      const idx = [...d!.keys()].sort((a, b) => Math.abs(d![b]!) - Math.abs(d![a]!)).slice(0, 4);
      for (const j of idx) {
        const h = 1e-2;
        const pl = ctx.slice();
        pl[j]! += h;
        const mi = ctx.slice();
        mi[j]! -= h;
        const fd = ((await go(pl))[0]![0]! - (await go(mi))[0]![0]!) / (2 * h);
        const err = Math.abs(fd - d![j]!) / big;
        t.ok(err < 2e-2, `entry ${j}: ad ${d![j]!.toExponential(3)} fd ${fd.toExponential(3)} (err ${err.toExponential(2)} of max)`);
      }
      p.dispose();
    });
  });
}
