// FaceAnalyzer with the real pretrained models from the installed packages (BlazeFace + FaceMesh,
// dlib's ResNet), on real photos: test/fixtures/faces (public domain / CC0, see its README) and
// face-api's demo photos, read from node_modules and not copied.
import * as fs from 'node:fs';
import sharp from 'sharp';
import t from 'tap';
import '../lib/index.js'; // first: the check below needs the whole package imported
import { decodeFace } from '../lib/faces/align.js';
import { FaceAnalyzer, similarity, type Face, type Point } from '../lib/faces/index.js';
import { packageDir } from '../lib/faces/tf.js';
import type { RawImage } from '../lib/io/image.js';
import { fixture } from './helpers/fixtures.js';

const FACES = fixture('faces');
const GROUP = `${packageDir('@vladmandic/face-api')}/demo/sample1.jpg`; // three women, 1920×1280

/**
 * Hand-checked points (ArcFace order: eye on the image's left, other eye, nose tip, mouth corner on
 * the image's left, other mouth corner), pixel centres: read off 6–14× zooms of the photos with a
 * pixel grid (eyes: pupil centres; nose: the tip; mouth: where the lips' line ends).
 */
const HAND: Record<string, Point[]> = {
  'astronaut.jpg': [[202.5, 101], [245, 103], [222.5, 127], [202.5, 140], [244, 141]],
  'grace_hopper.jpg': [[222, 188], [304.5, 185.5], [266, 243], [228, 280.5], [304.5, 277.5]],
};

const dist = (a: Point, b: Point) => Math.hypot(a[0] - b[0], a[1] - b[1]);

function mirror(img: RawImage): RawImage {
  const out = new Uint8Array(img.data.length);
  for (let y = 0; y < img.height; y++)
    for (let x = 0; x < img.width; x++)
      out.set(img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3), (y * img.width + img.width - 1 - x) * 3);
  return { ...img, data: out };
}

// Every import above is static and evaluated by now: none of them may have loaded TensorFlow.js.
const tfBeforeLoad = typeof (globalThis as Record<string, unknown>)._tfengine;
const fa = await FaceAnalyzer.load();
t.teardown(() => fa.dispose());

t.test('importing idforge (lib/index.js, lib/faces) does not load TensorFlow.js; FaceAnalyzer.load does', async (t) => {
  t.equal(tfBeforeLoad, 'undefined');
  t.equal(typeof (globalThis as Record<string, unknown>)._tfengine, 'object');
});

t.test('one face on each portrait, landmarks within 10% of the inter-eye distance of the hand-checked points', async (t) => {
  for (const [file, hand] of Object.entries(HAND)) {
    const faces = await fa.detect(`${FACES}/${file}`);
    t.equal(faces.length, 1, `${file}: one face`);
    const f = faces[0]!;
    t.ok(f.score > 0.9, `${file}: score ${f.score}`);
    const ied = dist(hand[0]!, hand[1]!);
    const errs = f.landmarks.map((p, i) => dist(p, hand[i]!) / ied);
    t.comment(`${file}: landmark error / inter-eye distance: ${errs.map((e) => e.toFixed(3)).join(' ')}`);
    errs.forEach((e, i) => t.ok(e < 0.1, `${file}: landmark ${i} off by ${(e * 100).toFixed(1)}% of the inter-eye distance`));
    t.equal(f.mesh.length, 468);
    const [x0, y0, x1, y1] = f.box;
    t.ok(hand.every(([x, y]) => x > x0 && x < x1 && y > y0 && y < y1), 'the box holds the landmarks');
  }
});

t.test('no face in a photo of a cat; the group photo has three', async (t) => {
  t.same(await fa.detect(`${FACES}/chelsea.jpg`), [], 'CC0 photo of a cat: no face');
  const group = await fa.detect(GROUP);
  t.equal(group.length, 3, 'three faces in the group photo');
  const area = (f: Face) => (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]);
  for (let i = 1; i < group.length; i++) t.ok(area(group[i - 1]!) >= area(group[i]!), 'largest first');
  const centres = group.map((f) => (f.box[0] + f.box[2]) / 2).sort((a, b) => a - b);
  t.ok(centres[1]! - centres[0]! > 200 && centres[2]! - centres[1]! > 200, `three different faces: centres x ${centres.map(Math.round)}`);
  t.same(await fa.detect(GROUP, { maxFaces: 2 }), group.slice(0, 2), 'maxFaces keeps the largest');
});

t.test('small faces in a large photo are found in tiles', async (t) => {
  // the two portraits shrunk to 200 px and 110 px wide (faces ≈ 40 px) on a 1600×1200 grey canvas
  const small = async (file: string, size: number) => sharp(`${FACES}/${file}`).resize(size).toBuffer();
  const { data, info } = await sharp({ create: { width: 1600, height: 1200, channels: 3, background: '#777' } })
    .composite([{ input: await small('astronaut.jpg', 200), left: 200, top: 800 }, { input: await small('grace_hopper.jpg', 110), left: 1300, top: 150 }])
    .removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const img: RawImage = { width: info.width, height: info.height, channels: 3, data: new Uint8Array(data) };
  const whole = await fa.detect(img, { tiles: false });
  const tiled = await fa.detect(img);
  t.ok(whole.length < 2, `fitting the photo into one pass misses faces (${whole.length} found)`);
  t.equal(tiled.length, 2, 'tiles find both');
  const near = (f: Face, x: number, y: number) => Math.abs((f.box[0] + f.box[2]) / 2 - x) < 30 && Math.abs((f.box[1] + f.box[3]) / 2 - y) < 30;
  // the faces' centres: astronaut's eyes-mouth centre (222, 122) × 200/512, Grace's (265, 233) × 110/512
  t.ok(tiled.some((f) => near(f, 200 + 222 * 200 / 512, 800 + 122 * 200 / 512)), 'the astronaut');
  t.ok(tiled.some((f) => near(f, 1300 + 265 * 110 / 512, 150 + 233 * 110 / 512)), 'Grace Hopper');
});

t.test('embeddings: same face through mirroring, re-encoding and cropping scores far above another person; deterministic', async (t) => {
  const astro = await decodeFace(`${FACES}/astronaut.jpg`);
  const e = await fa.embed(astro);
  t.equal(e.length, 128);
  let n = 0;
  for (const v of e) n += v * v;
  t.ok(Math.abs(Math.sqrt(n) - 1) < 1e-5, 'unit length');
  t.same(Array.from(await fa.embed(`${FACES}/astronaut.jpg`)), Array.from(e), 'deterministic (and paths decode like RawImages)');
  const variants: Record<string, Float32Array> = {
    mirrored: await fa.embed(mirror(astro)),
    'JPEG q60': await fa.embed(await sharp(`${FACES}/astronaut.jpg`).jpeg({ quality: 60 }).toBuffer()),
    'cropped 10%': await fa.embed(await sharp(`${FACES}/astronaut.jpg`).extract({ left: 40, top: 30, width: 420, height: 440 }).toBuffer()),
  };
  const other = similarity(e, await fa.embed(`${FACES}/grace_hopper.jpg`));
  t.comment(`cosine: ${Object.entries(variants).map(([k, v]) => `${k} ${similarity(e, v).toFixed(4)}`).join(', ')}; other person ${other.toFixed(4)}`);
  for (const [k, v] of Object.entries(variants)) {
    const s = similarity(e, v);
    t.ok(s > 0.97, `${k}: ${s.toFixed(4)}`);
    t.ok(s - other > 0.05, `${k} beats the other person by ${(s - other).toFixed(4)}`);
  }
  t.ok(other < 0.93, `different person: ${other.toFixed(4)}`);
  // an explicit face: the one detect found gives the same embedding as the default
  const [face] = await fa.detect(astro);
  t.same(Array.from(await fa.embed(astro, face)), Array.from(e));
  t.ok(Math.abs(similarity(e, e) - 1) < 1e-6);
});

t.test('bad input: typed errors', async (t) => {
  await t.rejects(fa.embed(`${FACES}/chelsea.jpg`), { code: 'E_NO_FACE', message: /chelsea\.jpg/ });
  await t.rejects(fa.detect(Buffer.from('not an image at all')), { code: 'E_ARGUMENT' });
  await t.rejects(fa.embed(Buffer.from('GIF89a garbage')), { code: 'E_ARGUMENT' });
  await t.rejects(fa.detect(`${FACES}/missing.jpg`), { code: 'E_NOT_FOUND' });
  await t.rejects(fa.detect({ width: 2, height: 2, channels: 3, data: new Uint8Array(3) }), { code: 'E_ARGUMENT' });
  await t.rejects(fa.detect(`${FACES}/astronaut.jpg`, { minScore: 2 }), { code: 'E_ARGUMENT' });
  await t.rejects(fa.detect(`${FACES}/astronaut.jpg`, { maxFaces: 0 }), { code: 'E_ARGUMENT' });
  await t.rejects(fa.embed(`${FACES}/astronaut.jpg`, { landmarks: [[1, 2]] }), { code: 'E_ARGUMENT' });
  t.throws(() => similarity(new Float32Array(3), new Float32Array(4)), { code: 'E_ARGUMENT' });
  t.throws(() => packageDir('@idforge-test/no-such-package'), { code: 'E_BACKEND', message: /optional dependency/ });
  await t.rejects(FaceAnalyzer.load({ detectorDir: `${FACES}` }), { code: 'E_NOT_FOUND', message: /blazeface\.json/ });
  const bad = fs.mkdtempSync('/tmp/idforge-faces-');
  fs.writeFileSync(`${bad}/blazeface.json`, '{ not json');
  fs.writeFileSync(`${bad}/facemesh.json`, '{}');
  await t.rejects(FaceAnalyzer.load({ detectorDir: bad }), { code: 'E_MODEL_FORMAT' });
  fs.rmSync(bad, { recursive: true });
  const gone = await FaceAnalyzer.load();
  gone.dispose();
  await t.rejects(gone.detect(`${FACES}/astronaut.jpg`), { code: 'E_DISPOSED' });
});
