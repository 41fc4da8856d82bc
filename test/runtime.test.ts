// The model runtime on its own, as a model that is not SD uses it: the device rule, a weight
// group of its own, the bounded program cache, disposal; and the SD runtime's programs shared by
// two clients (the engine and the learner see one cache).
import t from 'tap';
import type { TensorRef } from '../lib/io/checkpoint.js';
import { backends, memory } from '../lib/native.js';
import { ModelRuntime, resolveBackend } from '../lib/runtime/runtime.js';
import { SdRuntime } from '../lib/runtime/sd.js';
import { Engine } from '../lib/engine.js';
import { IdentityLearner } from '../lib/learn/learn.js';
import { Tensor } from '../lib/tensor.js';
import { TINY_SD } from './helpers/fixtures.js';

t.test('resolveBackend: one rule for every model', async (t) => {
  const cuda = backends().cuda.available;
  t.same(resolveBackend({ device: 'cpu' }), { device: 'cpu', dtype: 'float32' });
  t.same(resolveBackend({}), cuda ? { device: 'cuda', dtype: 'float16' } : { device: 'cpu', dtype: 'float32' }, "'auto' by default");
  t.same(resolveBackend({ device: 'cpu', dtype: 'float16' }), { device: 'cpu', dtype: 'float32', weights: 'float16' }, 'the CPU computes in float32, with float16 weights');
  t.throws(() => resolveBackend({ device: 'tpu' as 'cpu' }), { code: 'E_ARGUMENT', message: /device must be 'auto', 'cpu' or 'cuda'/ });
  t.throws(() => resolveBackend({ dtype: 'int8' as 'float32' }), { code: 'E_ARGUMENT', message: /dtype/ });
  if (!cuda) t.throws(() => resolveBackend({ device: 'cuda' }), { code: 'E_BACKEND' });
});

/** A two-weight "model" (y = x·Wᵀ + b) that is not SD, on a runtime of its own. */
class TinyLinear extends ModelRuntime {
  readonly w;
  constructor(closed: { n: number }, dtype: 'float32' | 'float16' = 'float32') {
    super(resolveBackend({ device: 'cpu', dtype }), 'TinyLinear');
    const W = Float32Array.from({ length: 6 }, (_, i) => i + 1);
    const b = Float32Array.from([0.5, -0.5]);
    const ref = (name: string, data: Float32Array, shape: number[]): TensorRef =>
      ({ name, shape, dtype: 'F32', file: '-', key: name, readFloat32: () => data.slice(), readBytes: () => new Uint8Array(data.slice().buffer) }) as TensorRef;
    this.w = this.addWeights('linear', new Map([['weight', ref('weight', W, [2, 3])], ['bias', ref('bias', b, [2])]]));
    this.adopt(() => closed.n++);
  }
  async apply(x: Float32Array, rows: number): Promise<Float32Array> {
    const p = this.program(`linear:${rows}`, (g) => g.output(g.linear(g.input([rows, 3]), this.w.in(g, 'weight'), this.w.in(g, 'bias'))));
    using xin = this.floats(x, [rows, 3]);
    const [y] = await p.run([xin]);
    using host = y!;
    return host.toFloat32();
  }
}

t.test('a model that is not SD: weights, programs, LRU, disposal', async (t) => {
  const before = memory().cpu;
  const closed = { n: 0 };
  const m = new TinyLinear(closed);
  const y = await m.apply(Float32Array.from([1, 0, 2]), 1);
  t.same(Array.from(y), [1 + 6 + 0.5, 4 + 12 - 0.5], 'x·Wᵀ + b');
  t.equal(m.residentBytes().linear, 8 * 4, 'the weights are resident once used');
  m.maxPrograms = 2;
  for (const rows of [1, 2, 3, 1]) await m.apply(new Float32Array(3 * rows).fill(1), rows);
  t.equal(m.programCount, 2, 'at most maxPrograms kept');
  const p = m.program('linear:1', () => t.fail('linear:1 was used last: it must still be cached'));
  t.ok(p, 'the most recently used program survives eviction');
  m.dispose();
  t.equal(closed.n, 1, 'what the model handed over is released');
  t.equal(m.programCount, 0);
  t.equal(memory().cpu, before, 'no native memory left');

  const half = new TinyLinear(closed, 'float16');
  t.same(Array.from(await half.apply(Float32Array.from([1, 0, 2]), 1)), [1 + 6 + 0.5, 4 + 12 - 0.5], 'float16 weights on the CPU: the same product');
  t.equal(half.residentBytes().linear, 6 * 2 + 2 * 4, 'the matrix is stored as half, the bias vector as float32');
  half.dispose();
  t.equal(memory().cpu, before, 'no native memory left');
  await t.rejects(m.apply(new Float32Array(3), 1), { code: 'E_DISPOSED', message: /TinyLinear used after dispose/ });
  m.dispose();
});

t.test('the SD runtime serves the engine and the learner from one program cache', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const rt: SdRuntime = engine.runtime;
  const e = await engine.wordEmbedding('person');
  const learner = new IdentityLearner(rt);
  const init = await learner.initialIdentity({ stages: 2 });
  t.same(Array.from(init.kData.subarray(0, e.length)), Array.from(e), 'one wordEmbedding for both');
  const n = rt.programCount;
  await rt.wordEmbedding('photo');
  t.equal(rt.programCount, n, 'the word-embedding program is shared, not rebuilt');
  using ctx = await rt.runText([engine.tokenize('a photo')]);
  using viaEngine = await engine.encodeText('a photo');
  t.same(ctx.shape, [1, 77, engine.configs.text.hiddenSize]);
  t.ok(Buffer.from(ctx.toFloat32().buffer).equals(Buffer.from(viaEngine.toFloat32().buffer)), 'engine.encodeText is the runtime text program');
  t.throws(() => SdRuntime.load(TINY_SD, { device: 'cpu', dtype: 'bfloat16' as 'float16' }), { code: 'E_ARGUMENT' });
  using x = Tensor.zeros([1, 4, 16, 16]);
  using c = Tensor.zeros([1, 77, 32]);
  engine.dispose();
  t.equal(rt.disposed, true, 'disposing the engine disposes its runtime');
  t.throws(() => rt.weights, { code: 'E_DISPOSED' });
  await t.rejects(engine.predictNoise(x, 10, c), { code: 'E_DISPOSED' });
  await t.rejects(engine.decodeLatents(x), { code: 'E_DISPOSED' });
});
