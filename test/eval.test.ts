// evaluate() end to end on the tiny models with the real face analyser and a real photo as the
// reference: every number finite and in range, the anchor rows, the report files, abort; the
// contact sheet's labels; `idforge eval`'s main().
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ClipScorer } from '../lib/clip/scorer.js';
import { Engine } from '../lib/engine.js';
import { IdforgeError } from '../lib/errors.js';
import { FaceAnalyzer } from '../lib/faces/index.js';
import { evaluate, stat } from '../lib/eval/evaluate.js';
import { main, readPrompts } from '../lib/eval/cli.js';
import { DEFAULT_PROMPTS, plainPrompt } from '../lib/eval/prompts.js';
import { writeReport } from '../lib/eval/report.js';
import { contactSheet } from '../lib/eval/sheet.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { loadImage } from '../lib/io/image.js';
import { fixture, TINY_ID, TINY_SD } from './helpers/fixtures.js';

const TINY_CLIP = fixture('tiny-clip');
const PHOTO = fixture('faces/grace_hopper.jpg');
const PROMPTS = ['a photo of <id> on the beach', 'an oil painting of <id>', 'a close-up photo of <id> smiling'];
const GEN = { steps: 1, width: 64, height: 64 };

t.test('evaluate() on the tiny models: identity, generic and reference rows, report files', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-eval-'));
  const faces = await FaceAnalyzer.load();
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  const clip = await ClipScorer.load(TINY_CLIP, { device: 'cpu' });
  const encoder = await IdEncoder.load(TINY_ID);
  t.teardown(() => {
    faces.dispose();
    engine.dispose();
    clip.dispose();
    encoder.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
  const identity = await encoder.encode(PHOTO, { name: 'grace' });
  const progress: number[] = [];
  const r = await evaluate({ engine, clip, faces, reference: PHOTO, identity, prompts: PROMPTS, seeds: [3], ...GEN, onProgress: (p) => progress.push(p.done) });
  t.same(progress, [1, 2, 3, 4, 5, 6], 'one progress report per image');
  t.equal(r.images.length, 6);
  t.same(r.images.map((i) => i.variant), ['identity', 'identity', 'identity', 'generic', 'generic', 'generic']);
  for (const im of r.images) {
    for (const k of ['idSimilarity', 'clipCosine', 'clipScore', 'idPrompt', 'timeMs'] as const) t.ok(Number.isFinite(im[k]), `image ${im.index} ${k} ${im[k]} is finite`);
    t.ok(im.clipCosine >= -1 && im.clipCosine <= 1);
    t.equal(im.clipScore, 100 * Math.max(im.clipCosine, 0), 'CLIP score = 100·max(cos, 0)');
    t.equal(im.idPrompt, im.clipCosine >= 0.23 ? im.idSimilarity : 0, 'ID(Prompt) follows the threshold');
    if (!im.faceDetected) t.equal(im.idSimilarity, 0, 'no face → ID 0');
    t.same([im.image.width, im.image.height], [64, 64]);
  }
  // The CLIP-T of an image is the scorer's own score of that image and the plain prompt.
  const first = r.images[0]!;
  const s = await clip.score(first.image, plainPrompt(first.prompt));
  t.ok(Math.abs(s.cosine - first.clipCosine) < 1e-6, 'clipCosine = ClipScorer.score of the image and the prompt');
  // Identity row and generic row are the same prompts and seeds with identityScale 1 and 0: different images.
  t.not(Buffer.compare(Buffer.from(r.images[0]!.image.data), Buffer.from(r.images[3]!.image.data)), 0, 'identity and generic images differ');
  // The reference photo (a real face) is found and matches itself.
  t.ok(r.reference.faceDetected, 'face found in the reference photo');
  t.ok(Math.abs(r.rows.reference.idSimilarity.mean - 1) < 1e-5, 'reference vs itself: ID 1');
  t.equal(r.rows.reference.images, PROMPTS.length);
  t.equal(r.rows.identity!.images, 3);
  t.equal(r.rows.generic!.images, 3);
  const ids = r.images.filter((i) => i.variant === 'identity').map((i) => i.clipScore);
  t.same(r.rows.identity!.clipScore, stat(ids), 'row = mean ± std of its images');

  const files = await writeReport(r, dir);
  for (const f of [files.json, files.html, files.contactSheet, files.reference, ...files.images]) t.ok(existsSync(f), `${path.basename(f)} written`);
  const json = JSON.parse(readFileSync(files.json, 'utf8'));
  t.equal(json.images.length, 6);
  t.equal(json.settings.identity, 'grace');
  t.ok(json.rows.identity && json.rows.generic && json.rows.reference);
  const html = readFileSync(files.html, 'utf8');
  t.match(html, /contact\.png/);
  t.match(html, /an oil painting of &lt;id&gt;/, 'prompts are escaped in the HTML');
  const sheet = await loadImage(files.contactSheet);
  t.ok(sheet.width > 64 && sheet.height > 64);

  // Abort after the first image: E_ABORTED, no further images.
  const ac = new AbortController();
  let made = 0;
  const e = await evaluate({ engine, clip, faces, reference: PHOTO, prompts: PROMPTS, seeds: [1, 2], ...GEN, signal: ac.signal, onProgress: () => { made++; ac.abort(); } }).catch((x: unknown) => x);
  t.ok(e instanceof IdforgeError && e.code === 'E_ABORTED', `aborted: ${(e as Error).message}`);
  t.equal(made, 1);

  // Without an identity: only the generic row.
  const g = await evaluate({ engine, clip, faces, reference: PHOTO, prompts: PROMPTS.slice(0, 1), ...GEN });
  t.equal(g.rows.identity, undefined);
  t.equal(g.rows.generic!.images, 1);

  // Bad input.
  const bad = async (o: object, code: string) => {
    const x = await evaluate({ engine, clip, faces, reference: PHOTO, ...GEN, ...o }).catch((y: unknown) => y);
    t.equal((x as IdforgeError).code, code, (x as Error).message);
  };
  await bad({ prompts: [] }, 'E_ARGUMENT');
  await bad({ seeds: [-1] }, 'E_ARGUMENT');
  await bad({ threshold: 2 }, 'E_ARGUMENT');
  await bad({ width: 65 }, 'E_SHAPE');
  await bad({ prompts: ['<id:ann> on a boat'] }, 'E_ARGUMENT');
  await bad({ reference: path.join(dir, 'missing.jpg') }, 'E_NOT_FOUND');
});

t.test('contact sheet: tiles in a grid, numbers drawn under them', async (t) => {
  const red = { width: 10, height: 20, channels: 3 as const, data: new Uint8Array(600).fill(0).map((_, i) => (i % 3 === 0 ? 255 : 0)) };
  const s = contactSheet([{ image: red, label: '1' }, { image: red, label: '23' }, { image: red, label: 'R' }], { columns: 2, cell: 64 });
  // cell 64 → glyph scale 2, gap 8, label strip 7·2 + 16 = 30.
  t.same([s.width, s.height], [2 * (64 + 8) + 8, 2 * (64 + 30) + 8]);
  const px = (x: number, y: number) => [...s.data.subarray((y * s.width + x) * 3, (y * s.width + x) * 3 + 3)];
  t.same(px(8 + 32, 8 + 32), [255, 0, 0], 'the image, scaled into its cell');
  t.same(px(8 + 2, 8 + 32), [255, 255, 255], 'white beside a portrait image');
  // Under the first tile, the glyph '1' (5×7 at scale 2, centred): its stem is ink.
  let ink = 0;
  for (let y = 8 + 64 + 8; y < 8 + 64 + 8 + 14; y++) for (let x = 8; x < 8 + 64; x++) if (px(x, y)[0] === 0) ink++;
  t.equal(ink, 4 * (1 + 2 + 1 + 1 + 1 + 1 + 3), "the '1' glyph's pixels, each 2×2");
  t.throws(() => contactSheet([{ image: red, label: '?' }]), { code: 'E_ARGUMENT' });
  t.throws(() => contactSheet([]), { code: 'E_ARGUMENT' });
});

t.test('prompts: the default set and prompt files', async (t) => {
  t.ok(DEFAULT_PROMPTS.length >= 18 && DEFAULT_PROMPTS.length <= 24);
  for (const p of DEFAULT_PROMPTS) t.match(p, /<id>/, `${p} names the identity`);
  t.equal(plainPrompt('an oil painting of <id>'), 'an oil painting of a person');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-prompts-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(path.join(dir, 'p.txt'), 'a\n\n  b <id>  \r\nc\n');
  t.same(readPrompts(path.join(dir, 'p.txt')), ['a', 'b <id>', 'c']);
  writeFileSync(path.join(dir, 'p.json'), '["x", "y <id>"]');
  t.same(readPrompts(path.join(dir, 'p.json')), ['x', 'y <id>']);
  writeFileSync(path.join(dir, 'bad.json'), '[1, 2]');
  t.throws(() => readPrompts(path.join(dir, 'bad.json')), { code: 'E_ARGUMENT' });
  t.throws(() => readPrompts(path.join(dir, 'none.txt')), { code: 'E_NOT_FOUND' });
  t.same(stat([1, 3]), { mean: 2, std: 1 });
});

t.test('idforge eval (lib/eval/cli.ts main) writes the report', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-evalcli-'));
  const sigint = process.listenerCount('SIGINT');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(path.join(dir, 'prompts.txt'), 'a photo of <id> reading a book\n');
  const run = async (args: string[]) => {
    const io = { out: '', err: '', stdout: { write: (s: string) => (io.out += s) }, stderr: { write: (s: string) => (io.err += s) } };
    const code = await main(args, io).catch((e: unknown) => e);
    return { code, out: io.out, err: io.err };
  };
  const r = await run(['--model', TINY_SD, '--clip', TINY_CLIP, '--reference', PHOTO, '--prompts', path.join(dir, 'prompts.txt'),
    '--steps', '1', '--width', '64', '--height', '64', '--seeds', '4,5', '--device', 'cpu', '--out', path.join(dir, 'out')]);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /generic "person" \(identityScale 0\): ID .* CLIP/);
  t.match(r.out, /reference photo vs itself: ID 1\.000/);
  for (const f of ['report.json', 'report.html', 'contact.png', 'reference.png', 'images/001.png', 'images/002.png']) t.ok(existsSync(path.join(dir, 'out', f)), f);
  const bad = await run(['--model', TINY_SD, '--clip', path.join(dir, 'nope'), '--reference', PHOTO, '--device', 'cpu']);
  t.equal((bad.code as IdforgeError).code, 'E_NOT_FOUND', String(bad.code));
  const seeds = await run(['--model', TINY_SD, '--clip', TINY_CLIP, '--reference', PHOTO, '--seeds', '1,x']);
  t.equal((seeds.code as IdforgeError).code, 'E_ARGUMENT');
  const usage = await run([]);
  t.equal(usage.code, 2);
  t.match(usage.err, /usage: idforge eval/);
  t.equal(process.listenerCount('SIGINT'), sigint, 'no SIGINT handler left behind');
});
