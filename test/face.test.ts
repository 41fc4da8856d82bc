import * as fs from 'node:fs';
import t from 'tap';
import {
  ARCFACE_TEMPLATE_112, NO_LANDMARKS_WARNING, applyTransform, decodeFace, estimateSimilarity, faceTemplate, prepareFace, warpAffine,
} from '../lib/identity/face.js';
import type { RawImage } from '../lib/io/image.js';
import { fixture } from './helpers/fixtures.js';

const FACES = fixture('faces');
const LANDMARKS = JSON.parse(fs.readFileSync(`${FACES}/landmarks.json`, 'utf8')) as Record<string, [number, number][]>;

/** A known similarity: rotate by `deg`, scale by `s`, translate by (tx, ty). */
function similarity(deg: number, s: number, tx: number, ty: number): number[] {
  const c = Math.cos((deg * Math.PI) / 180) * s;
  const n = Math.sin((deg * Math.PI) / 180) * s;
  return [c, -n, tx, n, c, ty];
}

t.test('estimateSimilarity recovers a known transform; landmarks land on the template', async (t) => {
  for (const [deg, s, tx, ty] of [[0, 1, 0, 0], [17, 1.7, 40, 25], [-35, 0.6, 5, 60], [170, 2.3, 300, 280]] as const) {
    const fwd = similarity(deg, s, tx, ty); // template → image
    const lms = ARCFACE_TEMPLATE_112.map((p) => applyTransform(fwd, p));
    const m = estimateSimilarity(lms, ARCFACE_TEMPLATE_112);
    let worst = 0;
    lms.forEach((p, i) => {
      const [x, y] = applyTransform(m, p);
      worst = Math.max(worst, Math.hypot(x - ARCFACE_TEMPLATE_112[i]![0], y - ARCFACE_TEMPLATE_112[i]![1]));
    });
    t.ok(worst < 0.5, `rot ${deg}°, scale ${s}: max error ${worst.toExponential(2)} px`);
    t.ok(worst < 1e-9, 'exact for noise-free points');
    t.ok(Math.abs(Math.hypot(m[0]!, m[3]!) - 1 / s) < 1e-9, 'scale is the inverse');
  }
  // noisy landmarks: least squares, still within 0.5 px of the template for ±0.3 px noise
  const fwd = similarity(10, 1.5, 20, 30);
  const noise = [[0.3, -0.2], [-0.25, 0.3], [0.1, 0.3], [-0.3, -0.1], [0.2, 0.2]];
  const lms = ARCFACE_TEMPLATE_112.map((p, i) => {
    const [x, y] = applyTransform(fwd, p);
    return [x + noise[i]![0]!, y + noise[i]![1]!] as [number, number];
  });
  const m = estimateSimilarity(lms, ARCFACE_TEMPLATE_112);
  lms.forEach((p, i) => {
    const [x, y] = applyTransform(m, p);
    t.ok(Math.hypot(x - ARCFACE_TEMPLATE_112[i]![0], y - ARCFACE_TEMPLATE_112[i]![1]) < 0.5, `noisy landmark ${i}`);
  });
  // no reflection: a mirrored set gets a rotation (det > 0), not a flip
  const mirrored = ARCFACE_TEMPLATE_112.map(([x, y]) => [112 - x, y] as [number, number]);
  const r = estimateSimilarity(mirrored, ARCFACE_TEMPLATE_112);
  t.ok(r[0]! * r[4]! - r[1]! * r[3]! > 0);
  t.throws(() => estimateSimilarity([[1, 1], [1, 1]], [[0, 0], [1, 1]]), { code: 'E_ARGUMENT' });
  t.throws(() => estimateSimilarity([[1, 1]], [[0, 0]]), { code: 'E_ARGUMENT' });
});

/** Black image with soft bright blobs at `pts`. */
function dots(w: number, h: number, pts: readonly (readonly [number, number])[]): RawImage {
  const data = new Uint8Array(w * h * 3);
  for (const [px, py] of pts)
    for (let y = Math.floor(py) - 6; y <= Math.ceil(py) + 6; y++)
      for (let x = Math.floor(px) - 6; x <= Math.ceil(px) + 6; x++) {
        if (x < 0 || y < 0 || x >= w || y >= h) continue;
        const v = 255 * Math.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * 2.5 ** 2));
        const o = (y * w + x) * 3;
        data[o] = data[o + 1] = data[o + 2] = Math.max(data[o]!, Math.round(v));
      }
  return { width: w, height: h, channels: 3, data };
}

function centroid(img: RawImage, cx: number, cy: number, r: number): [number, number] {
  let sx = 0, sy = 0, sw = 0;
  for (let y = Math.max(0, Math.round(cy) - r); y <= Math.min(img.height - 1, Math.round(cy) + r); y++)
    for (let x = Math.max(0, Math.round(cx) - r); x <= Math.min(img.width - 1, Math.round(cx) + r); x++) {
      const v = img.data[(y * img.width + x) * 3]!;
      sx += v * x; sy += v * y; sw += v;
    }
  return [sx / sw, sy / sw];
}

t.test('prepareFace with landmarks warps dots onto the template (within 0.5 px)', async (t) => {
  for (const [deg, s, size] of [[12, 1.6, 112], [-25, 2.2, 112], [5, 1.3, 224]] as const) {
    const fwd = similarity(deg, s, 60, 40);
    const lms = faceTemplate(size).map((p) => applyTransform(fwd, p));
    const W = Math.ceil(size * s * 1.6) + 120;
    const img = dots(W, W, lms);
    const r = await prepareFace(img, { landmarks: lms, size });
    t.same([r.image.width, r.image.height], [size, size]);
    t.same(r.warnings, []);
    t.equal(r.transform!.length, 6);
    faceTemplate(size).forEach(([x, y], i) => {
      const [cx, cy] = centroid(r.image, x, y, 5);
      const err = Math.hypot(cx - x, cy - y);
      t.ok(err < 0.5, `rot ${deg}° scale ${s} size ${size}: dot ${i} at ${cx.toFixed(2)},${cy.toFixed(2)} (err ${err.toFixed(3)} px)`);
    });
  }
});

t.test('warpAffine: identity transform copies, outside is black', async (t) => {
  const img: RawImage = { width: 4, height: 4, channels: 3, data: Uint8Array.from({ length: 48 }, (_, i) => (i * 5) % 256) };
  const same = warpAffine(img, [1, 0, 0, 0, 1, 0], 4);
  t.same(Array.from(same.data), Array.from(img.data));
  const shifted = warpAffine(img, [1, 0, 2, 0, 1, 0], 4); // input x → output x + 2
  t.same(Array.from(shifted.data.subarray(0, 6)), [0, 0, 0, 0, 0, 0], 'zero fill');
  t.same(Array.from(shifted.data.subarray(6, 12)), Array.from(img.data.subarray(0, 6)));
  t.throws(() => warpAffine(img, [0, 0, 0, 0, 0, 0], 4), { code: 'E_ARGUMENT' });
});

t.test('a drawn face: aligned eyes land on the template eyes', async (t) => {
  const r = await prepareFace(`${FACES}/face-a.png`, { landmarks: LANDMARKS['face-a']! });
  t.same(r.warnings, []);
  for (const [x, y] of ARCFACE_TEMPLATE_112.slice(0, 2)) {
    const o = (Math.round(y) * 112 + Math.round(x)) * 3;
    t.ok(r.image.data[o]! < 90, `pupil is dark at template eye (${x}, ${y}): ${r.image.data[o]}`);
  }
  // EXIF orientation is applied: the rotated JPEG decodes like the upright one
  const up = await decodeFace(`${FACES}/face-a.jpg`);
  const rot = await decodeFace(`${FACES}/face-a-exif6.jpg`);
  t.same([rot.width, rot.height], [up.width, up.height]);
  let diff = 0;
  for (let i = 0; i < up.data.length; i++) diff += Math.abs(up.data[i]! - rot.data[i]!);
  t.ok(diff / up.data.length < 4, `mean abs difference ${(diff / up.data.length).toFixed(2)}`);
  // Buffers decode too
  const fromBuf = await decodeFace(fs.readFileSync(`${FACES}/face-a.png`));
  t.same([fromBuf.width, fromBuf.height], [160, 200]);
});

t.test('without landmarks: centre crop with a warning', async (t) => {
  const r = await prepareFace(`${FACES}/face-a.png`);
  t.same(r.warnings, [NO_LANDMARKS_WARNING]);
  t.equal(r.transform, undefined);
  t.same([r.image.width, r.image.height, r.image.data.length], [112, 112, 112 * 112 * 3]);
  const wide: RawImage = { width: 30, height: 10, channels: 3, data: new Uint8Array(900) };
  for (let y = 0; y < 10; y++) for (let x = 10; x < 20; x++) wide.data.fill(200, (y * 30 + x) * 3, (y * 30 + x) * 3 + 3);
  const c = await prepareFace(wide, { size: 16 });
  t.ok(c.image.data.every((v) => v === 200), 'the centred square is taken');
  const again = await prepareFace(`${FACES}/face-a.png`);
  t.same(Buffer.from(again.image.data), Buffer.from(r.image.data), 'deterministic');
});

t.test('warnings for doubtful landmarks', async (t) => {
  const lms = LANDMARKS['face-a']!;
  const shuffled = [lms[3]!, lms[0]!, lms[4]!, lms[1]!, lms[2]!];
  const r = await prepareFace(`${FACES}/face-a.png`, { landmarks: shuffled });
  t.match(r.warnings.join('\n'), /fit the face template poorly/);
  const tiny = ARCFACE_TEMPLATE_112.map(([x, y]) => [x / 4 + 2, y / 4 + 2] as [number, number]);
  const s = await prepareFace(`${FACES}/face-a.png`, { landmarks: tiny });
  t.match(s.warnings.join('\n'), /upscales it 4\.0×/);
  const out = ARCFACE_TEMPLATE_112.map(([x, y]) => [x + 100, y] as [number, number]);
  const o = await prepareFace(`${FACES}/face-a.png`, { landmarks: out });
  t.match(o.warnings.join('\n'), /outside the image/);
});

t.test('bad inputs', async (t) => {
  const lms = LANDMARKS['face-a']!;
  const png = `${FACES}/face-a.png`;
  await t.rejects(prepareFace(png, { landmarks: lms.slice(0, 3) }), { code: 'E_ARGUMENT', message: /5 \[x, y\] points.*got 3/ });
  await t.rejects(prepareFace(png, { landmarks: [...lms.slice(0, 4), [NaN, 3]] }), { code: 'E_ARGUMENT', message: /landmark 4/ });
  await t.rejects(prepareFace(png, { landmarks: [...lms.slice(0, 4), [1]] as [number, number][] }), { code: 'E_ARGUMENT' });
  await t.rejects(prepareFace(png, { landmarks: Array(5).fill([3, 3]) }), { code: 'E_ARGUMENT', message: /coincide/ });
  await t.rejects(prepareFace(png, { landmarks: 'detect', faceIndex: -1 }), { code: 'E_ARGUMENT', message: /faceIndex/ });
  await t.rejects(prepareFace(`${FACES}/nope.png`), { code: 'E_NOT_FOUND', message: /nope\.png/ });
  await t.rejects(prepareFace(''), { code: 'E_ARGUMENT' });
  await t.rejects(prepareFace(Buffer.from('not an image at all')), { code: 'E_ARGUMENT' });
  await t.rejects(prepareFace(Buffer.alloc(0)), { code: 'E_ARGUMENT' });
  await t.rejects(prepareFace({ width: 2, height: 2, channels: 3, data: new Uint8Array(5) }), { code: 'E_ARGUMENT', message: /RawImage/ });
  await t.rejects(prepareFace(42 as unknown as string), { code: 'E_ARGUMENT' });
  await t.rejects(prepareFace(png, { size: 0 }), { code: 'E_ARGUMENT', message: /size/ });
  await t.rejects(prepareFace(png, { size: 1.5 }), { code: 'E_ARGUMENT' });
});

t.test('ImagePyramid.warp: strong shrinks from a halved level, antialiased', async (t) => {
  const { ImagePyramid, antialiasSamples } = await import('../lib/faces/align.js');
  const img = await decodeFace(`${FACES}/grace_hopper.jpg`); // 512×600, a real photo with fine detail
  const pyr = new ImagePyramid(img);
  const mad = (a: RawImage, b: RawImage) => a.data.reduce((s, v, i) => s + Math.abs(v - b.data[i]!), 0) / a.data.length;
  t.equal(mad(pyr.warp([1, 0, -7, 0, 1, 3], 64), warpAffine(img, [1, 0, -7, 0, 1, 3], 64)), 0, 'no shrink: the plain warp');
  for (const [k, deg] of [[0.5, 0], [0.2, 0], [0.13, 17]] as const) {
    const m = similarity(deg, k, 3, -5);
    const ref = warpAffine(img, m, 64, 16); // 256 taps per output pixel: a near-ideal box filter
    const viaPyr = mad(pyr.warp(m, 64), ref);
    const plain = mad(warpAffine(img, m, 64), ref);
    t.ok(viaPyr < 5 && viaPyr < plain, `scale ${k}: mean abs difference to the reference ${viaPyr.toFixed(2)} (one bilinear tap: ${plain.toFixed(2)})`);
  }
  // 2×2 means; the odd last row and column are dropped
  const data = Uint8Array.from({ length: 5 * 5 * 3 }, (_, i) => (Math.floor(i / 3) * 10) % 256);
  const half = new ImagePyramid({ width: 5, height: 5, channels: 3, data }).warp([0.5, 0, -0.25, 0, 0.5, -0.25], 2);
  const v = (x: number, y: number) => (y * 5 + x) * 10;
  const want = [[0, 0], [1, 0], [0, 1], [1, 1]].map(([x, y]) => Math.floor((v(2 * x!, 2 * y!) + v(2 * x! + 1, 2 * y!) + v(2 * x!, 2 * y! + 1) + v(2 * x! + 1, 2 * y! + 1) + 2) / 4));
  t.same(Array.from(half.data).filter((_, i) => i % 3 === 0), want);
});
