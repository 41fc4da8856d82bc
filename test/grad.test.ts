// Autodiff through whole models: gradients through the tiny UNet against the reference goldens
// (grad.safetensors) on every test backend (test/helpers/backends.ts: the CPU, and CUDA's backward
// kernels in float32 and float16 where a GPU is usable), and a finite-difference check of a few gradient entries through the whole
// UNet. Each op's backward rule is checked against finite differences by the op table's grad mode
// (test/ops.test.ts).
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { grad, planMemory } from '../lib/graph/autodiff.js';
import { Graph } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { buildUNetLoss } from '../lib/learn/objective.js';
import { learningMemoryPlan } from '../lib/learn/plan.js';
import { sd15Configs } from '../lib/bench/random-model.js';
import { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { GoldenFile, MODELS } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

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

for (const b of testBackends()) {
  for (const [layout, path] of MODELS) {
    t.test(`grad goldens from the ${layout} on ${b.name}`, { skip: b.skip }, async (t) => {
      const engine = await Engine.load(path, { device: b.device, dtype: b.dtype });
      const { grad: TOL, loss: LOSS_TOL } = b.tol;
      t.teardown(() => engine.dispose());
      const gf = new GoldenFile('grad');
      t.teardown(() => gf.close());
      const cases = JSON.parse((await import('node:fs')).readFileSync(new URL('./fixtures/golden/cases.json', import.meta.url), 'utf8')).grad as { timestep: number; att_layers: string[] };
      const cfg = engine.configs.unet;
      const w = engine.runtime.weights.unet;
      const xs = gf.shape('z_t');
      const cs = gf.shape('context_t');
      const tIn = () => Tensor.from(new Float32Array([cases.timestep]), [1]);
      const run = async (p: Program, ins: Tensor[]) => {
        const up = ins.map((x) => engine.runtime.upload(x));
        ins.forEach((x) => x.dispose());
        const o = await p.run(up);
        up.forEach((x) => x.dispose());
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
        t.ok(el <= LOSS_TOL, `loss_diff rel ${el.toExponential(2)}`);
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
        t.ok(el <= LOSS_TOL, `loss_att rel ${el.toExponential(2)}`);
        // Known: in float16 this gradient loses to rounding (two nearly equal probability maps are
        // subtracted; rel L2 0.39 on an H100), which is why Engine.learnIdentity requires float32.
        const todo = b.dtype === 'float16' ? 'float16 attention-loss gradient: learning refuses float16' : false;
        t.ok(eg <= TOL, `grad_context_att rel L2 ${eg.toExponential(2)}`, { todo });
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
        t.ok(el <= LOSS_TOL, `loss_dual rel ${el.toExponential(2)}`);
        t.ok(ek <= TOL, `grad_context_k rel L2 ${ek.toExponential(2)}`);
        t.ok(ev <= TOL, `grad_context_v rel L2 ${ev.toExponential(2)}`);
        p.dispose();
      });

      if (layout !== 'folder' || b.dtype !== 'float32') return;
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
}
