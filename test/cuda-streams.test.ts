// One CUDA stream per engine. The stream API's argument checks run everywhere; the engine checks
// (scripts/streams-check.mjs, also run by scripts/gpu-engine-check.mjs on the GPU machine) skip
// with the reason where no GPU can be used.
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { Graph } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { backends, native } from '../lib/native.js';
import { Tensor } from '../lib/tensor.js';
import { TINY_SD } from './helpers/fixtures.js';
// @ts-expect-error: a plain ES module shared with the GPU scripts (no types)
import { streamChecks } from '../scripts/streams-check.mjs';

const cuda = backends().cuda;
const skip = cuda.available ? false : `CUDA not available: ${cuda.reason}`;

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

t.test('one stream per engine', { skip }, async (t) => {
  for (const dtype of ['float32', 'float16'] as const)
    await streamChecks({ Engine, Graph, Program, Tensor }, TINY_SD, (ok: boolean, msg: string) => t.ok(ok, msg), dtype);
  t.throws(() => Tensor.from(new Float32Array(2), [2], { device: 'cuda', stream: 250 }), { code: 'E_ARGUMENT', message: /stream 250 does not exist/ });
});
