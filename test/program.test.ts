// Program's static plan: RESHAPEs that cost nothing (arena aliases, constant views), checked
// through the profiler's op list (a skipped op is not timed) and against results computed here.
import t from 'tap';
import { Graph } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { Tensor } from '../lib/tensor.js';
import { Adam, adamCoefficients } from '../lib/optim/adam.js';

const be = { device: 'cpu', dtype: 'float32' } as const;
const seq = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));

t.test('a reshape between ops is an alias, not a copy', async (t) => {
  const g = new Graph();
  const x = g.input([2, 3, 4]);
  const y = g.scale(g.reshape(g.scale(x, 2), [6, 4]), 1, 1);
  g.output(y);
  using p = new Program(g, be);
  const data = seq(24, (i) => i - 7.5);
  using xt = Tensor.from(data, [2, 3, 4]);
  const r = await p.runProfiled([xt]);
  t.same(r.timings!.map((o) => o.op), ['SCALE', 'SCALE'], 'only the two scales run');
  const out = r.outputs[0]!;
  t.same(out.shape, [6, 4]);
  t.same([...out.toFloat32()], [...data.map((v) => 2 * v + 1)]);
  out.dispose();
  t.ok(p.memoryPlan.arena < p.memoryPlan.intermediates, `arena ${p.memoryPlan.arena} B < ${p.memoryPlan.intermediates} B`);
});

t.test('a reshaped constant is a view made once (a 1x1 conv kernel used as a linear weight)', async (t) => {
  const N = 5, K = 3, R = 4;
  const wData = seq(N * K, (i) => Math.sin(i + 1));
  using w = Tensor.from(wData, [N, K, 1, 1]);
  const g = new Graph();
  const x = g.input([R, K]);
  const wv = g.reshape(g.constant(w), [N, K]);
  g.output(g.linear(x, wv));
  g.output(wv, 'weight view');
  using p = new Program(g, be);
  const xData = seq(R * K, (i) => Math.cos(i) + 0.5);
  using xt = Tensor.from(xData, [R, K]);
  const r = await p.runProfiled([xt]);
  t.same(r.timings!.map((o) => o.op), ['LINEAR'], 'the reshape of the constant never runs');
  const [y, wOut] = r.outputs as [Tensor, Tensor];
  const ref = new Float32Array(R * N);
  for (let i = 0; i < R; i++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += xData[i * K + k]! * wData[n * K + k]!;
      ref[i * N + n] = s;
    }
  const got = y.toFloat32();
  t.ok(got.every((v, i) => Math.abs(v - ref[i]!) <= 1e-6 * (1 + Math.abs(ref[i]!))), 'x·wᵀ through the view');
  t.same(wOut.shape, [N, K], 'a view as an output has the view shape');
  t.same([...wOut.toFloat32()], [...wData], 'and the constant data');
  y.dispose();
  wOut.dispose();
  // A second run gives the same (the view is not rebuilt or consumed).
  const [y2] = await p.run([xt]);
  t.same([...y2!.toFloat32()], [...got]);
  y2!.dispose();
});

// Program.run's `into`: outputs written to the caller's tensors; an Adam step in place on its inputs.
t.test('into: an Adam step updates the parameter and moments in place, as the host Adam does', async (t) => {
  const n = 37;
  const g = new Graph();
  const [p, gr, m, v] = [g.input([n]), g.input([n]), g.input([n]), g.input([n])];
  const c = g.input([8], 'int32');
  const gsq = g.reduceSum(g.mul(gr, gr), [1]);
  for (const o of g.adamStep(p, gr, m, v, c, gsq)) g.output(o);
  using prog = new Program(g, be);
  const p0 = seq(n, (i) => Math.sin(i + 0.5));
  const host = new Adam<Float32Array>();
  const hp = new Map([['p', p0.slice()]]);
  using pt = Tensor.from(p0, [n]);
  using mt = Tensor.from(new Float32Array(n), [n]);
  using vt = Tensor.from(new Float32Array(n), [n]);
  for (let step = 1; step <= 3; step++) {
    const grad = seq(n, (i) => Math.cos(i * step) * 0.7);
    // The host reference clips by the global norm (1 here) as trainEncoder did on the host.
    const norm = Math.hypot(...grad);
    host.step(hp, new Map([['p', grad.map((x) => (norm > 1 ? x / norm : x))]]), 0.01);
    using gt = Tensor.from(grad, [n]);
    using ct = Tensor.from(adamCoefficients(step, 0.01, 1), [8], { device: 'cpu' });
    const outs = await prog.run([pt, gt, mt, vt, ct], { into: [pt, mt, vt] });
    t.ok(outs[0] === pt && outs[1] === mt && outs[2] === vt, 'run() returns the caller\'s tensors');
  }
  const got = pt.toFloat32();
  let worst = 0;
  for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(got[i]! - hp.get('p')![i]!));
  t.ok(worst <= 1e-6, `device Adam in place vs host Adam after 3 steps: max |Δp| ${worst.toExponential(2)} (≤ 1e-6)`);
  const m1 = mt.toFloat32();
  t.ok(m1.some((x) => x !== 0), 'the moments were written in place');
});

t.test('into: what cannot be written in place is a typed error, and nothing runs', async (t) => {
  const g = new Graph();
  const x = g.input([4]);
  const y = g.scale(x, 2);
  const z = g.add(y, x);
  g.output(y);
  g.output(z);
  using prog = new Program(g, be);
  using xt = Tensor.from(seq(4, (i) => i + 1), [4]);
  using other = Tensor.from(new Float32Array(4), [4]);
  using wrong = Tensor.from(new Float32Array(5), [5]);
  await t.rejects(prog.run([xt], { into: [other] }), { code: 'E_ARGUMENT' }, 'one entry per output');
  await t.rejects(prog.run([xt], { into: [wrong, undefined] }), { code: 'E_SHAPE' }, 'the output\'s shape');
  await t.rejects(prog.run([xt], { into: [xt, undefined] }), { code: 'E_ARGUMENT' }, 'SCALE does not update in place');
  await t.rejects(prog.run([xt], { into: [other, other] }), { code: 'E_ARGUMENT' }, 'one tensor twice');
  t.same([...xt.toFloat32()], [1, 2, 3, 4], 'the input is untouched');
  const outs = await prog.run([xt], { into: [undefined, other] });
  t.equal(outs[1], other);
  t.same([...other.toFloat32()], [3, 6, 9, 12], 'written into the given tensor');
  outs[0]!.dispose();

  // ADAM_STEP may update its own input, but not one a later op still reads.
  const h = new Graph();
  const [p, gr, m, v] = [h.input([3]), h.input([3]), h.input([3]), h.input([3])];
  const c = h.input([8], 'int32');
  const [p1, m1, v1] = h.adamStep(p, gr, m, v, c);
  h.output(p1);
  h.output(m1);
  h.output(v1);
  h.output(h.scale(p, 1));
  using q = new Program(h, be);
  const ts = [0, 1, 2, 3].map(() => Tensor.from(seq(3, (i) => 0.1 * (i + 1)), [3]));
  using ct = Tensor.from(adamCoefficients(1, 0.1, 0), [8], { device: 'cpu' });
  await t.rejects(q.run([...ts, ct], { into: [ts[0], undefined, undefined, undefined] }), { code: 'E_ARGUMENT', message: /later op/ }, 'p is read after the update');
  await t.rejects(q.run([...ts, ct], { into: [undefined, undefined, undefined, ts[0]] }), { code: 'E_ARGUMENT' });
  const outs2 = await q.run([...ts, ct], { into: [undefined, ts[2], ts[3], undefined] });
  t.equal(outs2[1], ts[2], 'moments in place');
  outs2[0]!.dispose();
  outs2[3]!.dispose();
  for (const x of ts) x.dispose();
});

t.test('an abort during an in-place update lets the update finish: no half-stepped parameters', async (t) => {
  // 16 ADAM_STEP ops over 1M values each: long enough for an abort to land between them.
  const n = 1 << 20, k = 16;
  const g = new Graph();
  const c = g.input([8], 'int32');
  for (let i = 0; i < k; i++) {
    const [p, gr, m, v] = [g.input([n]), g.input([n]), g.input([n]), g.input([n])];
    for (const o of g.adamStep(p, gr, m, v, c)) g.output(o);
  }
  using prog = new Program(g, be);
  const ts = Array.from({ length: k * 4 }, (_, i) => Tensor.from(new Float32Array(n).fill(i % 4 >= 2 ? 0 : 0.5), [n]));
  using ct = Tensor.from(adamCoefficients(1, 0.1, 0), [8], { device: 'cpu' });
  const into: Tensor[] = [];
  for (let i = 0; i < k; i++) into.push(ts[4 * i]!, ts[4 * i + 2]!, ts[4 * i + 3]!);
  const ac = new AbortController();
  let firedAt = -1;
  const outs = await prog.run([ct, ...ts], {
    into, signal: ac.signal, tickMs: 5,
    onTick: (f) => {
      if (firedAt < 0 && f > 0 && f < 1) {
        firedAt = f;
        ac.abort();
      }
    },
  });
  t.ok(firedAt > 0 && firedAt < 1, `the abort landed mid-update (at ${(firedAt * 100).toFixed(0)}% of the ops)`);
  t.equal(outs.length, 3 * k, 'the run finished instead of stopping');
  // Every parameter took its step (p − lr·sign(g) on the first step): none was left behind.
  t.ok(ts.filter((_, i) => i % 4 === 0).every((p) => Math.abs(p.toFloat32()[n - 1]! - 0.4) < 1e-6), 'every parameter stepped');
  for (const x of ts) x.dispose();
});
