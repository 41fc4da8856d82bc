// One CUDA stream per engine. The stream API's argument checks run everywhere; the engine checks
// run on the CUDA entries of the test backends (test/helpers/backends.ts: float32 and float16) and
// skip with the reason where no GPU can be used.
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { Graph } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { backends, native } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { TINY_SD } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

const cuda = backends().cuda;

t.test('stream ids are validated before any device is touched', async (t) => {
  for (const bad of [-1, 1.5, Number.NaN, 'x', 1e9]) {
    t.throws(() => native().createTensor('float32', [2], 'cpu', new Float32Array(2), 'float32', bad as number), { code: 'E_ARGUMENT' }, `stream ${String(bad)}`);
    t.throws(() => Tensor.from(new Float32Array(2), [2], { stream: bad as number }), { code: 'E_ARGUMENT' });
  }
  using x = Tensor.from(new Float32Array([1, 2]), [2], { stream: 0 });
  t.throws(() => x.to('float32', 'cpu', -3), { code: 'E_ARGUMENT' });
  const g = new Graph();
  g.output(g.scale(g.input([2], 'float'), 2));
  t.throws(() => new Program(g, { device: 'cpu', dtype: 'float32', stream: -2 }), { code: 'E_ARGUMENT' });
  t.throws(() => native().releaseStream('a' as unknown as number), { code: 'E_ARGUMENT' });
});

t.test('without a usable GPU', { skip: cuda.available ? 'a GPU is available' : false }, async (t) => {
  t.throws(() => native().createStream(), { code: 'E_BACKEND' }, 'createStream says why');
  t.throws(() => Tensor.from(new Float32Array(2), [2], { device: 'cuda', stream: 3 }), { code: 'E_BACKEND' });
  const e = await Engine.load(TINY_SD, { device: 'cpu' });
  t.equal(e.backend.stream, undefined, 'a CPU engine has no stream');
  e.dispose();
});

// 1. each engine gets a stream of its own; a disposed engine's stream goes to the next engine
// 2. two engines generating at the same time (their calls overlap) give what each gives alone
//    (within a tolerance: cuBLAS may pick other kernels while several streams are busy)
// 3. kernel errors (an out-of-range token id, flagged on the device) raised over and over on one
//    engine's stream while the other engine generates are reported by the first engine's calls
//    only; the other engine finishes, with the same result
// 4. a large tensor uploaded on one engine's stream while that stream is busy is read correctly by
//    a program on another engine's stream (the program waits for the upload)
for (const b of testBackends().filter((b) => b.device === 'cuda')) {
  t.test(`one stream per engine on ${b.name}`, { skip: b.skip }, async (t) => {
    const { dtype } = b;
    const tol = b.tol.repeat;
    const opts = { prompt: 'a photo of the face of person', width: 64, height: 64, steps: 3 };
    const spans: [number, number][] = [];
    const latents = async (e: Engine, seed: number) => {
      const t0 = performance.now();
      const r = await e.generate({ ...opts, seed });
      spans.push([t0, performance.now()]);
      const l = r.latents.toFloat32();
      r.latents.dispose();
      r.pixels.dispose();
      return l;
    };
    const a = await Engine.load(TINY_SD, { device: 'cuda', dtype });
    const b2 = await Engine.load(TINY_SD, { device: 'cuda', dtype });
    const engines = [a, b2];
    t.teardown(() => engines.forEach((e) => e.dispose()));
    const sa = a.backend.stream!, sb = b2.backend.stream!;
    t.ok(Number.isInteger(sa) && Number.isInteger(sb) && sa > 0 && sb > 0 && sa !== sb, `engines run on streams of their own (${sa}, ${sb})`);

    const alone = [await latents(a, 1), await latents(b2, 2)];
    spans.length = 0;
    const both = await Promise.all([latents(a, 1), latents(b2, 2)]);
    const [s0, s1] = spans;
    t.ok(s0 && s1 && s0[0] < s1[1] && s1[0] < s0[1], 'the two generate() calls overlapped in time');
    for (let i = 0; i < 2; i++) {
      const e = relL2(both[i]!, alone[i]!);
      t.ok(e <= tol, `concurrent generate() on engine ${i ? 'B' : 'A'} = alone: rel L2 ${e.toExponential(2)} (≤ ${tol})`);
    }

    // An embedding lookup with an out-of-range id on A's stream, while B generates.
    const g = new Graph();
    const ids = g.input([1, 4], 'int32');
    const table = g.input([8, 16], 'float');
    g.output(g.embedding(ids, table));
    const bad = new Program(g, a.backend);
    const idT = Tensor.from(new Int32Array([1, 2, 99, 3]), [1, 4], { device: 'cuda', stream: sa });
    const tabT = Tensor.from(new Float32Array(128).fill(0.5), [8, 16], a.backend);
    let bDone = false;
    const bRun = latents(b2, 2).finally(() => { bDone = true; });
    const codes = new Map<string, number>();
    let badRuns = 0;
    while (!bDone || badRuns === 0) {
      badRuns++;
      const code = await bad.run([idT, tabT]).then(() => 'no error', (e: { code?: string }) => e?.code ?? String(e));
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    const [rb] = await Promise.allSettled([bRun]);
    t.ok(codes.size === 1 && codes.has('E_ARGUMENT'), `each of ${badRuns} bad runs on A reports E_ARGUMENT itself (${JSON.stringify([...codes])})`);
    t.ok(rb!.status === 'fulfilled' && relL2(rb!.value, alone[1]!) <= tol, `engine B, generating meanwhile, is unaffected (${rb!.status === 'rejected' ? `${rb!.reason?.code} ${rb!.reason?.message}` : 'ok'})`);
    const after = await latents(a, 1);
    t.ok(relL2(after, alone[0]!) <= tol, 'engine A works again after its error');
    bad.dispose();
    idT.dispose();
    tabT.dispose();

    // 64 MB uploaded on B's stream behind B's queued work, read at once by a program on A's.
    const n = 1 << 24;
    const g2 = new Graph();
    const x = g2.input([16, n / 16], 'float');
    g2.output(g2.scale(x, 2, 1));
    const p2 = new Program(g2, a.backend);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = (i % 1009) / 1009 + 1;
    const busy = latents(b2, 3);
    await new Promise((r) => setTimeout(r, 5)); // B's first step is queued
    const xT = Tensor.from(data, [16, n / 16], b2.backend);
    const [y] = await p2.run([xT]);
    const yv = y!.toFloat32();
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(yv[i]! - (2 * data[i]! + 1)) / (2 * data[i]! + 1));
    // Exact but for the storage rounding: float32 (2^-24) or float16 (2^-11).
    t.ok(worst <= (dtype === 'float32' ? 1e-6 : 1e-3), `a 64 MB tensor of B's busy stream read by a program on A's stream: worst relative error ${worst.toExponential(2)}`);
    await busy;
    y!.dispose();
    xT.dispose();
    p2.dispose();

    // Recycling: A's stream goes to the next engine, which works.
    a.dispose();
    const c = await Engine.load(TINY_SD, { device: 'cuda', dtype });
    engines.push(c);
    t.equal(c.backend.stream, sa, `a disposed engine's stream (${sa}) is reused by the next engine`);
    const lc = await latents(c, 1);
    t.ok(relL2(lc, alone[0]!) <= tol, 'the engine on the recycled stream generates the same latents');
    t.throws(() => Tensor.from(new Float32Array(2), [2], { device: 'cuda', stream: 250 }), { code: 'E_ARGUMENT', message: /stream 250 does not exist/ });
  });
}
