// Identities inside generate(): placeholders, staged K/V contexts switching exactly at the stage
// boundaries, two identities in one prompt, encoder identities, attention maps and heatmaps.
import t from 'tap';
import { Engine } from '../lib/engine.js';
import { attentionHeatmap } from '../lib/attention.js';
import { Identity } from '../lib/identity/identity.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';

const D = 32;
const vec = (seed: number, n = D) => Float32Array.from({ length: n }, (_, i) => 0.02 * Math.sin(seed * 7.1 + i * 1.3));
const eqBytes = (a: ArrayBufferView, b: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

t.test('identities in generate()', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const base = { prompt: 'a photo of <id>', width: 128, height: 128, steps: 10, seed: 3 };

  t.test('stage schedule: floor(t·S/1000), contexts switch exactly at the boundary', async (t) => {
    const same = new Float32Array(5 * D);
    for (let s = 0; s < 5; s++) same.set(vec(1), s * D);
    const diff0 = same.slice();
    diff0.set(vec(9), 0); // only stage 0 (t < 200) differs
    const A = new Identity({ k: same, v: same, stages: 5, words: 1, dim: D, method: 'sefi-ide' });
    const B = new Identity({ k: diff0, v: same, stages: 5, words: 1, dim: D, method: 'sefi-ide' });
    const stages: number[] = [];
    const cap = { layers: ['mid_block.attentions.0.transformer_blocks.0.attn2'] };
    const ra = await engine.generate({ ...base, identity: A, captureAttention: cap, onProgress: (p) => p.fraction === undefined && stages.push(p.stage) });
    const rb = await engine.generate({ ...base, identity: B, captureAttention: cap });
    const ts = engine.scheduler.timesteps(10);
    t.same(stages, [...ts].map((x) => Math.floor((x * 5) / 1000)), 'reported stage per step');
    const firstDiff = ra.attention!.maps.findIndex((m, i) => !eqBytes(m.data, rb.attention!.maps[i]!.data));
    const firstStage0 = [...ts].findIndex((x) => x < 200);
    t.equal(firstDiff, firstStage0, `maps identical until the first stage-0 step (${firstStage0 + 1}), different from it on`);
    for (const r of [ra, rb]) { r.latents.dispose(); r.pixels.dispose(); }
  });

  t.test('an identity changes the image; the same identity is deterministic', async (t) => {
    const id = new Identity({ k: vec(2), words: 1, dim: D, method: 'custom' });
    const a = await engine.generate({ ...base, identity: id });
    const b = await engine.generate({ ...base, identity: id });
    const c = await engine.generate({ ...base, prompt: 'a photo of person' });
    t.ok(eqBytes(a.images[0]!.data, b.images[0]!.data));
    t.notOk(eqBytes(a.images[0]!.data, c.images[0]!.data));
    for (const r of [a, b, c]) { r.latents.dispose(); r.pixels.dispose(); }
  });

  t.test('two identities in one prompt, separate keys and values', async (t) => {
    const x = new Identity({ k: vec(3), v: vec(4), words: 1, dim: D, method: 'custom', name: 'x' });
    const y = new Identity({ k: [[...vec(5)], [...vec(6)]], words: 2, dim: D, method: 'custom', name: 'y' });
    const r = await engine.generate({ ...base, prompt: '<id:x> and <id:y> at the beach', identities: { x, y }, captureAttention: { steps: [10], reduce: 'mean' } });
    t.equal(r.images.length, 1);
    const cap = r.attention!;
    const slotPos = (name: string) => [...cap.slots.keys()].filter((i) => cap.slots[i]! >= 0 && cap.slotNames[cap.slots[i]!] === name);
    t.equal(slotPos('x').length, 1);
    t.equal(slotPos('y').length, 2);
    const hx = await attentionHeatmap(r, '<id:x>');
    const hy = await attentionHeatmap(r, '<id:y>');
    t.notOk(eqBytes(hx.data, hy.data), 'each identity has its own heatmap');
    await t.rejects(attentionHeatmap(r, '<id:z>'), { code: 'E_ARGUMENT' });
    r.latents.dispose(); r.pixels.dispose();
    using k = await engine.encodeText('<id:x> and <id:y>', { identities: { x, y }, kind: 'k' });
    using v = await engine.encodeText('<id:x> and <id:y>', { identities: { x, y }, kind: 'v' });
    t.same(k.shape, [1, 77, D]);
    t.notOk(eqBytes(k.toFloat32(), v.toFloat32()), 'k and v contexts differ when the identity has separate K/V words');
  });

  t.test('identityScale interpolates the words towards "person"', async (t) => {
    const id = new Identity({ k: vec(2), words: 1, dim: D, method: 'custom' });
    const person = new Identity({ k: await engine.wordEmbedding('person'), words: 1, dim: D, method: 'custom' });
    const one = await engine.generate({ ...base, identity: id });
    const dflt = await engine.generate({ ...base, identity: id, identityScale: 1 });
    const zero = await engine.generate({ ...base, identity: id, identityScale: 0 });
    const asPerson = await engine.generate({ ...base, identity: person });
    const half = await engine.generate({ ...base, identity: id, identityScale: 0.5 });
    t.ok(eqBytes(one.images[0]!.data, dflt.images[0]!.data), 'scale 1 is the default');
    t.ok(eqBytes(zero.images[0]!.data, asPerson.images[0]!.data), 'scale 0 is the word "person" in the slots');
    t.notOk(eqBytes(half.images[0]!.data, one.images[0]!.data));
    t.notOk(eqBytes(half.images[0]!.data, zero.images[0]!.data));
    for (const r of [one, dflt, zero, asPerson, half]) { r.latents.dispose(); r.pixels.dispose(); }
    await t.rejects(engine.wordEmbedding('a photo'), { code: 'E_ARGUMENT' });
  });

  t.test('identity errors', async (t) => {
    const wrongDim = new Identity({ k: vec(1, 16), words: 1, dim: 16, method: 'custom' });
    await t.rejects(engine.generate({ ...base, identity: wrongDim }), { code: 'E_IDENTITY', message: /dim 16.*32/ });
    const id = new Identity({ k: vec(1), words: 1, dim: D, method: 'custom', name: 'x' });
    await t.rejects(engine.generate({ ...base, prompt: 'a photo of <id:nobody>', identities: { x: id } }), { code: 'E_IDENTITY' });
    await t.rejects(engine.generate({ ...base }), { code: 'E_IDENTITY' }, 'a placeholder with no identity');
    const many = new Identity({ k: new Float32Array(74 * D).fill(0.01), words: 74, dim: D, method: 'custom' });
    await t.rejects(engine.generate({ ...base, prompt: 'a very detailed photo of <id> in a garden with flowers and trees', identity: many }), { code: 'E_IDENTITY' }, 'expansion past 77 tokens');
  });

  t.test('an encoder identity from a real image file', async (t) => {
    const enc = await IdEncoder.load(TINY_ID, { device: 'cpu' });
    t.teardown(() => enc.dispose());
    // a drawn face, which the face detector does not take for one: the centre crop
    const id = await enc.encode(fixture('faces/face-a.png'), { landmarks: 'centre' });
    const id2 = await enc.encode(fixture('faces/face-a.png'), { landmarks: 'centre' });
    t.ok(eqBytes(id.kData, id2.kData), 'encoding is deterministic');
    const a = await engine.generate({ ...base, identity: id });
    const b = await engine.generate({ ...base, identity: id });
    const c = await engine.generate({ ...base, prompt: 'a photo of' });
    t.ok(eqBytes(a.images[0]!.data, b.images[0]!.data), 'generate with an encoder identity is deterministic');
    t.notOk(eqBytes(a.images[0]!.data, c.images[0]!.data), 'and differs from one without');
    for (const r of [a, b, c]) { r.latents.dispose(); r.pixels.dispose(); }
  });

  t.test('captured attention for users and the heatmap', async (t) => {
    const id = new Identity({ k: vec(2), words: 1, dim: D, method: 'custom' });
    const r = await engine.generate({ ...base, steps: 4, identity: id, captureAttention: { layers: { resolution: 8 }, steps: [2, 4], reduce: 'mean' } });
    const cap = r.attention!;
    t.ok(cap.maps.length > 0);
    t.same([...new Set(cap.maps.map((m) => m.step))], [2, 4]);
    for (const m of cap.maps) {
      t.equal(m.heads, 1);
      t.equal(m.height, 8);
      t.equal(m.data.length, 64 * 77);
      let row = 0;
      for (let j = 0; j < 77; j++) row += m.data[j]!;
      t.ok(Math.abs(row - 1) < 1e-4, 'each query row is a probability distribution');
    }
    t.ok(cap.tokens.includes('<id>'));
    const heat = await attentionHeatmap(r, '<id>');
    t.same([heat.width, heat.height, heat.data.length], [128, 128, 128 * 128 * 3]);
    const heatWord = await attentionHeatmap(r, 'photo');
    t.equal(heatWord.width, 128);
    await t.rejects(attentionHeatmap(r, 'zebra'), { code: 'E_ARGUMENT' });
    r.latents.dispose(); r.pixels.dispose();
  });
});
