// Program's static plan: RESHAPEs that cost nothing (arena aliases, constant views), checked
// through the profiler's op list (a skipped op is not timed) and against results computed here.
import t from 'tap';
import { Graph } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { Tensor } from '../lib/tensor.js';

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
