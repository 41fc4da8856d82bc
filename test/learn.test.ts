// SeFi-IDE per-identity learning on the tiny model: the generator's gradients against finite
// differences, a short seeded run that lowers the loss on a held batch and is deterministic, the
// learned identity round-tripping through a file into generate(), progress, abort and bad input.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { Identity } from '../lib/identity/identity.js';
import { TokenGenerator } from '../lib/learn/generator.js';
import { IdentityLearner } from '../lib/learn/learn.js';
import { fixture, TINY_SD } from './helpers/fixtures.js';

const FACE = fixture('faces/face-a.png');

t.test('generator: outputs start at the init embedding; parameter gradients match finite differences', async (t) => {
  const D = 6;
  const S = 2;
  const e0 = Array.from({ length: D }, (_, i) => 0.3 * Math.sin(i + 1));
  const gen = new TokenGenerator(e0, { dim: D, stages: S }, 3);
  const { out } = gen.forward();
  for (let i = 0; i < 2 * S; i++) for (let d = 0; d < D; d++) t.equal(out[i * D + d], e0[d], `output ${i} starts at e0`);
  const r = Float64Array.from({ length: 2 * S * D }, (_, i) => Math.cos(3 * i + 1));
  const lossOf = () => gen.forward().out.reduce((s, v, i) => s + v * r[i]!, 0);
  // A few Adam steps make the zero-initialised weights non-zero so every path carries gradient.
  for (let k = 0; k < 3; k++) {
    const f = gen.forward();
    gen.adam(gen.backward(f.tape, r), 0.05);
  }
  const f = gen.forward();
  const grads = gen.backward(f.tape, r);
  let worst = 0;
  let checked = 0;
  for (const [name, p] of gen.params) {
    const g = grads.get(name)!;
    for (const j of [0, Math.floor(p.length / 2), p.length - 1]) {
      const h = 1e-6;
      const old = p[j]!;
      p[j] = old + h;
      const lp = lossOf();
      p[j] = old - h;
      const lm = lossOf();
      p[j] = old;
      const fd = (lp - lm) / (2 * h);
      worst = Math.max(worst, Math.abs(fd - g[j]!) / Math.max(1e-3, Math.abs(fd)));
      checked++;
    }
  }
  t.ok(worst < 1e-5, `${checked} parameter entries: worst relative error ${worst.toExponential(2)}`);
});

t.test('learning on the tiny model', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  t.equal(engine.runtime.nativeSize, 128);
  const learner = new IdentityLearner(engine.runtime);

  t.test('30 seeded steps lower the held-batch loss and are deterministic', async (t) => {
    const progress: number[] = [];
    const opts = { steps: 30, seed: 11, lr: 0.01, onProgress: (p: { step: number }) => progress.push(p.step) };
    const t0 = Date.now();
    const a = await learner.learn(FACE, opts);
    const ms = (Date.now() - t0) / 30;
    t.comment(`tiny model, CPU: ${ms.toFixed(0)} ms per learning step (including set-up)`);
    t.same(progress, Array.from({ length: 30 }, (_, i) => i + 1), 'progress every step');
    t.equal(a.method, 'sefi-ide');
    t.equal(a.stages, 5);
    t.equal(a.words, 1);
    t.equal(a.dim, engine.configs.text.hiddenSize);
    const b = await learner.learn(FACE, { ...opts, onProgress: () => {} });
    t.same(Array.from(b.kData), Array.from(a.kData), 'same seed, same K tokens');
    t.same(Array.from(b.vData), Array.from(a.vData), 'same seed, same V tokens');
    const before = await learner.loss(FACE, await learner.initialIdentity(), { count: 12, seed: 5 });
    const after = await learner.loss(FACE, a, { count: 12, seed: 5 });
    t.ok(after.loss < before.loss, `held loss ${before.loss.toFixed(5)} → ${after.loss.toFixed(5)}`);

    const dir = mkdtempSync(path.join(tmpdir(), 'idforge-learn-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'me.safetensors');
    a.save(file, { vocabHash: engine.tokenizer.vocabHash });
    const loaded = Identity.load(file, { dim: engine.configs.text.hiddenSize, vocabHash: engine.tokenizer.vocabHash });
    t.same(Array.from(loaded.kData), Array.from(a.kData));
    t.same(Array.from(loaded.vData), Array.from(a.vData));
    t.equal(loaded.method, 'sefi-ide');
    const r = await engine.generate({ prompt: 'a photo of <id>, oil painting', identity: loaded, steps: 3, width: 128, height: 128, seed: 1 });
    t.equal(r.images[0]!.width, 128);
    t.ok(r.pixels.toFloat32().every(Number.isFinite), 'generates finite pixels');
  });

  t.test('progress reports and abort', async (t) => {
    const ac = new AbortController();
    const seen: { step: number; steps: number; loss: number; lossDiff: number; lossAtt: number; elapsedMs: number }[] = [];
    await t.rejects(
      learner.learn(FACE, {
        steps: 50, seed: 2, signal: ac.signal,
        onProgress: (p) => {
          seen.push(p);
          if (p.step === 2) ac.abort();
        },
      }),
      { code: 'E_ABORTED' },
    );
    t.equal(seen.length, 2);
    const p = seen[1]!;
    t.equal(p.steps, 50);
    t.ok(Number.isFinite(p.loss) && p.loss > 0 && p.lossDiff > 0 && p.lossAtt >= 0 && p.elapsedMs >= 0);
    t.ok(Math.abs(p.loss - (p.lossDiff + 0.003 * p.lossAtt)) <= 1e-6 * p.loss, 'loss = lossDiff + λ·lossAtt');
    const pre = new AbortController();
    pre.abort();
    await t.rejects(learner.learn(FACE, { steps: 1, signal: pre.signal }), { code: 'E_ABORTED' });
  });

  t.test('bad input', async (t) => {
    await t.rejects(learner.learn(undefined as unknown as string, { steps: 1 }), { code: 'E_ARGUMENT' });
    await t.rejects(learner.learn(Buffer.from('not an image'), { steps: 1 }), { code: 'E_ARGUMENT' });
    await t.rejects(learner.learn(fixture('faces/missing.png'), { steps: 1 }), { code: 'E_NOT_FOUND' });
    const tiny = { width: 32, height: 32, channels: 3 as const, data: new Uint8Array(32 * 32 * 3).fill(128) };
    await t.rejects(learner.learn(tiny, { steps: 1 }), { code: 'E_SHAPE' });
    for (const o of [{ steps: 0 }, { steps: 1.5 }, { lr: NaN }, { lr: -1 }, { lr: 0 }, { lambda: NaN }, { lambda: -0.1 }, { stages: 0 }, { init: 'a photo' }, { templates: ['no placeholder'] }, { seed: -1 }])
      await t.rejects(learner.learn(FACE, { steps: 1, ...o }), { code: 'E_ARGUMENT' }, JSON.stringify(o));
  });
});
