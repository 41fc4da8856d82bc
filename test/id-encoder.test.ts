import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { parseIdEncoderConfig } from '../lib/dreamidentity/config.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { Identity } from '../lib/identity/identity.js';
import { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { GoldenFile, TINY_ID, fixture } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

// On every test backend (test/helpers/backends.ts): the CPU, and CUDA in float32 and float16 where
// a GPU is usable.
for (const b of testBackends()) {
  t.test(`golden: image → tap features and words on ${b.name}`, { skip: b.skip }, async (t) => {
    const TOL = b.tol.golden;
    const g = new GoldenFile('id_encoder');
    const enc = await IdEncoder.load(TINY_ID, { device: b.device, dtype: b.dtype });
    t.teardown(() => { enc.dispose(); g.close(); });
    const img = g.tensor('image'); // host float32: encodeFeatures moves it
    const f = await enc.encodeFeatures(img);
    const eTap = relL2(f.taps, g.f32('tap_features'));
    const eWord = relL2(f.words, g.f32('words'));
    t.comment(`rel L2: taps ${eTap.toExponential(2)}, words ${eWord.toExponential(2)}`);
    t.ok(eTap <= TOL, `tap_features rel L2 ${eTap}`);
    t.ok(eWord <= TOL, `words rel L2 ${eWord}`);
    t.equal(f.batch, 2);
    // one batch element at a time gives the same words (a second program, batch 1)
    const one = Tensor.from(g.f32('image').subarray(0, 3 * 112 * 112), [1, 3, 112, 112]);
    const f1 = await enc.encodeFeatures(one);
    t.ok(relL2(f1.words, g.f32('words').subarray(0, 4 * 32)) <= TOL, 'batch-1 program agrees');
    const ids = await enc.encode(img);
    t.equal(ids.length, 2);
    t.ok(ids[0] instanceof Identity);
    t.same([ids[0]!.stages, ids[0]!.words, ids[0]!.dim, ids[0]!.method], [1, 4, 32, 'dreamidentity']);
    t.ok(ids[0]!.kvShared);
    t.ok(relL2(ids[1]!.kFlat(0), g.f32('words').subarray(4 * 32)) <= TOL);
    one.dispose();
    img.dispose();
  });
}

const FACES = fixture('faces');
const LANDMARKS = JSON.parse(fs.readFileSync(`${FACES}/landmarks.json`, 'utf8')) as Record<string, [number, number][]>;

t.test('encode: image files are decoded, aligned and encoded deterministically', async (t) => {
  const enc = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  t.teardown(() => enc.dispose());
  const warnings: string[] = [];
  const a1 = await enc.encode(`${FACES}/face-a.png`, { landmarks: LANDMARKS['face-a']!, name: 'a', onWarning: (w) => warnings.push(w) });
  const a2 = await enc.encode(fs.readFileSync(`${FACES}/face-a.png`), { landmarks: LANDMARKS['face-a']! });
  const b = await enc.encode(`${FACES}/face-b.png`, { landmarks: LANDMARKS['face-b']! });
  t.same(warnings, []);
  t.same([a1.stages, a1.words, a1.dim, a1.method, a1.name], [1, 4, 32, 'dreamidentity', 'a']);
  t.ok(a1.kvShared);
  t.same(Array.from(a1.kData), Array.from(a2.kData), 'same face twice → same identity');
  const dAB = relL2(b.kData, a1.kData);
  t.ok(dAB > 1e-3, `a different face gives a different identity (rel L2 ${dAB.toExponential(2)})`);
  // the EXIF-rotated JPEG of face-a encodes close to the upright JPEG, far from face-b
  const up = await enc.encode(`${FACES}/face-a.jpg`, { landmarks: LANDMARKS['face-a.jpg']! });
  const rot = await enc.encode(`${FACES}/face-a-exif6.jpg`, { landmarks: LANDMARKS['face-a-exif6.jpg']! });
  const dRot = relL2(rot.kData, up.kData);
  t.ok(dRot < dAB / 5, `EXIF orientation applied (rel L2 ${dRot.toExponential(2)} vs ${dAB.toExponential(2)} between faces)`);
  for (const x of a1.kData) if (!Number.isFinite(x)) t.fail('non-finite word');
  // the same pixels as a Tensor give the same words
  const { prepareFace } = await import('../lib/identity/face.js');
  const p = await prepareFace(`${FACES}/face-a.png`, { landmarks: LANDMARKS['face-a']! });
  const x = Tensor.from(enc.normalize(p.image), [1, 3, 112, 112]);
  const [fromTensor] = await enc.encode(x);
  x.dispose();
  t.same(Array.from(fromTensor!.kData), Array.from(a1.kData));
  // 'centre': centre crop, with the warning passed on (the default, 'detect', is in faces-prepare.test.ts)
  const c = await enc.encode(`${FACES}/face-a.png`, { landmarks: 'centre', onWarning: (w) => warnings.push(w) });
  t.match(warnings, [/no landmarks: centre crop/]);
  t.equal(c.words, 4);
});

t.test('encoder: argument and model errors', async (t) => {
  const enc = await IdEncoder.load(TINY_ID);
  t.equal(enc.words, 4);
  t.equal(enc.textDim, 32);
  const bad = Tensor.zeros([1, 3, 64, 64]);
  await t.rejects(enc.encodeFeatures(bad), { code: 'E_SHAPE', message: /\[B, 3, 112, 112\]/ });
  bad.dispose();
  t.throws(() => enc.normalize({ width: 10, height: 10, channels: 3, data: new Uint8Array(300) }), { code: 'E_SHAPE' });
  await t.rejects(enc.encode(`${FACES}/missing.png`), { code: 'E_NOT_FOUND' });
  enc.dispose();
  t.ok(enc.disposed);
  const x = Tensor.zeros([1, 3, 112, 112]);
  await t.rejects(enc.encodeFeatures(x), { code: 'E_DISPOSED' });
  x.dispose();
  enc.dispose(); // twice is fine

  await t.rejects(IdEncoder.load(fixture('nope')), { code: 'E_NOT_FOUND' });
  await t.rejects(IdEncoder.load(TINY_ID, { device: 'tpu' as 'cpu' }), { code: 'E_ARGUMENT' });
  await t.rejects(IdEncoder.load(TINY_ID, { device: 'cpu', dtype: 'float16' }), { code: 'E_ARGUMENT', message: /float32 only/ });
  await t.rejects(IdEncoder.load(TINY_ID, { dtype: 'float64' as 'float32' }), { code: 'E_ARGUMENT' });

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-idenc-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const cfg = JSON.parse(fs.readFileSync(`${TINY_ID}/config.json`, 'utf8')) as Record<string, unknown>;
  const variant = (name: string, patch: Record<string, unknown> | string, model = true) => {
    const d = path.join(tmp, name);
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'config.json'), typeof patch === 'string' ? patch : JSON.stringify({ ...cfg, ...patch }));
    if (model) fs.copyFileSync(`${TINY_ID}/model.safetensors`, path.join(d, 'model.safetensors'));
    return d;
  };
  await t.rejects(IdEncoder.load(variant('json', '{nope')), { code: 'E_MODEL_FORMAT', message: /config\.json.*JSON/ });
  await t.rejects(IdEncoder.load(variant('arch', { architecture: 'vit' })), { code: 'E_MODEL_FORMAT', message: /architecture/ });
  await t.rejects(IdEncoder.load(variant('width', { hidden_size: 96 })), { code: 'E_MODEL_FORMAT', message: /shape/ });
  await t.rejects(IdEncoder.load(variant('layers', { num_layers: 7, taps: [2] })), { code: 'E_MODEL_FORMAT', message: /blocks\.6.*missing/ });
  await t.rejects(IdEncoder.load(variant('taps', { taps: [2, 9] })), { code: 'E_MODEL_FORMAT', message: /tap 9/ });
  await t.rejects(IdEncoder.load(variant('act', { hidden_act: 'relu' })), { code: 'E_MODEL_FORMAT', message: /hidden_act/ });
  await t.rejects(IdEncoder.load(variant('patch', { patch_size: 15 })), { code: 'E_MODEL_FORMAT', message: /multiple of patch_size/ });
  await t.rejects(IdEncoder.load(variant('norm', { input_normalization: { mean: [0.5], std: [0.5, 0.5, 0.5] } })), { code: 'E_MODEL_FORMAT', message: /mean/ });
  await t.rejects(IdEncoder.load(variant('nomodel', {}, false)), { code: 'E_NOT_FOUND' });
  const nocfg = path.join(tmp, 'nocfg');
  fs.mkdirSync(nocfg);
  await t.rejects(IdEncoder.load(nocfg), { code: 'E_NOT_FOUND', message: /config\.json/ });
  // fewer taps than projectors is fine; the taps decide the words
  const two = await IdEncoder.load(variant('two', { taps: [2, 4] }));
  t.equal(two.words, 2);
  two.dispose();
  t.throws(() => parseIdEncoderConfig([]), { code: 'E_MODEL_FORMAT' });
});
