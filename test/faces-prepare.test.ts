// Face preparation with the face detector (lib/faces) on real photos: prepareFace({ landmarks:
// 'detect' }), the IdEncoder's default, and the square around the face that SeFi-IDE learns from.
import sharp from 'sharp';
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { FaceAnalyzer } from '../lib/faces/index.js';
import { packageDir } from '../lib/faces/tf.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { ARCFACE_TEMPLATE_112, applyTransform, centreCrop, cropAroundFace, decodeFace, estimateSimilarity, faceTemplate, prepareFace } from '../lib/identity/face.js';
import { prepareLearningImage } from '../lib/learn/learn.js';
import { fixture, TINY_ID, TINY_SD } from './helpers/fixtures.js';

const ASTRO = fixture('faces/astronaut.jpg');
const CAT = fixture('faces/chelsea.jpg');
// face-api's demo group photo (three faces), halved to 960×640 to keep to one detector pass
const GROUP = await sharp(`${packageDir('@vladmandic/face-api')}/demo/sample1.jpg`).resize(960).jpeg().toBuffer();
/** Hand-checked landmarks of the astronaut (see faces.test.ts). */
const ASTRO_HAND: [number, number][] = [[202.5, 101], [245, 103], [222.5, 127], [202.5, 140], [244, 141]];
const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((v, i) => v === b[i]);

const fa = await FaceAnalyzer.shared();

t.test("prepareFace({ landmarks: 'detect' }) aligns the detected face onto the template", async (t) => {
  const r = await prepareFace(ASTRO, { landmarks: 'detect' });
  t.same(r.warnings, []);
  t.ok(r.face && r.face.score > 0.9);
  t.same([r.image.width, r.image.height], [112, 112]);
  // the alignment agrees with the one the hand-checked points give: every point lands within 10% of
  // the template's inter-eye distance of where the hand alignment puts it
  const hand = estimateSimilarity(ASTRO_HAND, faceTemplate(112));
  const ied = ARCFACE_TEMPLATE_112[1]![0] - ARCFACE_TEMPLATE_112[0]![0];
  ASTRO_HAND.forEach((p, i) => {
    const [x, y] = applyTransform(r.transform!, p);
    const [hx, hy] = applyTransform(hand, p);
    const e = Math.hypot(x - hx, y - hy);
    t.ok(e < 0.1 * ied, `hand point ${i} lands ${e.toFixed(2)} px from where the hand alignment puts it`);
  });
  const explicit = await prepareFace(ASTRO, { landmarks: r.face!.landmarks });
  t.ok(same(explicit.image.data, r.image.data), 'same as passing the detected landmarks');

  await t.rejects(prepareFace(CAT, { landmarks: 'detect' }), { code: 'E_NO_FACE', message: /chelsea\.jpg/ });
  const fb = await prepareFace(CAT, { landmarks: 'detect', noFaceFallback: true });
  t.match(fb.warnings, [/no face found in .*chelsea\.jpg.*centre/]);
  t.ok(same(fb.image.data, (await prepareFace(CAT)).image.data), 'the fallback is the centre crop');

  const group = await fa.detect(GROUP);
  const g0 = await prepareFace(GROUP, { landmarks: 'detect', analyzer: fa });
  t.match(g0.warnings, [/3 faces found in the image buffer: using face 0 \(the largest\); pass faceIndex/]);
  t.same(g0.face!.box, group[0]!.box);
  const g2 = await prepareFace(GROUP, { landmarks: 'detect', faceIndex: 2 });
  t.same(g2.face!.box, group[2]!.box, 'faceIndex picks another face');
  await t.rejects(prepareFace(GROUP, { landmarks: 'detect', faceIndex: 3 }), { code: 'E_ARGUMENT', message: /out of range: 3 face/ });
  await t.rejects(prepareFace(ASTRO, { landmarks: 'detect', noFaceFallback: 'yes' as unknown as boolean }), { code: 'E_ARGUMENT' });
  await t.rejects(prepareFace(ASTRO, { landmarks: 'detect', analyzer: {} as FaceAnalyzer }), { code: 'E_ARGUMENT' });
});

t.test('IdEncoder.encode detects the face by default', async (t) => {
  const enc = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  t.teardown(() => enc.dispose());
  const warnings: string[] = [];
  const a = await enc.encode(ASTRO, { onWarning: (w) => warnings.push(w) });
  t.same(warnings, []);
  const [face] = await fa.detect(ASTRO);
  const b = await enc.encode(ASTRO, { landmarks: face!.landmarks });
  t.same(Array.from(a.kData), Array.from(b.kData), 'the default is the detected landmarks');
  const c = await enc.encode(ASTRO, { landmarks: 'centre' });
  t.notSame(Array.from(a.kData), Array.from(c.kData), "'centre' is the centre crop");
  await t.rejects(enc.encode(CAT), { code: 'E_NO_FACE', message: /chelsea\.jpg/ });
  const d = await enc.encode(CAT, { noFaceFallback: true, onWarning: (w) => warnings.push(w) });
  t.match(warnings, [/no face found/]);
  t.equal(d.words, 4);
});

t.test('learning crops a square around the detected face; other concepts and face: false use the whole photo', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const img = await decodeFace(ASTRO);
  const [face] = await fa.detect(img);
  const crop = await prepareLearningImage(engine.runtime, ASTRO);
  t.same([crop.width, crop.height], [128, 128]);
  t.ok(same(crop.data, (await cropAroundFace(img, face!, 128)).data), "init 'person' (the default): around the face");
  const centre = await centreCrop(img, 128);
  t.notOk(same(crop.data, centre.data));
  t.ok(same((await prepareLearningImage(engine.runtime, ASTRO, { init: 'dog' })).data, centre.data), "init 'dog': the whole photo");
  t.ok(same((await prepareLearningImage(engine.runtime, ASTRO, { face: false })).data, centre.data), 'face: false: the whole photo');
  // the crop holds the face, centred, about half the crop wide
  const [inCrop] = await fa.detect(crop);
  t.ok(inCrop, 'a face in the crop');
  const cx = (inCrop!.box[0] + inCrop!.box[2]) / 2, w = inCrop!.box[2] - inCrop!.box[0];
  t.ok(Math.abs(cx - 64) < 16 && w > 40 && w < 90, `face centre x ${cx.toFixed(1)}, width ${w.toFixed(1)} of 128`);
  await t.rejects(prepareLearningImage(engine.runtime, CAT), { code: 'E_NO_FACE', message: /chelsea\.jpg/ });
  t.ok(same((await prepareLearningImage(engine.runtime, CAT, { init: 'cat' })).data, (await centreCrop(await decodeFace(CAT), 128)).data), 'a cat learns from the whole photo');
  // end to end: the group photo warns through onWarning, and a face option picks the face
  const warnings: string[] = [];
  const id = await engine.learnIdentity(GROUP, { steps: 1, seed: 3, face: { faceIndex: 1 }, onWarning: (w) => warnings.push(w) });
  t.match(warnings, [/3 faces found .*using face 1/]);
  t.equal(id.method, 'sefi-ide');
  await t.rejects(engine.learnIdentity(ASTRO, { steps: 1, face: 'yes' as unknown as false }), { code: 'E_ARGUMENT' });
});
