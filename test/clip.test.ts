// ClipScorer against the tiny-clip golden (transformers' CLIPModel, float32, relative L2 ≤ 1e-4):
// both towers, the cosine matrix and the score formula; preprocess against PIL; bad folders.
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ClipScorer, clipScore, cosine } from '../lib/clip/scorer.js';
import { clipPixels, resizeBicubic } from '../lib/clip/preprocess.js';
import { IdforgeError } from '../lib/errors.js';
import { loadImage } from '../lib/io/image.js';
import { writeSafetensors, SafetensorsFile } from '../lib/io/safetensors.js';
import { Tensor } from '../lib/tensor.js';
import { fixture, GoldenFile } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

const TINY_CLIP = fixture('tiny-clip');
const TOL = 1e-4;
const cases = JSON.parse(readFileSync(fixture('golden/cases.json'), 'utf8')).clip as { prompts: string[] };

t.test('tiny-clip goldens (CPU, float32)', async (t) => {
  const g = new GoldenFile('clip');
  t.teardown(() => g.close());
  const clip = await ClipScorer.load(TINY_CLIP, { device: 'cpu' });
  t.teardown(() => clip.dispose());
  t.equal(clip.dim, 16);
  const [nImg] = g.shape('image_embeds') as [number, number];
  const E = clip.dim;

  using px = g.tensor('pixel_values');
  using ie = await clip.embedImage(px);
  t.same(ie.shape, g.shape('image_embeds'));
  const eImg = relL2(ie.toFloat32(), g.f32('image_embeds'));
  t.ok(eImg <= TOL, `image_embeds rel L2 ${eImg.toExponential(2)}`);

  const ids = g.i32('input_ids');
  const nTxt = ids.length / 77;
  const rows = Array.from({ length: nTxt }, (_, i) => ids.slice(i * 77, i * 77 + 77));
  using te = await clip.embedText(rows);
  const eTxt = relL2(te.toFloat32(), g.f32('text_embeds'));
  t.ok(eTxt <= TOL, `text_embeds (ids) rel L2 ${eTxt.toExponential(2)}`);
  // The same prompts as text go through the tokenizer to the same ids.
  t.same(rows.map((r) => [...r]), cases.prompts.map((p) => [...clip.tokenize(p)]));
  using te2 = await clip.embedText(cases.prompts);
  const eTxt2 = relL2(te2.toFloat32(), g.f32('text_embeds'));
  t.ok(eTxt2 <= TOL, `text_embeds (prompts) rel L2 ${eTxt2.toExponential(2)}`);

  // One image at a time (another program) gives the batch's rows.
  using one = Tensor.from(g.f32('pixel_values').subarray(0, 3 * 32 * 32), [1, 3, 32, 32]);
  using ie1 = await clip.embedImage(one);
  t.ok(relL2(ie1.toFloat32(), g.f32('image_embeds').subarray(0, E)) <= TOL, 'batch of one = first row');

  const a = ie.toFloat32(), b = te.toFloat32();
  const cos = new Float32Array(nImg * nTxt);
  for (let i = 0; i < nImg; i++) for (let j = 0; j < nTxt; j++) cos[i * nTxt + j] = cosine(a.subarray(i * E, i * E + E), b.subarray(j * E, j * E + E));
  const eCos = relL2(cos, g.f32('cosine'));
  t.ok(eCos <= TOL, `cosine rel L2 ${eCos.toExponential(2)}`);

  // score(): a preprocessed tensor and a prompt → the golden cosine and 100·max(cos, 0).
  const s = await clip.score(one, cases.prompts[1]!);
  const ref = g.f32('cosine')[1]!;
  t.ok(Math.abs(s.cosine - ref) <= 1e-5, `score cosine ${s.cosine} vs ${ref}`);
  t.equal(s.score, 100 * Math.max(s.cosine, 0), 'score = 100·max(cos, 0)');
  t.end();
});

t.test('score formula: 100·max(cos, 0)', async (t) => {
  t.equal(clipScore(0.31), 31);
  t.equal(clipScore(-0.2), 0);
  t.equal(clipScore(0), 0);
  t.equal(clipScore(1), 100);
  t.equal(cosine([1, 0], [0, 2]), 0);
  t.ok(Math.abs(cosine([1, 2, 3], [2, 4, 6]) - 1) < 1e-12);
  t.ok(Math.abs(cosine([1, 0], [-1, 0]) + 1) < 1e-12);
  t.throws(() => cosine([1], [1, 2]), { code: 'E_SHAPE' });
});

t.test('preprocess: PIL bicubic resize, centre crop, mean/std', async (t) => {
  // Reference: PIL's `Image.resize((w, h), Image.BICUBIC)` of face-a.png (shrinking, enlarging,
  // one axis only), as sha256 of the bytes: test/fixtures/clip-preprocess/make.py.
  const ref = JSON.parse(readFileSync(fixture('clip-preprocess/pil-bicubic.json'), 'utf8')) as { cases: { width: number; height: number; sha256: string }[] };
  const img = await loadImage(fixture('faces/face-a.png'));
  for (const c of ref.cases) {
    const r = resizeBicubic(img, c.width, c.height);
    t.equal(createHash('sha256').update(r.data).digest('hex'), c.sha256, `${img.width}x${img.height} → ${c.width}x${c.height} byte-identical to PIL`);
  }
  const clip = await ClipScorer.load(TINY_CLIP, { device: 'cpu' });
  t.teardown(() => clip.dispose());
  using px = await clip.preprocess(fixture('faces/face-a.png'));
  t.same(px.shape, [1, 3, 32, 32]);
  // face-a is 160×200: the short side becomes 32, the long one int(32·200/160) = 40, crop rows 4..35.
  const resized = resizeBicubic(img, 32, 40);
  const c = clip.config.preprocess;
  const v = px.toFloat32();
  const expect = (ch: number, y: number, x: number) => (resized.data[((y + 4) * 32 + x) * 3 + ch]! / 255 - c.mean[ch]!) / c.std[ch]!;
  let worst = 0;
  for (let ch = 0; ch < 3; ch++) for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) worst = Math.max(worst, Math.abs(v[ch * 1024 + y * 32 + x]! - expect(ch, y, x)));
  t.ok(worst < 1e-6, `crop + normalisation (max diff ${worst})`);
  t.same(clipPixels(img, c), v);
  const s = await clip.score(fixture('faces/face-a.png'), 'a photo of a face');
  t.ok(Number.isFinite(s.cosine) && s.cosine >= -1 && s.cosine <= 1);
});

t.test('bad CLIP folders and inputs give typed errors', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-clip-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const copy = (name: string): string => {
    const d = path.join(dir, name);
    cpSync(TINY_CLIP, d, { recursive: true });
    return d;
  };
  const rewrite = (d: string, edit: (m: Map<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>) => void): void => {
    const st = SafetensorsFile.open(path.join(TINY_CLIP, 'model.safetensors'));
    const m = new Map<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>();
    for (const n of st.names()) if (!n.endsWith('position_ids')) m.set(n, { dtype: 'F32', shape: [...st.info(n).shape], data: st.readFloat32(n) });
    st.close();
    edit(m);
    writeSafetensors(path.join(d, 'model.safetensors'), Object.fromEntries(m));
  };
  const code = async (p: Promise<unknown>, c: string, msg?: RegExp) => {
    const e = await p.then(() => null, (x: unknown) => x);
    t.ok(e instanceof IdforgeError, `${c}: an IdforgeError`);
    t.equal((e as IdforgeError).code, c, (e as Error).message);
    if (msg) t.match((e as Error).message, msg);
  };

  await code(ClipScorer.load(path.join(dir, 'nope')), 'E_NOT_FOUND');
  const noModel = copy('no-model');
  rmSync(path.join(noModel, 'model.safetensors'));
  await code(ClipScorer.load(noModel, { device: 'cpu' }), 'E_NOT_FOUND', /model\.safetensors/);

  const missing = copy('missing');
  rewrite(missing, (m) => m.delete('vision_model.post_layernorm.weight'));
  await code(ClipScorer.load(missing, { device: 'cpu' }), 'E_MODEL_FORMAT', /post_layernorm\.weight.*missing/);

  const noProj = copy('no-proj');
  rewrite(noProj, (m) => m.delete('text_projection.weight'));
  await code(ClipScorer.load(noProj, { device: 'cpu' }), 'E_MODEL_FORMAT', /text_projection/);

  const mismatch = copy('mismatch');
  rewrite(mismatch, (m) => {
    const w = m.get('visual_projection.weight')!;
    m.set('visual_projection.weight', { dtype: 'F32', shape: [8, 32], data: w.data.subarray(0, 8 * 32) });
  });
  await code(ClipScorer.load(mismatch, { device: 'cpu' }), 'E_MODEL_FORMAT', /visual_projection\.weight.*shape/);

  // config.json that disagrees with the weights (layers, heads that do not divide) and is not JSON.
  const moreLayers = copy('more-layers');
  const cfg = JSON.parse(readFileSync(path.join(TINY_CLIP, 'config.json'), 'utf8'));
  writeFileSync(path.join(moreLayers, 'config.json'), JSON.stringify({ ...cfg, vision_config: { ...cfg.vision_config, num_hidden_layers: 3 } }));
  await code(ClipScorer.load(moreLayers, { device: 'cpu' }), 'E_MODEL_FORMAT', /layers\.2.*missing/);
  const heads = copy('heads');
  writeFileSync(path.join(heads, 'config.json'), JSON.stringify({ ...cfg, text_config: { ...cfg.text_config, num_attention_heads: 5 } }));
  await code(ClipScorer.load(heads, { device: 'cpu' }), 'E_MODEL_FORMAT', /heads/);
  // The older layout: sizes in text_config_dict / vision_config_dict (they win over *_config).
  const dicts = copy('dicts');
  writeFileSync(path.join(dicts, 'config.json'), JSON.stringify({
    ...cfg, text_config: null, text_config_dict: cfg.text_config,
    vision_config: { ...cfg.vision_config, num_hidden_layers: 3 }, vision_config_dict: { num_hidden_layers: 2 },
  }));
  const fromDicts = await ClipScorer.load(dicts, { device: 'cpu' });
  t.same([fromDicts.config.text.hiddenSize, fromDicts.config.vision.numHiddenLayers], [32, 2], 'config from *_config_dict');
  fromDicts.dispose();
  const badJson = copy('bad-json');
  writeFileSync(path.join(badJson, 'config.json'), '{ not json');
  await code(ClipScorer.load(badJson, { device: 'cpu' }), 'E_MODEL_FORMAT', /JSON/);
  const notClip = copy('not-clip');
  writeFileSync(path.join(notClip, 'config.json'), JSON.stringify({ ...cfg, model_type: 'siglip' }));
  await code(ClipScorer.load(notClip, { device: 'cpu' }), 'E_MODEL_FORMAT', /siglip/);
  const noTok = copy('no-tokenizer');
  rmSync(path.join(noTok, 'tokenizer'), { recursive: true });
  await code(ClipScorer.load(noTok, { device: 'cpu' }), 'E_NOT_FOUND', /vocab\.json/);

  await code(ClipScorer.load(TINY_CLIP, { device: 'cpu', dtype: 'bfloat16' as 'float16' }), 'E_ARGUMENT');
  await code(ClipScorer.load(TINY_CLIP, { device: 'tpu' as 'cpu' }), 'E_ARGUMENT');

  const clip = await ClipScorer.load(TINY_CLIP, { device: 'cpu' });
  using wrong = Tensor.zeros([1, 3, 16, 16]);
  await code(clip.embedImage(wrong), 'E_SHAPE');
  await code(clip.embedText([]), 'E_ARGUMENT');
  await code(clip.embedText([new Int32Array(10)]), 'E_SHAPE');
  await code(clip.embedText([new Int32Array(77).fill(1)]), 'E_ARGUMENT', /end-of-text/);
  await code(clip.embedText([new Int32Array(77).fill(60000)]), 'E_ARGUMENT', /vocabulary/);
  await code(clip.score(path.join(dir, 'missing.png'), 'x'), 'E_NOT_FOUND');
  clip.dispose();
  await code(clip.embedText(['a']), 'E_DISPOSED');
});
