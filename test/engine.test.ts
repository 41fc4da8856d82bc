// Engine API behaviour on the tiny model: argument validation, determinism, abort, dispose, memory.
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { memory } from '../lib/native.js';
import { DDIMScheduler } from '../lib/sched/ddim.js';
import { normalGenerator } from '../lib/sched/random.js';
import { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { TINY_SD, fixture } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

// tap's deep equality formats whole typed arrays on failure and is slow on 49k elements: compare bytes.
const eq = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

const base = { prompt: 'a photo of the face of person', width: 128, height: 128, steps: 3, seed: 7 };

t.test('engine behaviour', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());

  t.test('tokenize and encodeText shapes', async (t) => {
    const ids = engine.tokenize('a photo');
    t.equal(ids.length, 77);
    t.equal(ids[0], 49406);
    using ctx = await engine.encodeText('a photo');
    t.same(ctx.shape, [1, 77, 32]);
    using ctx2 = await engine.encodeText(ids);
    t.ok(Buffer.from(ctx2.toFloat32().buffer).equals(Buffer.from(ctx.toFloat32().buffer)), 'ids and text give the same embedding');
    await t.rejects(engine.encodeText(new Int32Array(5)), { code: 'E_SHAPE' });
    await t.rejects(engine.encodeText(new Int32Array(77).fill(60000)), { code: 'E_ARGUMENT' });
    await t.rejects(engine.encodeText(null as unknown as string), { code: 'E_ARGUMENT' });
    await t.rejects(engine.encodeText([]), { code: 'E_ARGUMENT' });
    await t.rejects(engine.encodeText(new Array(77).fill(1.5)), { code: 'E_ARGUMENT', message: /integers/ });
  });

  t.test('same seed, same image; another seed, another image', async (t) => {
    const a = await engine.generate(base);
    const b = await engine.generate(base);
    const c = await engine.generate({ ...base, seed: 8 });
    t.ok(eq(a.images[0]!.data, b.images[0]!.data), 'identical pixels');
    t.notOk(eq(a.images[0]!.data, c.images[0]!.data), 'different pixels');
    t.equal(a.images[0]!.width, 128);
    t.equal(a.images[0]!.channels, 3);
    t.equal(a.images[0]!.data.length, 128 * 128 * 3);
    t.same(a.latents.shape, [1, 4, 16, 16]);
    for (const r of [a, b, c]) { r.latents.dispose(); r.pixels.dispose(); }
  });

  t.test('eta > 0 uses seeded noise and stays deterministic', async (t) => {
    const a = await engine.generate({ ...base, eta: 1 });
    const b = await engine.generate({ ...base, eta: 1 });
    const c = await engine.generate({ ...base, eta: 0 });
    t.ok(eq(a.images[0]!.data, b.images[0]!.data), 'identical pixels');
    t.notOk(eq(a.images[0]!.data, c.images[0]!.data), 'different pixels');
    for (const r of [a, b, c]) { r.latents.dispose(); r.pixels.dispose(); }
  });

  t.test('guidance ≤ 1 runs without the unconditional branch', async (t) => {
    // As diffusers (classifier-free guidance only when guidance_scale > 1): the UNet sees the
    // prompt rows alone, so the negative prompt is never encoded and a scale of 0 or 1 is the same.
    const a = await engine.generate({ ...base, guidanceScale: 1, negativePrompt: 'a blurry photo' });
    const b = await engine.generate({ ...base, guidanceScale: 0 });
    t.ok(eq(a.images[0]!.data, b.images[0]!.data), 'neither the negative prompt nor the scale changes the image');
    // The result is the plain DDIM loop over the conditional prediction (host DDIMScheduler.step).
    using ctx = await engine.encodeText(base.prompt);
    const sched = DDIMScheduler.fromConfig(engine.configs.scheduler);
    const next = normalGenerator(base.seed);
    let x = Float32Array.from({ length: 4 * 16 * 16 }, () => next());
    for (const ts of sched.timesteps(base.steps)) {
      using xt = Tensor.from(x, [1, 4, 16, 16]);
      using eps = await engine.predictNoise(xt, ts, ctx);
      x = sched.step(eps.toFloat32(), ts, x, { steps: base.steps }).prevSample;
    }
    const err = relL2(a.latents.toFloat32(), x);
    t.ok(err <= 1e-4, `the conditional-only DDIM loop, rel L2 ${err.toExponential(2)}`);
    for (const r of [a, b]) { r.latents.dispose(); r.pixels.dispose(); }
  });

  // generate()'s own argument errors are in test/generate-args.test.ts.
  t.test('bad arguments to the building blocks are typed errors', async (t) => {
    using x = Tensor.zeros([1, 4, 16, 16]);
    using ctx = Tensor.zeros([1, 77, 31]);
    await t.rejects(engine.predictNoise(x, 10, ctx), { code: 'E_SHAPE' });
    using ctxOk = Tensor.zeros([1, 77, 32]);
    await t.rejects(engine.predictNoise(x, NaN, ctxOk), { code: 'E_ARGUMENT' });
    await t.rejects(engine.predictNoise(x, 1000, ctxOk), { code: 'E_ARGUMENT' });
    using odd = Tensor.zeros([1, 4, 12, 12]);
    await t.rejects(engine.predictNoise(odd, 10, ctxOk), { code: 'E_SHAPE' });
    await t.rejects(engine.predictNoiseWithAttention(x, 10, ctxOk, ['nope.attn2']), { code: 'E_ARGUMENT' });
    using img = Tensor.zeros([1, 3, 100, 100]);
    await t.rejects(engine.encodeImage(img), { code: 'E_SHAPE' });
    using z = Tensor.zeros([1, 3, 16, 16]);
    await t.rejects(engine.decodeLatents(z), { code: 'E_SHAPE' });
  });

  t.test('over-long prompts are truncated with a warning', async (t) => {
    const r = await engine.generate({ ...base, prompt: 'a photo of a very long prompt '.repeat(20) });
    t.match(r.warnings.join('\n'), /truncated/);
    r.latents.dispose(); r.pixels.dispose();
  });

  t.test('abort mid-generation rejects with E_ABORTED and frees everything', async (t) => {
    const before = memory().cpu;
    const ac = new AbortController();
    await t.rejects(
      engine.generate({ ...base, steps: 20, signal: ac.signal, onProgress: (p) => { if (p.step === 3) ac.abort(); } }),
      { code: 'E_ABORTED' },
    );
    t.equal(memory().cpu, before, 'no tensor memory left behind');
    const pre = new AbortController();
    pre.abort();
    await t.rejects(engine.generate({ ...base, signal: pre.signal }), { code: 'E_ABORTED' });
  });

  t.test('progress reports every step', async (t) => {
    const seen: number[] = [];
    const r = await engine.generate({ ...base, steps: 4, onProgress: (p) => { seen.push(p.step); t.equal(p.steps, 4); t.ok(p.elapsedMs >= 0); t.ok(p.timestep >= 0); } });
    t.same(seen, [1, 2, 3, 4]);
    r.latents.dispose(); r.pixels.dispose();
  });

  t.test('a mutated identity with NaN is refused without leaking', async (t) => {
    const { Identity } = await import('../lib/identity/identity.js');
    const id = new Identity({ k: new Float32Array(32).fill(0.01), words: 1, dim: 32, method: 'custom' });
    id.kData[0] = NaN;
    const before = memory().cpu;
    await t.rejects(engine.generate({ ...base, prompt: 'a <id>', identity: id }), { code: 'E_IDENTITY' });
    t.equal(memory().cpu, before);
  });

  t.test('the program cache is bounded (LRU) and can be cleared', async (t) => {
    const saved = engine.maxPrograms;
    engine.maxPrograms = 3;
    for (const g of [2, 3, 4, 5, 6]) {
      const r = await engine.generate({ ...base, steps: 1, guidanceScale: g });
      r.latents.dispose(); r.pixels.dispose();
    }
    t.ok(engine.programCount <= 3, `at most 3 programs kept (${engine.programCount})`);
    engine.clearPrograms();
    t.equal(engine.programCount, 0);
    engine.maxPrograms = saved;
  });

  t.test('concurrent generate() calls on one engine give the same images as sequential ones', async (t) => {
    const [a, b] = await Promise.all([engine.generate(base), engine.generate(base)]);
    t.ok(eq(a.images[0]!.data, b.images[0]!.data));
    for (const r of [a, b]) { r.latents.dispose(); r.pixels.dispose(); }
  });

  t.test('ten generate() calls do not grow memory', async (t) => {
    const run = async () => { const r = await engine.generate(base); r.latents.dispose(); r.pixels.dispose(); };
    await run();
    const before = memory().cpu;
    for (let i = 0; i < 10; i++) await run();
    t.equal(memory().cpu, before, 'native live bytes unchanged');
    t.equal(engine.programCount > 0, true);
  });
});

// On every test backend (test/helpers/backends.ts); float16 engines refuse to learn.
for (const b of testBackends()) {
  t.test(`engine.learnIdentity runs SeFi-IDE and the identity generates on ${b.name}`, { skip: b.skip }, async (t) => {
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    t.teardown(() => engine.dispose());
    if (b.dtype === 'float16') {
      await t.rejects(engine.learnIdentity(fixture('faces/face-a.png'), { steps: 2, face: false }), { code: 'E_ARGUMENT', message: /float32/ });
      return;
    }
    const steps: number[] = [];
    const losses: number[] = [];
    const id = await engine.learnIdentity(fixture('faces/face-a.png'), { steps: 2, seed: 1, face: false, onProgress: (p) => { steps.push(p.step); losses.push(p.loss); } });
    t.same(steps, [1, 2]);
    t.ok(losses.every(Number.isFinite) && [...id.kData].every(Number.isFinite), `finite losses (${losses.join(', ')}) and words`);
    t.same([id.stages, id.words, id.dim, id.method], [5, 1, 32, 'sefi-ide']);
    const r = await engine.generate({ ...base, prompt: 'a photo of <id>', identity: id });
    t.equal(r.images.length, 1);
    r.latents.dispose(); r.pixels.dispose();
  });
}

t.test('an abort while the weights are still loading stops generate()', async (t) => {
  const e = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => e.dispose());
  const ac = new AbortController();
  const p = e.generate({ ...base, signal: ac.signal });
  setImmediate(() => ac.abort());
  await t.rejects(p, { code: 'E_ABORTED', message: /loading/ });
  const r = await e.generate(base);
  t.equal(r.images.length, 1, 'the engine still works afterwards');
  r.latents.dispose(); r.pixels.dispose();
});

t.test('load errors and calls after dispose', async (t) => {
  await t.rejects(Engine.load('/nonexistent/model'), { code: 'E_NOT_FOUND' });
  await t.rejects(Engine.load(fixture('golden/tokenizer.json')), { code: 'E_MODEL_FORMAT' });
  await t.rejects(Engine.load(TINY_SD, { device: 'tpu' as 'cpu' }), { code: 'E_ARGUMENT' });
  await t.rejects(Engine.load(TINY_SD, { device: 'cpu', dtype: 'bfloat16' as 'float16' }), { code: 'E_ARGUMENT' });
  const e = await Engine.load(TINY_SD, { device: 'cpu' });
  e.dispose();
  t.equal(e.disposed, true);
  await t.rejects(e.generate(base), { code: 'E_DISPOSED' });
  await t.rejects(e.encodeText('x'), { code: 'E_DISPOSED' });
  t.throws(() => e.tokenize('x'), { code: 'E_DISPOSED' });
  e.dispose();
});
