import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { Identity } from '../lib/identity/identity.js';
import { expandPrompt } from '../lib/identity/placeholders.js';
import { writeSafetensors } from '../lib/io/safetensors.js';
import { ClipTokenizer } from '../lib/text/tokenizer.js';
import { GoldenFile, TINY_SD } from './helpers/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-identity-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

function ramp(n: number, seed = 1): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 12.9898 + i * 0.731) * (1 + (i % 7)));
}

const codeOf = (code: string, msg?: RegExp) => (msg ? { code, message: msg } : { code });

t.test('construction: nested and flat agree; v defaults to k', async (t) => {
  const k = ramp(2 * 3 * 4);
  const nested = Array.from({ length: 2 }, (_, s) => Array.from({ length: 3 }, (_, m) => Array.from(k.subarray((s * 3 + m) * 4, (s * 3 + m + 1) * 4))));
  const a = new Identity({ k, words: 3, dim: 4, method: 'custom' });
  const b = new Identity({ k: nested, method: 'custom' });
  t.same([a.stages, a.words, a.dim], [2, 3, 4]);
  t.same([b.stages, b.words, b.dim], [2, 3, 4]);
  t.same(Array.from(a.kData), Array.from(b.kData));
  t.same(a.k, nested);
  t.same(b.v, nested, 'v defaults to k');
  t.ok(a.kvShared);
  t.same(Array.from(a.kFlat(1)), Array.from(k.subarray(12, 24)));
  t.same(Array.from(a.vFlat(0)), Array.from(k.subarray(0, 12)));
  // [M][D] means S = 1
  const c = new Identity({ k: [[1, 2], [3, 4]], method: 'dreamidentity', name: 'x' });
  t.same([c.stages, c.words, c.dim, c.name], [1, 2, 2, 'x']);
  // separate v
  const d = new Identity({ k, v: ramp(24, 2), words: 3, dim: 4, stages: 2, method: 'sefi-ide' });
  t.notOk(d.kvShared);
  t.same(Array.from(d.vFlat(1)), Array.from(ramp(24, 2).subarray(12)));
  t.match(String(d), /sefi-ide.*stages 2, words 3, dim 4/);
  // the input is copied
  const src = new Float32Array([1, 2, 3, 4]);
  const e = new Identity({ k: src, words: 1, dim: 4, method: 'custom' });
  src[0] = 99;
  t.equal(e.kData[0], 1);
});

t.test('construction: bad arguments', async (t) => {
  const k = ramp(12);
  t.throws(() => new Identity({ k, words: 3, dim: 4, method: 'nope' as 'custom' }), codeOf('E_ARGUMENT', /method/));
  t.throws(() => new Identity({ k, dim: 4, method: 'custom' }), codeOf('E_ARGUMENT', /words and dim/));
  t.throws(() => new Identity({ k, words: 5, dim: 4, method: 'custom' }), codeOf('E_ARGUMENT', /not stages·words·dim/));
  t.throws(() => new Identity({ k, words: 3, dim: 4, stages: 2, method: 'custom' }), codeOf('E_ARGUMENT'));
  t.throws(() => new Identity({ k, words: 0, dim: 4, method: 'custom' }), codeOf('E_ARGUMENT', /positive integer/));
  t.throws(() => new Identity({ k: [[1, 2], [3]], method: 'custom' }), codeOf('E_ARGUMENT', /rectangular/));
  t.throws(() => new Identity({ k: [[[1, 2]], [[3, 4], [5, 6]]], method: 'custom' }), codeOf('E_ARGUMENT', /rectangular/));
  t.throws(() => new Identity({ k: [[1, NaN]], method: 'custom' }), codeOf('E_ARGUMENT', /non-finite/));
  t.throws(() => new Identity({ k: new Float32Array([1, Infinity]), words: 1, dim: 2, method: 'custom' }), codeOf('E_ARGUMENT', /non-finite/));
  t.throws(() => new Identity({ k: [[1, 2]], v: [[1, 2, 3]], method: 'custom' }), codeOf('E_ARGUMENT'));
  t.throws(() => new Identity({ k: [[1, 2]], dim: 3, method: 'custom' }), codeOf('E_ARGUMENT', /k must be of dim 3 \(as given\), got dim 2/));
  t.throws(() => new Identity({ k: [[]], method: 'custom' }), codeOf('E_ARGUMENT', /empty/));
  t.throws(() => new Identity({ k: [1, 2] as unknown as number[][], method: 'custom' }), codeOf('E_ARGUMENT'));
  t.throws(() => new Identity(undefined as unknown as { k: number[]; method: 'custom' }), codeOf('E_ARGUMENT'));
  t.throws(() => new Identity({ k: [[1]], method: 'custom', name: 3 as unknown as string }), codeOf('E_ARGUMENT', /name/));
  const id = new Identity({ k: [[1]], method: 'custom' });
  t.throws(() => id.kFlat(1), codeOf('E_ARGUMENT', /stage must be an integer in \[0, 0\], got 1/));
  t.throws(() => id.vFlat(-1), codeOf('E_ARGUMENT'));
});

t.test('stageFor boundaries', async (t) => {
  const id = new Identity({ k: ramp(5 * 2), stages: 5, words: 1, dim: 2, method: 'sefi-ide' });
  for (let s = 0; s < 200; s++) t.equal(id.stageFor(s), 0, `t=${s}`, { diagnostic: false });
  t.equal(id.stageFor(199.9), 0);
  t.equal(id.stageFor(200), 1);
  t.equal(id.stageFor(399), 1);
  t.equal(id.stageFor(400), 2);
  t.equal(id.stageFor(800), 4);
  t.equal(id.stageFor(999), 4);
  t.equal(id.stageFor(1000), 4, 'clamped to S−1');
  t.equal(id.stageFor(50, 100), 2, 'other training lengths');
  const one = new Identity({ k: [[1]], method: 'dreamidentity' });
  t.equal(one.stageFor(0), 0);
  t.equal(one.stageFor(999), 0);
  t.throws(() => id.stageFor(NaN), codeOf('E_ARGUMENT'));
  t.throws(() => id.stageFor(-1), codeOf('E_ARGUMENT'));
  t.throws(() => id.stageFor(1, 0), codeOf('E_ARGUMENT'));
});

t.test('save / load round trip', async (t) => {
  const k = ramp(5 * 1 * 32, 3);
  const v = ramp(5 * 1 * 32, 4);
  const id = new Identity({ k, v, stages: 5, words: 1, dim: 32, method: 'sefi-ide', name: 'Ada Lovelace' });
  const file = path.join(tmp, 'ada.safetensors');
  id.save(file, { textDim: 32, vocabHash: 'abc123' });
  const back = Identity.load(file, { dim: 32, vocabHash: 'abc123' });
  t.same([back.stages, back.words, back.dim, back.method, back.name], [5, 1, 32, 'sefi-ide', 'Ada Lovelace']);
  t.same(Array.from(back.kData), Array.from(k));
  t.same(Array.from(back.vData), Array.from(v));
  const { SafetensorsFile } = await import('../lib/io/safetensors.js');
  const st = SafetensorsFile.open(file);
  t.match(st.metadata, {
    format: 'idforge-identity', version: '1', method: 'sefi-ide', stages: '5', words: '1', dim: '32', text_dim: '32',
    vocab_hash: 'abc123', name: 'Ada Lovelace',
  });
  t.ok(!Number.isNaN(Date.parse(st.metadata.created!)), 'created is a date');
  t.same(st.info('k').shape, [5, 1, 32]);
  t.equal(st.info('v').dtype, 'F32');
  st.close();
  // k = v round trips as shared; no name, defaults
  const dream = new Identity({ k: ramp(4 * 32, 5), words: 4, dim: 32, method: 'dreamidentity' });
  const f2 = path.join(tmp, 'dream.safetensors');
  dream.save(f2);
  const d2 = Identity.load(f2);
  t.ok(d2.kvShared);
  t.equal(d2.name, undefined);
  t.same(Array.from(d2.kFlat(0)), Array.from(dream.kFlat(0)));
  t.same(Array.from(d2.vFlat(0)), Array.from(dream.kFlat(0)));
  // an unknown recorded vocabulary is not refused; a different one is
  t.ok(Identity.load(f2, { vocabHash: 'zzz' }));
  t.throws(() => Identity.load(file, { vocabHash: 'zzz' }), codeOf('E_IDENTITY', /different tokenizer/));
  t.throws(() => id.save(path.join(tmp, 'x.safetensors'), { textDim: 0 }), codeOf('E_ARGUMENT'));
});

t.test('load: corrupt and mismatched files give typed errors', async (t) => {
  const id = new Identity({ k: ramp(2 * 3 * 8), stages: 2, words: 3, dim: 8, method: 'custom' });
  const good = path.join(tmp, 'good.safetensors');
  id.save(good, { textDim: 8 });
  const meta = {
    format: 'idforge-identity', version: '1', method: 'custom', stages: '2', words: '3', dim: '8', text_dim: '8', vocab_hash: '', created: 'x',
  };
  const data = { dtype: 'F32' as const, shape: [2, 3, 8], data: ramp(48) };
  const write = (name: string, tensors: Record<string, typeof data>, md: Record<string, string> | undefined) => {
    const f = path.join(tmp, name);
    writeSafetensors(f, tensors, md);
    return f;
  };

  t.throws(() => Identity.load(path.join(tmp, 'missing.safetensors')), codeOf('E_NOT_FOUND'));
  const bytes = fs.readFileSync(good);
  const trunc = path.join(tmp, 'trunc.safetensors');
  fs.writeFileSync(trunc, bytes.subarray(0, bytes.length - 10));
  t.throws(() => Identity.load(trunc), codeOf('E_MODEL_FORMAT', /trunc\.safetensors/));
  const junk = path.join(tmp, 'junk.safetensors');
  fs.writeFileSync(junk, 'hello world, not a tensor file');
  t.throws(() => Identity.load(junk), codeOf('E_MODEL_FORMAT', /junk\.safetensors/));

  t.throws(() => Identity.load(write('nometa.safetensors', { k: data, v: data }, undefined)), codeOf('E_MODEL_FORMAT', /nometa.*not an idforge identity/));
  t.throws(() => Identity.load(write('fmt.safetensors', { k: data, v: data }, { ...meta, format: 'lora' })), codeOf('E_MODEL_FORMAT', /"lora"/));
  t.throws(() => Identity.load(write('ver.safetensors', { k: data, v: data }, { ...meta, version: '7' })), codeOf('E_MODEL_FORMAT', /newer/));
  t.throws(() => Identity.load(write('meth.safetensors', { k: data, v: data }, { ...meta, method: 'magic' })), codeOf('E_MODEL_FORMAT', /method/));
  t.throws(() => Identity.load(write('stages.safetensors', { k: data, v: data }, { ...meta, stages: '5' })), codeOf('E_MODEL_FORMAT', /shape \[2,3,8\].*\[5,3,8\]/));
  t.throws(() => Identity.load(write('words.safetensors', { k: data, v: data }, { ...meta, words: 'three' })), codeOf('E_MODEL_FORMAT', /words/));
  t.throws(() => Identity.load(write('nov.safetensors', { k: data }, meta)), codeOf('E_MODEL_FORMAT', /"v" is missing/));
  t.throws(() => Identity.load(write('vshape.safetensors', { k: data, v: { ...data, shape: [6, 8] } }, meta)), codeOf('E_MODEL_FORMAT', /"v" has shape/));
  const nan = ramp(48);
  nan[17] = NaN;
  t.throws(() => Identity.load(write('nan.safetensors', { k: data, v: { ...data, data: nan } }, meta)), codeOf('E_MODEL_FORMAT', /non-finite.*17/));
  const i32 = { dtype: 'I32' as const, shape: [2, 3, 8], data: new Int32Array(48) };
  t.throws(() => Identity.load(write('int.safetensors', { k: i32 as unknown as typeof data, v: data }, meta)), codeOf('E_MODEL_FORMAT', /I32/));

  t.throws(() => Identity.load(good, { dim: 32 }), codeOf('E_IDENTITY', /identity has dim 8, the model's text width is 32/));
  t.ok(Identity.load(good, { dim: 8 }));
});

const tokenizer = ClipTokenizer.fromDir(`${TINY_SD}/tokenizer`);

t.test('placeholders: a prompt without placeholders tokenizes like encode()', async (t) => {
  for (const p of ['a photo of the face of person, oil painting', '', 'Hello   WORLD!! <b>', 'x '.repeat(100)]) {
    const e = expandPrompt(tokenizer, p, undefined);
    const ref = tokenizer.encode(p);
    t.same(Array.from(e.ids), Array.from(ref.ids), JSON.stringify(p.slice(0, 30)));
    t.equal(e.truncated, ref.truncated);
    t.equal(e.tokenCount, ref.tokenCount);
    t.ok(e.slots.every((s) => s === -1));
    t.same(e.rows, []);
    t.equal(e.dim, undefined);
    t.equal(e.vectors(0, 'k').length, 0);
  }
  t.ok(expandPrompt(tokenizer, 'a cat', new Map()), 'an empty map is no identity');
});

t.test('placeholders: the golden injection case', async (t) => {
  const g = new GoldenFile('text_encoder');
  t.teardown(() => g.close());
  const goldIds = g.i32('inject_ids');
  const goldSlots = Array.from(g.i32('inject_slots'));
  const vectors = g.f32('inject_vectors'); // [2, 32]
  const id = new Identity({ k: vectors, words: 2, dim: 32, method: 'dreamidentity' });
  // The golden marks its two slots with the token "face" (1710); the id is replaced before positions
  // are added, so only the positions matter — with slotToken 1710 the ids are the golden's exactly.
  const e = expandPrompt(tokenizer, 'a photo of <id> playing guitar', new Map([['me', id]]), { slotToken: 1710 });
  t.same(Array.from(e.ids), Array.from(goldIds));
  const pos = [...e.slots.keys()].filter((i) => e.slots[i]! >= 0);
  t.same(pos, goldSlots);
  t.same(pos.map((p) => e.slots[p]), [0, 1]);
  t.same(Array.from(e.vectors(0, 'k')), Array.from(vectors));
  t.same(Array.from(e.vectors(0, 'v')), Array.from(vectors));
  t.same(e.rows, [{ name: 'me', word: 0 }, { name: 'me', word: 1 }]);
  t.equal(e.dim, 32);
  t.ok(e.kvShared);
  // the default slot token is "*"
  const d = expandPrompt(tokenizer, 'a photo of <id> playing guitar', new Map([['me', id]]));
  const star = tokenizer.idsFor('*')[0]!;
  t.same(goldSlots.map((p) => d.ids[p]), [star, star]);
  t.same(Array.from(d.ids).filter((_, i) => !goldSlots.includes(i)), Array.from(goldIds).filter((_, i) => !goldSlots.includes(i)));
});

t.test('placeholders: named identities, stages, K/V, errors', async (t) => {
  const a = new Identity({ k: ramp(2 * 4, 1), words: 2, dim: 4, method: 'dreamidentity', name: 'Ann' });
  const b = new Identity({ k: ramp(5 * 4, 2), v: ramp(5 * 4, 3), stages: 5, words: 1, dim: 4, method: 'sefi-ide' });
  const both = new Map([['ann', a], ['bob', b]]);
  const e = expandPrompt(tokenizer, '<id:ann> and <id: bob > and <id:ann> again', both);
  const text = tokenizer.idsFor('and');
  // BOS, ann×2, and, bob, and, ann×2, again, EOS
  const expect = [49406, -1, -1, text[0], -2, text[0], -1, -1, ...tokenizer.idsFor('again'), 49407];
  const star = tokenizer.idsFor('*')[0]!;
  t.same(Array.from(e.ids.subarray(0, expect.length)), expect.map((x) => (x! < 0 ? star : x)));
  t.same(Array.from(e.slots.subarray(0, expect.length)), [-1, 0, 1, -1, 2, -1, 0, 1, -1, -1], 'a repeated identity shares rows');
  t.same(e.rows, [{ name: 'ann', word: 0 }, { name: 'ann', word: 1 }, { name: 'bob', word: 0 }]);
  t.equal(e.stages, 5);
  t.notOk(e.kvShared);
  t.equal(e.stageFor(999), 4);
  t.equal(e.stageFor(0), 0);
  for (const s of [0, 3]) {
    const k = e.vectors(s, 'k');
    const v = e.vectors(s, 'v');
    t.same(Array.from(k.subarray(0, 8)), Array.from(a.kFlat(0)), 'S=1 identity serves every stage');
    t.same(Array.from(k.subarray(8)), Array.from(b.kFlat(s)));
    t.same(Array.from(v.subarray(8)), Array.from(b.vFlat(s)));
  }
  t.throws(() => e.vectors(5, 'k'), { code: 'E_ARGUMENT' });
  t.throws(() => e.vectors(0, 'q' as 'k'), { code: 'E_ARGUMENT' });

  // <id> with one identity, whatever its key
  const one = expandPrompt(tokenizer, 'portrait of <id>', new Map([['whoever', a]]));
  t.same(one.rows.map((r) => r.name), ['whoever', 'whoever']);
  // custom placeholder word
  const custom = expandPrompt(tokenizer, 'portrait of <person>, <id>', new Map([['x', a]]), { placeholder: 'person' });
  t.equal(custom.slots.filter((s) => s >= 0).length, 2);
  t.ok(custom.ids.length === 77);

  t.throws(() => expandPrompt(tokenizer, 'a <id>', both), codeOf('E_IDENTITY', /use <id:name>/));
  t.throws(() => expandPrompt(tokenizer, 'a <id:carl>', both), codeOf('E_IDENTITY', /no identity named "carl".*ann, bob/));
  t.throws(() => expandPrompt(tokenizer, 'a <id:>', both), codeOf('E_IDENTITY'));
  t.throws(() => expandPrompt(tokenizer, 'a photo of <id>', undefined), codeOf('E_IDENTITY', /no identity was given/));
  t.throws(() => expandPrompt(tokenizer, 'a photo of a man', new Map([['a', a]])), codeOf('E_IDENTITY', /no <id> placeholder/));
  const wide = new Identity({ k: ramp(8), words: 1, dim: 8, method: 'custom' });
  t.throws(() => expandPrompt(tokenizer, '<id:a> <id:w>', new Map([['a', a], ['w', wide]])), codeOf('E_IDENTITY', /same dim/));
  const three = new Identity({ k: ramp(12), stages: 3, words: 1, dim: 4, method: 'custom' });
  t.throws(() => expandPrompt(tokenizer, '<id:b> <id:c>', new Map([['b', b], ['c', three]])), codeOf('E_IDENTITY', /stages/));
  t.throws(() => expandPrompt(tokenizer, 'x', undefined, { placeholder: 'a b' }), codeOf('E_ARGUMENT'));
  t.throws(() => expandPrompt(tokenizer, 'x <id>', new Map([['a', a]]), { slotToken: tokenizer.eos }), codeOf('E_ARGUMENT'));
  t.throws(() => expandPrompt(tokenizer, 3 as unknown as string, undefined), codeOf('E_ARGUMENT'));
  t.throws(() => expandPrompt(tokenizer, 'x', {} as Map<string, Identity>), codeOf('E_ARGUMENT'));
});

t.test('placeholders: 77-token limit', async (t) => {
  const a = new Identity({ k: ramp(4 * 4), words: 4, dim: 4, method: 'dreamidentity' });
  const m = new Map([['a', a]]);
  // 71 text tokens + 4 slots = 75: fits exactly
  const fit = expandPrompt(tokenizer, `${'x '.repeat(71)}<id>`, m);
  t.notOk(fit.truncated);
  t.same(Array.from(fit.slots.subarray(72, 77)), [0, 1, 2, 3, -1]);
  t.equal(fit.ids[76], tokenizer.eos);
  // 72 + 4 = 76: the last slot would be cut → error naming the counts
  t.throws(() => expandPrompt(tokenizer, `${'x '.repeat(72)}<id>`, m), codeOf('E_IDENTITY', /76 tokens \(72 text \+ 4 identity slots\).*75/));
  // text after the slots may be truncated as usual
  const tail = expandPrompt(tokenizer, `<id> ${'y '.repeat(100)}`, m);
  t.ok(tail.truncated);
  t.same(Array.from(tail.slots.subarray(0, 6)), [-1, 0, 1, 2, 3, -1]);
  t.equal(tail.tokenCount, 77);
});

t.test('lib/identity/index.ts and lib/dreamidentity/index.ts re-export their rooms', async (t) => {
  const api = await import('../lib/identity/index.js');
  for (const name of ['Identity', 'expandPrompt', 'prepareFace', 'estimateSimilarity', 'stageIndex'])
    t.type((api as Record<string, unknown>)[name], 'function', name);
  const di = await import('../lib/dreamidentity/index.js');
  for (const name of ['IdEncoder', 'EncoderTrainer', 'trainEncoder', 'buildEditDataset'])
    t.type((di as Record<string, unknown>)[name], 'function', name);
});
