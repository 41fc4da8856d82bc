// DreamIdentity encoder training (issue #13 parts 3 and 5): IdEncoder.create from a ViT backbone
// + save/load; trainEncoder on one face photo for 30 steps (the held-batch loss falls), checkpoint/resume
// equal to an uninterrupted run, abort keeps the last checkpoint, typed errors.
import * as fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { SafetensorsFile } from '../lib/io/safetensors.js';
import { randn } from '../lib/sched/random.js';
import { Tensor } from '../lib/tensor.js';
import { EncoderTrainer } from '../lib/dreamidentity/encoder-trainer.js';
import { trainEncoder } from '../lib/dreamidentity/train.js';
import { TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-train-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const BACKBONE = path.join(TINY_ID, 'model.safetensors');
const createOpts = { backbone: BACKBONE, numHeads: 4, eps: 1e-5, taps: [2, 4, 6, 'final'] as (number | 'final')[], textDim: 32, projectorHidden: 32, device: 'cpu' as const };

t.test('IdEncoder.create from a face ViT backbone; save → load', async (t) => {
  using ref = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  using a = IdEncoder.create({ ...createOpts, seed: 7 });
  using b = IdEncoder.create({ ...createOpts, seed: 7 });
  using c = IdEncoder.create({ ...createOpts, seed: 8 });
  t.same(a.config, ref.config, 'config read from the backbone (image size, patch, width, layers, MLP) and the options');
  const wa = a.hostWeights(), wr = ref.hostWeights(), wb = b.hostWeights(), wc = c.hostWeights();
  t.ok([...wr.keys()].filter((n) => !n.startsWith('projector.')).every((n) => relL2(wa.get(n)!.data, wr.get(n)!.data) === 0), 'backbone weights taken as they are');
  t.same(wa.get('projector.0.fc1.weight')!.data, wb.get('projector.0.fc1.weight')!.data, 'same seed, same projectors');
  t.not(wa.get('projector.0.fc1.weight')!.data[0], wc.get('projector.0.fc1.weight')!.data[0], 'another seed, other projectors');
  using faces = Tensor.from(randn(3, 2 * 3 * 112 * 112), [2, 3, 112, 112]);
  const fa = await a.encodeFeatures(faces);
  const fr = await ref.encodeFeatures(faces);
  t.ok(relL2(fa.taps, fr.taps) < 1e-6, 'tap features equal the reference encoder (same backbone)');
  const dir = path.join(tmp, 'created');
  a.save(dir);
  using l = await IdEncoder.load(dir, { device: 'cpu' });
  t.same((await l.encodeFeatures(faces)).words, fa.words, 'save → load gives the same words');
  t.throws(() => IdEncoder.create({ ...createOpts, numHeads: undefined, seed: 1 }), { code: 'E_ARGUMENT' }, 'numHeads required without a config.json');
  t.throws(() => IdEncoder.create({ ...createOpts, backbone: path.join(tmp, 'nope.safetensors'), seed: 1 }), { code: 'E_NOT_FOUND' });
});

t.test('trainEncoder on one face', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const faces = path.join(tmp, 'faces');
  fs.mkdirSync(faces);
  fs.copyFileSync(fixture('faces/face-a.png'), path.join(faces, 'face-a.png'));
  // The face is a drawing (no detectable face): the encoder sees its centre square.
  const base = { engine, faces, steps: 30, lr: 3e-3, warmupSteps: 2, seed: 5, checkpointEvery: 15, align: 'centre' as const };

  // Held batch: 4 fixed (template, timestep, noise) samples of the face.
  const held = async (encoder: IdEncoder | { config: IdEncoder['config']; weights: ReturnType<IdEncoder['hostWeights']> }, cache: string) => {
    using tr = new EncoderTrainer({ engine, encoder });
    using st = SafetensorsFile.open(cache);
    const face = st.readFloat32('face:0');
    const mean = st.readFloat32('mean:0');
    using f = Tensor.from(Float32Array.from({ length: 4 * face.length }, (_, i) => face[i % face.length]!), [4, 3, 112, 112]);
    using z = Tensor.from(Float32Array.from({ length: 4 * mean.length }, (_, i) => mean[i % mean.length]! * 0.18215), [4, 4, 16, 16]);
    using n = Tensor.from(randn(99, 4 * mean.length), [4, 4, 16, 16]);
    return (await tr.step({ faces: f, prompts: ['a photo of <id>', 'a portrait of <id>', 'a photo of <id>', 'a close-up photo of <id>'], latents: z, noise: n, timesteps: [100, 300, 600, 900] })).loss;
  };

  const outA = path.join(tmp, 'a');
  const progress: number[] = [];
  using enc0 = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  const a = await trainEncoder({ ...base, encoder: enc0, out: outA, onProgress: (p) => progress.push(p.etaMs) });
  t.equal(progress.length, 30, 'progress every step');
  t.equal(progress.at(-1), 0, 'ETA 0 at the end');
  const cache = path.join(outA, 'cache', 'latents.safetensors');
  const before = await held(enc0, cache);
  using trained = await IdEncoder.load(a.encoderDir, { device: 'cpu' });
  const after = await held(trained, cache);
  t.ok(after < 0.9 * before, `held-batch loss falls clearly: ${before.toFixed(4)} → ${after.toFixed(4)}`);
  const id = await trained.encode(fixture('faces/face-a.png'), { landmarks: 'centre' });
  t.equal(id.words, 4, 'the result is a normal encoder (encode gives an identity)');

  // 15 steps, then resume to 30 == 30 uninterrupted (the same seed).
  const outB = path.join(tmp, 'b');
  const b1 = await trainEncoder({ ...base, encoder: TINY_ID, out: outB, steps: 15 });
  t.equal(b1.startStep, 0);
  const b2 = await trainEncoder({ ...base, encoder: TINY_ID, out: outB });
  t.equal(b2.startStep, 15, 'resumed from the step-15 checkpoint');
  using sa = SafetensorsFile.open(path.join(a.encoderDir, 'model.safetensors'));
  using sb = SafetensorsFile.open(path.join(b2.encoderDir, 'model.safetensors'));
  let worst = 0;
  for (const n of sa.names()) {
    const x = sa.readFloat32(n), y = sb.readFloat32(n);
    for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
  }
  t.ok(worst <= 1e-6, `15 + resume + 15 steps == 30 steps (max |Δw| ${worst.toExponential(2)})`);
  t.same(b1.losses.concat(b2.losses), a.losses, 'the same losses step by step');

  // Abort after step 4 of a run checkpointing every 3: the step-3 checkpoint stays intact.
  const outC = path.join(tmp, 'c');
  const ac = new AbortController();
  await t.rejects(trainEncoder({ ...base, encoder: TINY_ID, out: outC, checkpointEvery: 3, signal: ac.signal, onProgress: (p) => p.step === 4 && ac.abort() }), { code: 'E_ABORTED' });
  t.equal(JSON.parse(fs.readFileSync(path.join(outC, 'checkpoint', 'state.json'), 'utf8')).step, 3, 'the last checkpoint (step 3) is intact');
  using ck = await IdEncoder.load(path.join(outC, 'checkpoint', 'encoder'), { device: 'cpu' });
  t.equal(ck.words, 4, 'its encoder loads');

  // Bad input.
  fs.writeFileSync(path.join(outC, 'checkpoint', 'optimizer.safetensors'), 'not a safetensors file');
  await t.rejects(trainEncoder({ ...base, encoder: TINY_ID, out: outC }), { code: 'E_MODEL_FORMAT' }, 'a corrupt checkpoint');
  await t.rejects(trainEncoder({ ...base, encoder: TINY_ID, out: outB, seed: 6, steps: 13 }), { code: 'E_ARGUMENT' }, 'a checkpoint of other options');
  const empty = path.join(tmp, 'empty');
  fs.mkdirSync(empty);
  await t.rejects(trainEncoder({ ...base, encoder: TINY_ID, faces: empty, out: path.join(tmp, 'e') }), { code: 'E_ARGUMENT' }, 'an empty data folder');
  await t.rejects(trainEncoder({ ...base, encoder: TINY_ID, out: path.join(tmp, 'g'), align: 'detect' }), { code: 'E_NO_FACE' }, 'align detect: a photo without a face is named');
  await t.rejects(trainEncoder({ ...base, encoder: TINY_ID, out: path.join(tmp, 'h'), align: 'middle' as 'centre' }), { code: 'E_ARGUMENT' }, 'an unknown align');
  await t.rejects(trainEncoder({ ...base, encoder: TINY_ID, out: path.join(tmp, 'f'), templates: ['a photo of a chef'] }), { code: 'E_IDENTITY' }, 'a template without <id>');
});
