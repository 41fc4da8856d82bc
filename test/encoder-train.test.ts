// DreamIdentity encoder training (issue #13): the training step through the frozen tiny SD
// against the reference golden (loss and the gradient of EVERY encoder weight) on every test
// backend (test/helpers/backends.ts; float16 engines are refused), the train scopes, and typed
// errors for bad input.
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { Adam } from '../lib/optim/adam.js';
import { EncoderTrainer } from '../lib/dreamidentity/encoder-trainer.js';
import { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { GoldenFile, TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';
import { readFileSync } from 'node:fs';

const cases = JSON.parse(readFileSync(fixture('golden/cases.json'), 'utf8')).encoder_train as { prompts: string[]; reg_weight: number };

for (const b of testBackends()) {
  t.test(`encoder training step vs the golden (loss and every gradient) on ${b.name}`, { skip: b.skip }, async (t) => {
    const TOL = b.tol.grad;
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    // The trainer reads the encoder's host weights; the step runs on the engine's backend.
    const encoder = await IdEncoder.load(TINY_ID, { device: 'cpu' });
    const gf = new GoldenFile('encoder_train');
    t.teardown(() => { engine.dispose(); encoder.dispose(); gf.close(); });
    if (b.dtype === 'float16') {
      t.throws(() => new EncoderTrainer({ engine, encoder }), { code: 'E_ARGUMENT', message: /float32/ });
      return;
    }
    using trainer = new EncoderTrainer({ engine, encoder, regWeight: cases.reg_weight });
    using faces = gf.tensor('face');
    using latents = gf.tensor('z0');
    using noise = gf.tensor('noise');
    const timesteps = [...gf.i32('timesteps')];
    const zt = trainer.addNoise(latents.toFloat32(), noise.toFloat32(), timesteps);
    t.ok(relL2(zt, gf.f32('z_t')) <= 1e-6, `z_t (DDPM add_noise) rel L2 ${relL2(zt, gf.f32('z_t')).toExponential(2)}`);
    const r = await trainer.lossAndGrads({ faces, prompts: cases.prompts, latents, noise, timesteps });
    const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);
    t.ok(rel(r.loss, gf.f32('loss')[0]!) <= TOL, `loss ${r.loss} vs ${gf.f32('loss')[0]} (rel ${rel(r.loss, gf.f32('loss')[0]!).toExponential(2)})`);
    t.ok(rel(r.lossDiff, gf.f32('loss_diff')[0]!) <= TOL, `loss_diff rel ${rel(r.lossDiff, gf.f32('loss_diff')[0]!).toExponential(2)}`);
    t.ok(rel(r.lossReg, gf.f32('loss_reg')[0]!) <= TOL, `loss_reg rel ${rel(r.lossReg, gf.f32('loss_reg')[0]!).toExponential(2)}`);
    const names = gf.file.names().filter((n) => n.startsWith('grad:')).map((n) => n.slice(5));
    t.equal(r.grads.size, names.length, `a gradient for every one of the ${names.length} encoder weights`);
    let worst = 0;
    let worstName = '';
    for (const n of names) {
      const d = r.grads.get(n);
      if (!d) {
        t.fail(`no gradient for ${n}`);
        continue;
      }
      const e = relL2(d.toFloat32(), gf.f32(`grad:${n}`));
      if (!(e <= worst)) [worst, worstName] = [e, n];
      t.ok(e <= TOL, `grad:${n} rel L2 ${e.toExponential(2)}`);
      d.dispose();
    }
    t.comment(`worst gradient: ${worstName} rel L2 ${worst.toExponential(2)}`);
  });
}

t.test('train scopes: projectors only, last N blocks', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  const encoder = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  t.teardown(() => { engine.dispose(); encoder.dispose(); });
  using p = new EncoderTrainer({ engine, encoder, train: 'projectors' });
  t.ok([...p.trainable].every((n) => n.startsWith('projector.')) && p.trainable.size === 16, 'projectors: 16 tensors');
  using l = new EncoderTrainer({ engine, encoder, train: { lastBlocks: 2 } });
  t.ok(l.trainable.has('blocks.5.mlp.fc1.weight') && l.trainable.has('blocks.4.norm1.bias') && !l.trainable.has('blocks.3.norm1.bias') && l.trainable.has('norm.weight'), 'last 2 blocks + final norm + projectors');
  t.throws(() => new EncoderTrainer({ engine, encoder, train: { lastBlocks: 7 } }), { code: 'E_ARGUMENT' });
});

// The training step on the device (one native call: gradients, global-norm clipping, ADAM_STEP in
// place) against the same step done on the host (lossAndGrads, clipping and the host Adam), on
// every float32 test backend (float16 engines are refused, checked above).
for (const b of testBackends().filter((b) => b.dtype === 'float32')) {
  t.test(`trainStep on ${b.name}: the in-place device Adam equals the host Adam, and a NaN step changes nothing`, { skip: b.skip }, async (t) => {
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    const encoder = await IdEncoder.load(TINY_ID, { device: 'cpu' });
    const gf = new GoldenFile('encoder_train');
    t.teardown(() => { engine.dispose(); encoder.dispose(); gf.close(); });
    using dev = new EncoderTrainer({ engine, encoder, regWeight: cases.reg_weight });
    using faces = gf.tensor('face');
    using latents = gf.tensor('z0');
    using noise = gf.tensor('noise');
    const batch = { faces, prompts: cases.prompts, latents, noise, timesteps: [...gf.i32('timesteps')] };
    const adam = new Adam<Float32Array>();
    const weights = encoder.hostWeights();
    const host = new Map([...weights].map(([n, w]) => [n, w.data.slice()]));
    const lrs = [1e-3, 3e-3, 2e-3];
    // Clip at 0.4: the gradient norms here are 0.61, 0.44, 0.31, so the first two steps are clipped.
    for (const [i, lr] of lrs.entries()) {
      // The reference: a trainer holding the host-stepped weights, for their loss and gradients.
      using ref = new EncoderTrainer({ engine, encoder: { config: encoder.config, weights: new Map([...weights].map(([n, w]) => [n, { shape: w.shape, data: host.get(n)! }])) }, regWeight: cases.reg_weight });
      const r = await ref.step(batch);
      let sq = 0;
      for (const g of r.grads.values()) for (const x of g) sq += x * x;
      const norm = Math.sqrt(sq);
      if (norm > 0.4) for (const g of r.grads.values()) for (let k = 0; k < g.length; k++) g[k]! *= 0.4 / norm;
      adam.step(host, r.grads, lr);
      const d = await dev.trainStep(batch, { lr, clipNorm: 0.4 });
      t.ok(Math.abs(d.loss - r.loss) <= 1e-6 * Math.abs(r.loss), `step ${i + 1}: loss ${d.loss} vs ${r.loss}`);
      t.ok(Math.abs(d.gradNorm - norm) <= 1e-4 * norm, `step ${i + 1}: gradient norm ${d.gradNorm.toFixed(5)} vs ${norm.toFixed(5)}`);
      // Step 1 starts from the same weights, so the gradients are the same: the updates must agree
      // to float32 rounding. Later steps see weights that differ in the last bits, and Adam turns
      // the pure-rounding-noise gradients (a key bias has none in exact arithmetic: softmax is
      // invariant to it) into ±lr steps, so a few such elements part: the bound is looser.
      const got = dev.hostWeights();
      let worst = 0, worstName = '';
      for (const [n, a] of host) {
        const e = relL2(got.get(n)!.data, a);
        if (e > worst) [worst, worstName] = [e, n];
      }
      // (On CUDA the two programs may reduce in other orders, so even step 1 can flip a few signs.)
      const tol = i === 0 && b.device === 'cpu' ? 1e-6 : 2e-4;
      t.ok(worst <= tol, `step ${i + 1}: weights, device vs host Adam: worst rel L2 ${worst.toExponential(2)} (${worstName}; ≤ ${tol})`);
    }
    const st = dev.optimizerState();
    t.equal(st.t, 3, 'step count');
    t.ok(relL2(st.m.get('projector.0.fc1.weight')!, adam.m.get('projector.0.fc1.weight')!) <= 1e-4, 'first moments match the host Adam');

    // A NaN in the batch: E_NUMERIC, and neither the weights nor the moments nor the step count move.
    const before = new Map([...dev.hostWeights()].map(([n, w]) => [n, w.data.slice()]));
    const nan = noise.toFloat32();
    nan[5] = NaN;
    using bad = Tensor.from(nan, noise.shape);
    await t.rejects(dev.trainStep({ ...batch, noise: bad }, { lr: 1e-3, clipNorm: 1 }), { code: 'E_NUMERIC' });
    const after = dev.hostWeights();
    t.ok([...before].every(([n, a]) => relL2(after.get(n)!.data, a) === 0), 'the weights are unchanged');
    t.equal(dev.optimizerState().t, 3, 'the step count is unchanged');
    t.ok(relL2(dev.optimizerState().m.get('projector.0.fc1.weight')!, st.m.get('projector.0.fc1.weight')!) === 0, 'the moments are unchanged');

    // Bad options and state.
    await t.rejects(dev.trainStep(batch, { lr: -1, clipNorm: 1 }), { code: 'E_ARGUMENT' });
    await t.rejects(dev.trainStep(batch, { lr: 1e-3, clipNorm: NaN }), { code: 'E_ARGUMENT' });
    t.throws(() => dev.setOptimizerState({ t: 1, m: new Map([['nope', new Float32Array(1)]]), v: new Map() }), { code: 'E_MODEL_FORMAT' }, 'a moment of an unknown weight');
    t.throws(() => dev.setOptimizerState({ t: 1, m: new Map([['projector.0.fc1.weight', new Float32Array(3)]]), v: new Map() }), { code: 'E_MODEL_FORMAT' }, 'a moment of the wrong size');
  });
}

t.test('bad input: typed errors', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  const encoder = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  t.teardown(() => { engine.dispose(); encoder.dispose(); });
  const wrongWidth = { config: { ...encoder.config, textDim: 48 }, weights: encoder.hostWeights() };
  t.throws(() => new EncoderTrainer({ engine, encoder: wrongWidth }), { code: 'E_SHAPE' }, 'text width differs from the model');
  t.throws(() => new EncoderTrainer({ engine, encoder, regWeight: -1 }), { code: 'E_ARGUMENT' });
  using trainer = new EncoderTrainer({ engine, encoder, train: 'projectors' });
  using faces = Tensor.zeros([1, 3, 112, 112]);
  using z = Tensor.zeros([1, 4, 16, 16]);
  await t.rejects(trainer.lossAndGrads({ faces, prompts: ['a photo of a chef'], latents: z, noise: z, timesteps: [10] }), { code: 'E_IDENTITY' }, 'prompt without <id>');
  await t.rejects(trainer.lossAndGrads({ faces, prompts: ['a photo of <id>'], latents: z, noise: z, timesteps: [1000] }), { code: 'E_ARGUMENT' }, 'timestep out of range');
  using small = Tensor.zeros([1, 3, 64, 64]);
  await t.rejects(trainer.lossAndGrads({ faces: small, prompts: ['a photo of <id>'], latents: z, noise: z, timesteps: [1] }), { code: 'E_SHAPE' }, 'face of the wrong size');
});

t.test('bench --train-encoder on the tiny models', async (t) => {
  const { benchTrainEncoder, formatTrainReport, randomIdEncoderWeights, vitB16Config } = await import('../lib/bench/train-encoder.js');
  const { idEncoderLayout } = await import('../lib/dreamidentity/encoder-weights.js');
  const r = await benchTrainEncoder(['--train-encoder', '--model', TINY_SD, '--encoder', TINY_ID, '--size', '128', '--batch', '1,2', '--steps', '1', '--warmup', '0'], () => {});
  t.same(r.rows.map((x) => x.batch), [1, 2]);
  t.ok(r.rows.every((x) => x.stepMs.median > 0 && x.plannedActivationBytes > 0), 'step times and planned activation peaks');
  t.ok(r.rows[1]!.plannedActivationBytes > r.rows[0]!.plannedActivationBytes, 'batch 2 plans more activations');
  t.match(formatTrainReport(r), /batch \| first step ms/);
  // The random SD-1.5-shaped encoder has the layout IdEncoder checks (a small one, built for real).
  const c = { ...vitB16Config(32), hiddenSize: 16, numHeads: 2, mlpHidden: 64, numLayers: 9, projectorHidden: 8 };
  using e = IdEncoder.fromWeights(c, randomIdEncoderWeights(c, 1), { device: 'cpu' });
  t.equal(e.words, 4);
  t.equal(idEncoderLayout(vitB16Config()).reduce((n, x) => n + x.shape.reduce((a, b) => a * b, 1), 0) > 85e6, true, 'ViT-B/16 + projectors: > 85 M parameters');
});
