import t from 'tap';
import { readFileSync } from 'node:fs';
import { ClipTokenizer, pack, basicClean, CLIP_BOS, CLIP_EOS } from '../lib/text/tokenizer.js';

const dir = new URL('./fixtures/tiny-sd/tokenizer/', import.meta.url).pathname;
const golden = JSON.parse(
  readFileSync(new URL('./fixtures/golden/tokenizer.json', import.meta.url), 'utf8'),
) as { text: string; ids: number[] }[];

const tok = ClipTokenizer.fromDir(dir);

t.test('vocab and constants', async (t) => {
  t.equal(tok.bos, 49406);
  t.equal(tok.eos, 49407);
  t.equal(tok.maxLength, 77);
  t.equal(tok.vocabSize, 49408);
  t.match(tok.vocabHash, /^[0-9a-f]{64}$/);
  t.equal(ClipTokenizer.fromFiles(`${dir}vocab.json`, `${dir}merges.txt`).vocabHash, tok.vocabHash);
});

for (const c of golden) {
  t.test(`golden: ${JSON.stringify(c.text).slice(0, 60)}`, async (t) => {
    const enc = tok.encode(c.text);
    t.equal(enc.ids.length, 77);
    t.same(Array.from(enc.ids), c.ids);
    const content = c.ids.slice(1).indexOf(CLIP_EOS);
    t.equal(enc.tokenCount, content + 2);
    const ids = tok.idsFor(c.text);
    t.equal(enc.truncated, ids.length > 75);
    t.same(ids.slice(0, 75), c.ids.slice(1, 1 + Math.min(75, ids.length)));
    t.equal(tok.tokenize(c.text).length, ids.length);
  });
}

t.test('over-long prompt is truncated to 75 content tokens', async (t) => {
  const long = golden.find((c) => tok.idsFor(c.text).length > 75);
  t.ok(long, 'golden has an over-long prompt');
  const enc = tok.encode(long!.text);
  t.equal(enc.truncated, true);
  t.equal(enc.tokenCount, 77);
  t.equal(enc.ids[76], CLIP_EOS);
});

t.test('pieces and cleaning', async (t) => {
  t.same(tok.tokenize('A Photo'), ['a</w>', 'photo</w>']);
  t.equal(basicClean('  Hello\t\nWORLD  \u0000x\u200b '), 'hello world x');
  t.equal(basicClean('人人'), '人 人');
  // NFC: a decomposed é tokenizes like the composed one.
  t.same(tok.idsFor('cafe\u0301'), tok.idsFor('caf\u00e9'));
  t.same(tok.idsFor('x <|endoftext|> y'), [...tok.idsFor('x'), CLIP_EOS, ...tok.idsFor('y')]);
  t.equal(tok.decode(tok.encode('a photo of the face of person').ids), 'a photo of the face of person');
});

t.test('pack joins segments', async (t) => {
  const a = tok.idsFor('a photo of');
  const b = tok.idsFor('the face of person');
  t.same(Array.from(pack([...a, ...b]).ids), Array.from(tok.encode('a photo of the face of person').ids));
  const p = pack([]);
  t.equal(p.ids[0], CLIP_BOS);
  t.equal(p.ids[1], CLIP_EOS);
  t.equal(p.tokenCount, 2);
  t.equal(p.truncated, false);
  const full = pack(new Array(75).fill(320));
  t.equal(full.truncated, false);
  t.equal(full.tokenCount, 77);
  t.equal(pack(new Array(76).fill(320)).truncated, true);
  t.throws(() => pack([1.5]), { name: 'IdforgeError', code: 'E_ARGUMENT' });
});

t.test('errors', async (t) => {
  t.throws(() => ClipTokenizer.fromDir('/nonexistent/tokenizer'), { name: 'IdforgeError', code: 'E_NOT_FOUND' });
  t.throws(() => ClipTokenizer.fromContents('[1,2]', ''), { name: 'IdforgeError', code: 'E_MODEL_FORMAT' });
  t.throws(() => tok.encode(42 as unknown as string), { name: 'IdforgeError', code: 'E_ARGUMENT' });
});

t.test('a huge single word is truncated, not tokenized in full', async (t) => {
  const r = tok.encode('a'.repeat(200_000));
  t.equal(r.truncated, true);
  t.equal(r.ids.length, 77);
  t.equal(r.ids[0], 49406);
  t.equal(r.ids[76], 49407);
});
