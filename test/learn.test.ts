// SeFi-IDE per-identity learning on the tiny model: the one-call learning step (generator, text
// encoder, UNet, loss, backward and Adam on the device) against its own gradients and the host
// Adam, the generator's gradients against finite differences of the loss, a short seeded run that
// lowers the loss on a held batch and is deterministic, checkpoint/resume equal to an uninterrupted
// run bit for bit, the learned identity round-tripping through a file into generate(), progress,
// abort and bad input.
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { Identity } from '../lib/identity/identity.js';
import { expandPrompt } from '../lib/identity/placeholders.js';
import { IdentityLearner, attentionLossLayersOf } from '../lib/learn/learn.js';
import { TokenTrainer, type LearnSample } from '../lib/learn/token-trainer.js';
import { Adam } from '../lib/optim/adam.js';
import { addNoise } from '../lib/sched/betas.js';
import { DDIMScheduler } from '../lib/sched/ddim.js';
import { randn } from '../lib/sched/random.js';
import { fixture, TINY_SD } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

// A drawn face, which the face detector does not take for one: these tests learn from the whole
// photo (face: false); cropping around a detected face is in faces-prepare.test.ts.
const FACE = fixture('faces/face-a.png');

t.test('the one-call learning step: tokens start at the init word, the device step equals its gradients + the host Adam, gradients match finite differences', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const rt = engine.runtime;
  const S = 3;
  const e0 = await rt.wordEmbedding('person');
  const D = e0.length;
  const base = { init: e0, stages: S, lambda: 0.5, layers: attentionLossLayersOf(rt.configs.unet), seed: 3 };
  // One sample: 'a photo of <id>' at timestep 700 (stage 2 of 3), random z0 and noise.
  const dummy = new Identity({ k: new Float32Array(D), stages: 1, words: 1, dim: D, method: 'custom' });
  const e = expandPrompt(rt.tokenizer, 'a photo of <id>', new Map([['id', dummy]]));
  using reference = await rt.runText([rt.tokenizer.encode('a photo of person').ids]);
  const shape = [1, 4, 16, 16];
  const tStep = 700;
  const noise = randn(2, 1024);
  const sample = (): LearnSample => ({
    ids: e.ids, slots: e.slots.map((s) => (s < 0 ? -1 : 2 + s)), reference, t: tStep, noise, shape,
    zt: addNoise(DDIMScheduler.fromConfig(rt.configs.scheduler).alphasCumprod, randn(1, 1024), noise, [tStep]),
  });

  using dev = new TokenTrainer(rt, base);
  t.ok(dev.parameterCount > 6 * D * D, `${dev.parameterCount} generator weights`);
  const tok = await dev.tokens();
  t.ok([...tok.k, ...tok.v].every((x, i) => x === e0[i % D]), 'every K and V token starts exactly at the init embedding');

  // The reference: the gradients of the host-stepped weights (the grads program), then the host Adam.
  const host = new Map([...dev.hostWeights()].map(([n, w]) => [n, w.data]));
  const adam = new Adam<Float32Array>();
  for (const [i, lr] of [1e-2, 2e-2, 1e-2].entries()) {
    using ref = new TokenTrainer(rt, { ...base, weights: new Map([...host].map(([n, d]) => [n, { shape: [d.length], data: d.slice() }])) });
    const r = await ref.lossAndGrads(sample());
    // The zero output weights open the paths one step at a time (generator.ts).
    const still = [...r.grads].filter(([, g]) => g.every((x) => x === 0)).map(([n]) => n.replace(/^attn\d\./, 'attn*.')).filter((n, k, a) => a.indexOf(n) === k);
    t.same(still, [...(i < 2 ? ['attn*.norm.weight', 'attn*.norm.bias'] : []), 'attn*.to_q.weight', 'attn*.to_q.bias', 'attn*.to_k.weight', 'attn*.to_k.bias',
      ...(i < 2 ? ['attn*.to_v.weight', 'attn*.to_v.bias'] : []), ...(i < 1 ? ['attn*.to_out.weight', 'attn*.to_out.bias'] : []),
      ...(i < 2 ? ['ff.norm.weight', 'ff.norm.bias', 'ff.fc1.weight', 'ff.fc1.bias'] : []), ...(i < 1 ? ['ff.fc2.weight', 'ff.fc2.bias'] : [])],
    `step ${i + 1}: the weights without a gradient`);
    adam.step(host, r.grads, lr);
    const d = await dev.trainStep(sample(), lr);
    t.ok(Math.abs(d.loss - r.loss) <= 1e-6 * r.loss, `step ${i + 1}: loss ${d.loss} vs ${r.loss}`);
    t.ok(Math.abs(d.loss - (d.lossDiff + 0.5 * d.lossAtt)) <= 1e-6 * d.loss, 'loss = lossDiff + λ·lossAtt');
    let worst = 0, worstName = '';
    for (const [n, w] of dev.hostWeights()) {
      const err = relL2(w.data, host.get(n)!);
      if (err > worst) [worst, worstName] = [err, n];
    }
    // Step 1 starts from the same weights and gradients, yet the final map starts at zero, so the
    // weight IS the update, and the device's float32 coefficients move it: 1 − β2 taken from β2
    // rounded to float32 is (1 − β2)·(1 − 1.29e-5), so √v̂ is 6.4e-6 smaller and the update that
    // much larger (measured 6.7e-6). Later steps start from weights that differ in the last bits.
    const tol = i === 0 ? 1e-5 : 1e-4;
    t.ok(worst <= tol, `step ${i + 1}: weights, device step vs host Adam: worst rel L2 ${worst.toExponential(2)} (${worstName}; ≤ ${tol})`);
  }
  t.equal(dev.optimizerState().t, 3, 'step count');
  const after = await dev.tokens();
  t.ok(after.k.slice(0, 2 * D).every((x, i) => x === e0[i % D]), 'the stages the step did not fall in keep their tokens');
  t.ok(after.k.slice(2 * D).some((x, i) => x !== e0[i % D]), "the step's stage moved");

  // Finite differences of the float32 loss against the gradient, at the largest-gradient entry of
  // weights across the generator (every rule on its path: layer norm, linear, attention, GELU).
  const w0 = dev.hostWeights();
  const r0 = await dev.lossAndGrads(sample());
  for (const name of ['attn0.norm.weight', 'attn1.to_v.weight', 'ff.fc1.weight', 'ff.fc2.bias', 'out.weight']) {
    const g = r0.grads.get(name)!;
    const j = g.reduce((b, x, k) => (Math.abs(x) > Math.abs(g[b]!) ? k : b), 0);
    const h = 1e-2 * Math.max(1e-2, Math.abs(w0.get(name)!.data[j]!));
    const lossAt = async (delta: number) => {
      const w = new Map([...w0].map(([n, x]) => [n, { shape: x.shape, data: x.data.slice() }]));
      w.get(name)!.data[j]! += delta;
      using tr = new TokenTrainer(rt, { ...base, weights: w });
      return (await tr.lossAndGrads(sample())).loss;
    };
    const fd = ((await lossAt(h)) - (await lossAt(-h))) / (2 * h);
    const err = Math.abs(fd - g[j]!) / Math.abs(g[j]!);
    t.ok(err < 1e-2, `${name}[${j}]: autodiff ${g[j]!.toExponential(3)}, finite differences ${fd.toExponential(3)} (rel ${err.toExponential(2)})`);
  }

  // A NaN in the sample: E_NUMERIC, and neither the weights nor the step count move.
  const bad = sample();
  bad.zt[5] = NaN;
  await t.rejects(dev.trainStep(bad, 1e-2), { code: 'E_NUMERIC' });
  t.ok([...dev.hostWeights()].every(([n, w]) => relL2(w.data, w0.get(n)!.data) === 0), 'the weights are unchanged');
  t.equal(dev.optimizerState().t, 3, 'the step count is unchanged');
});

t.test('learning on the tiny model', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  t.equal(engine.runtime.nativeSize, 128);
  const learner = new IdentityLearner(engine.runtime);

  t.test('30 seeded steps lower the held-batch loss and are deterministic', async (t) => {
    const progress: number[] = [];
    const opts = { steps: 30, seed: 11, lr: 0.01, face: false as const, onProgress: (p: { step: number }) => progress.push(p.step) };
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
    const before = await learner.loss(FACE, await learner.initialIdentity(), { count: 12, seed: 5, face: false });
    const after = await learner.loss(FACE, a, { count: 12, seed: 5, face: false });
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

  t.test('checkpoint and resume: N steps + resume + M steps == N + M steps, bit for bit; an abort keeps a checkpoint', async (t) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'idforge-learn-ck-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const base = { seed: 4, lr: 0.01, face: false as const };
    const run = async (o: Parameters<IdentityLearner['learn']>[1]) => {
      const losses: number[] = [];
      const steps: number[] = [];
      const id = await learner.learn(FACE, { ...base, ...o, onProgress: (p) => { losses.push(p.loss); steps.push(p.step); o.onProgress?.(p); } });
      return { id, losses, steps };
    };
    const same = (a: Identity, b: Identity) => Buffer.from(a.kData.buffer).equals(Buffer.from(b.kData.buffer)) && Buffer.from(a.vData.buffer).equals(Buffer.from(b.vData.buffer));
    const whole = await run({ steps: 6 });

    const B = path.join(dir, 'b');
    const b1 = await run({ steps: 3, checkpoint: B });
    t.equal(JSON.parse(readFileSync(path.join(B, 'checkpoint', 'state.json'), 'utf8')).step, 3, 'a checkpoint at the end');
    t.ok(existsSync(path.join(B, 'cache', 'latents.safetensors')), 'the latent cache');
    const saved = Identity.load(path.join(B, 'checkpoint', 'identity.safetensors'), { vocabHash: engine.tokenizer.vocabHash });
    t.ok(same(saved, b1.id), "the checkpoint's identity is what the run returned");
    // Resumed without a seed: the checkpoint's.
    const b2 = await run({ steps: 6, checkpoint: B, seed: undefined });
    t.same(b2.steps, [4, 5, 6], 'resumed at step 4');
    t.same([...b1.losses, ...b2.losses], whole.losses, 'the same losses step by step');
    t.ok(same(b2.id, whole.id), '3 steps + resume + 3 steps == 6 steps: the same K and V tokens, bit for bit');

    // An abort after step 2 (checkpoints every 100): the steps done are kept, and resuming to 3
    // gives what 3 steps give.
    const C = path.join(dir, 'c');
    const ac = new AbortController();
    await t.rejects(run({ steps: 6, checkpoint: C, signal: ac.signal, onProgress: (p) => p.step === 2 && ac.abort() }), { code: 'E_ABORTED' });
    t.equal(JSON.parse(readFileSync(path.join(C, 'checkpoint', 'state.json'), 'utf8')).step, 2, 'the abort wrote a checkpoint of the 2 steps done');
    const c2 = await run({ steps: 3, checkpoint: C });
    t.same(c2.steps, [3]);
    t.ok(same(c2.id, b1.id), '2 steps + abort + resume to 3 == 3 steps');

    // A checkpoint of other options or another seed is refused; resume: false starts afresh; a corrupt one is named.
    await t.rejects(learner.learn(FACE, { ...base, steps: 6, checkpoint: B, lr: 0.02 }), { code: 'E_ARGUMENT', message: /other options/ });
    await t.rejects(learner.learn(FACE, { ...base, steps: 6, checkpoint: B, seed: 5 }), { code: 'E_ARGUMENT', message: /other options/ });
    const fresh = await run({ steps: 1, checkpoint: C, resume: false });
    t.same(fresh.steps, [1], 'resume: false starts at step 1');
    t.equal(fresh.losses[0], whole.losses[0]);
    writeFileSync(path.join(C, 'checkpoint', 'optimizer.safetensors'), 'not a safetensors file');
    await t.rejects(learner.learn(FACE, { ...base, steps: 2, checkpoint: C }), { code: 'E_MODEL_FORMAT', message: /corrupt/ });
  });

  t.test('progress reports and abort', async (t) => {
    const ac = new AbortController();
    const seen: { step: number; steps: number; loss: number; lossDiff: number; lossAtt: number; elapsedMs: number }[] = [];
    await t.rejects(
      learner.learn(FACE, {
        steps: 50, seed: 2, signal: ac.signal, face: false,
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
    for (const o of [{ steps: 0 }, { steps: 1.5 }, { lr: NaN }, { lr: -1 }, { lr: 0 }, { lambda: NaN }, { lambda: -0.1 }, { stages: 0 }, { init: 'a photo' }, { templates: ['no placeholder'] }, { seed: -1 },
      { checkpoint: '' }, { checkpoint: 3 as unknown as string }, { checkpointEvery: 0 }, { resume: 'yes' as unknown as boolean }])
      await t.rejects(learner.learn(FACE, { steps: 1, ...o }), { code: 'E_ARGUMENT' }, JSON.stringify(o));
  });
});
