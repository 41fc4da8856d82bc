// The self-augmented edit dataset (issue #13 part 4) with real photos standing in for SD's
// generations, the real FaceAnalyzer and the tiny CLIP: faces detected and aligned, a name
// without a face skipped, ID similarity and CLIP scores, the combined rank, resume; then
// trainEncoder reads the kept rows.
import * as fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ClipScorer } from '../lib/clip/index.js';
import { Engine } from '../lib/engine.js';
import { FaceAnalyzer } from '../lib/faces/index.js';
import { decodeFace } from '../lib/identity/face.js';
import type { RawImage } from '../lib/io/image.js';
import { buildEditDataset, rankRows, type DatasetRow, type ImageGenerator } from '../lib/dreamidentity/dataset.js';
import { trainEncoder } from '../lib/dreamidentity/train.js';
import { TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-dataset-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

// "Generations": base photo per name, then edits (the same person, another person, a cat).
const PHOTOS: Record<string, { base: string; edits: string[] }> = {
  'Eileen Collins': { base: 'astronaut.jpg', edits: ['astronaut.jpg', 'grace_hopper.jpg', 'chelsea.jpg'] },
  'Grace Hopper': { base: 'grace_hopper.jpg', edits: ['grace_hopper.jpg', 'astronaut.jpg', 'chelsea.jpg'] },
  Chelsea: { base: 'chelsea.jpg', edits: [] },
};
function photoGenerator(calls: [string, number][]): ImageGenerator {
  return {
    async generate(prompt: string, seed: number): Promise<RawImage> {
      calls.push([prompt, seed]);
      const name = Object.keys(PHOTOS).find((n) => prompt.includes(n))!;
      const k = [' as a chef', ' in a spacesuit', ' on the moon'].findIndex((e) => prompt.endsWith(e));
      return decodeFace(fixture(`faces/${k < 0 ? PHOTOS[name]!.base : PHOTOS[name]!.edits[k]!}`));
    },
  };
}

t.test('buildEditDataset with photos for generations', async (t) => {
  const faces = await FaceAnalyzer.load();
  const clip = await ClipScorer.load(fixture('tiny-clip'), { device: 'cpu' });
  t.teardown(() => { faces.dispose(); clip.dispose(); });
  const namesFile = path.join(tmp, 'names.txt');
  fs.writeFileSync(namesFile, '# people SD knows\nEileen Collins\nGrace Hopper\n\nChelsea\n');
  const out = path.join(tmp, 'set');
  const calls: [string, number][] = [];
  const progress: string[] = [];
  const opts = {
    faces, clip, names: namesFile, editPrompts: ['{name} as a chef', '{name} in a spacesuit', '{name} on the moon'],
    keep: 0.34, seed: 11, out, faceSize: 112, onProgress: (p: { name: string; skipped?: string }) => progress.push(`${p.name}${p.skipped ? ' skipped' : ''}`),
  };
  const r = await buildEditDataset({ ...opts, generator: photoGenerator(calls) });
  t.same(progress, ['Eileen Collins', 'Grace Hopper', 'Chelsea skipped'], 'progress per name; the cat has no face: skipped');
  t.equal(calls.length, 2 * 4 + 1, 'a base and 3 edits per person, a base for the skipped name');
  t.equal(new Set(calls.map((c) => c[1])).size, calls.length, 'a seed of its own per image');
  const rows = r.rows.filter((x) => !x.skipped);
  t.equal(rows.length, 6);
  t.ok(r.rows.some((x) => x.name === 'Chelsea' && x.skipped && !x.kept), 'the skipped name is logged, never kept');
  const sim = (name: string, k: number) => rows.find((x) => x.name === name && x.edit === k)!.idSim!;
  for (const n of ['Eileen Collins', 'Grace Hopper']) {
    t.ok(sim(n, 0) > 0.9, `${n}: the same photo as the base, ID similarity ${sim(n, 0).toFixed(3)}`);
    t.ok(sim(n, 1) < sim(n, 0) - 0.1, `${n}: another person, ID similarity ${sim(n, 1).toFixed(3)}`);
    t.equal(sim(n, 2), -1, `${n}: no face in the edit → −1`);
  }
  t.ok(rows.every((x) => Number.isFinite(x.clip) && x.clip! >= 0 && x.prompt!.includes('<id>') && !x.prompt!.includes('{name}')), 'CLIP scores and <id> prompts');
  t.equal(r.kept, 3, 'the top ⌈0.34 · 6⌉ rows kept');
  t.ok(rows.filter((x) => x.kept).every((x) => x.idSim! > -1), 'no edit without a face is kept');
  const manifest = fs.readFileSync(r.manifest, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as DatasetRow);
  t.same(manifest, r.rows, 'manifest.jsonl holds every row with its scores, seeds and ranks');
  for (const x of rows) t.ok(fs.existsSync(path.join(out, x.image!)) && fs.existsSync(path.join(out, x.face!)), `${x.image} and the aligned face written`);
  const face = await decodeFace(path.join(out, rows[0]!.face!));
  t.same([face.width, face.height], [112, 112], 'aligned face at faceSize');

  // Resume: nothing is generated again, the same manifest.
  const again: [string, number][] = [];
  const r2 = await buildEditDataset({ ...opts, generator: photoGenerator(again) });
  t.equal(again.length, 0, 'a rerun generates nothing');
  t.same(r2.rows, r.rows);

  // Bad input.
  await t.rejects(buildEditDataset({ ...opts, generator: photoGenerator([]), editPrompts: ['as a chef'] }), { code: 'E_ARGUMENT' }, 'a prompt without {name}');
  await t.rejects(buildEditDataset({ ...opts, generator: photoGenerator([]), names: path.join(tmp, 'none.txt') }), { code: 'E_NOT_FOUND' });

  // The kept rows train an encoder.
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const tr = await trainEncoder({ engine, encoder: TINY_ID, editSets: [out], out: path.join(tmp, 'train'), steps: 2, seed: 1 });
  t.equal(tr.losses.length, 2, 'trainEncoder trains on the edit set');
});

t.test('rankRows: the average of the two ranks, top fraction kept', async (t) => {
  const rows: DatasetRow[] = [
    { name: 'a', edit: 0, baseSeed: 0, idSim: 0.9, clip: 10 },
    { name: 'a', edit: 1, baseSeed: 0, idSim: 0.5, clip: 30 },
    { name: 'a', edit: 2, baseSeed: 0, idSim: 0.8, clip: 25 },
    { name: 'a', edit: 3, baseSeed: 0, idSim: 0.1, clip: 5 },
  ];
  rankRows(rows, 0.5);
  t.same(rows.map((r) => r.rank), [1, 1, 1, 3]);
  t.same(rows.map((r) => r.kept), [true, true, false, false], 'ties broken by order');
});
