import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { IdforgeError } from '../lib/errors.js';
import {
  bf16ToF32, f16ToF32, f16ToNumber, f32ToBf16, f32ToF16, numberToF16,
} from '../lib/io/half.js';
import { SafetensorsFile, writeSafetensors, type StDType } from '../lib/io/safetensors.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));

/** Reference value of an f16 bit pattern, straight from the IEEE definition. */
function f16Ref(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function bf16Ref(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 7) & 0xff;
  const m = h & 0x7f;
  if (e === 0) return s * m * 2 ** -133;
  if (e === 255) return m ? NaN : s * Infinity;
  return s * (1 + m / 128) * 2 ** (e - 127);
}

t.test('f16 -> f32 is exact for all 65536 patterns', async (t) => {
  const all = new Uint16Array(65536);
  for (let i = 0; i < 65536; i++) all[i] = i;
  const out = f16ToF32(all);
  let bad = 0;
  for (let i = 0; i < 65536; i++) {
    const want = f16Ref(i);
    const ok = Number.isNaN(want) ? Number.isNaN(out[i]!) : Object.is(out[i], want);
    if (!ok) bad++;
  }
  t.equal(bad, 0, 'every pattern matches the IEEE formula (signed zeros, subnormals, inf, NaN)');
  t.ok(Number.isNaN(f16ToNumber(0x7e00)) && Number.isNaN(f16ToNumber(0xfc01)), 'NaN stays NaN');
  t.equal(f16ToNumber(0x0001), 2 ** -24, 'smallest subnormal');
  t.equal(f16ToNumber(0x7bff), 65504, 'largest finite');
});

t.test('bf16 -> f32 is exact for all 65536 patterns', async (t) => {
  const all = new Uint16Array(65536);
  for (let i = 0; i < 65536; i++) all[i] = i;
  const out = bf16ToF32(all);
  let bad = 0;
  for (let i = 0; i < 65536; i++) {
    const want = bf16Ref(i);
    const ok = Number.isNaN(want) ? Number.isNaN(out[i]!) : Object.is(out[i], want);
    if (!ok) bad++;
  }
  t.equal(bad, 0);
});

t.test('f32 -> f16 rounds to nearest even', async (t) => {
  // Every non-NaN f16 value survives the round trip.
  let bad = 0;
  for (let h = 0; h < 65536; h++) {
    if (Number.isNaN(f16Ref(h))) {
      if (!Number.isNaN(f16ToNumber(numberToF16(f16Ref(h))))) bad++;
      continue;
    }
    if (numberToF16(f16Ref(h)) !== h) bad++;
  }
  t.equal(bad, 0, 'round trip of all f16 values (NaN stays NaN)');

  // Midpoints between neighbours go to the even one; a hair either side goes to the nearer one.
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  const nudge = (x: number, d: number) => {
    f32[0] = x;
    u32[0] = u32[0]! + d;
    return f32[0]!;
  };
  let badTies = 0;
  for (let h = 0; h < 0x7bff; h++) {
    const a = f16Ref(h);
    const b = f16Ref(h + 1);
    const mid = (a + b) / 2; // exact in f32 (11-bit significands)
    const even = h % 2 === 0 ? h : h + 1;
    if (numberToF16(mid) !== even) badTies++;
    if (numberToF16(nudge(mid, -1)) !== h) badTies++;
    if (numberToF16(nudge(mid, 1)) !== h + 1) badTies++;
  }
  t.equal(badTies, 0, 'ties to even, positive range (normals and subnormals)');
  t.equal(numberToF16(65519.99), 0x7bff, 'just below the overflow midpoint');
  t.equal(numberToF16(65520), 0x7c00, 'overflow midpoint rounds to inf');
  t.equal(numberToF16(1e10), 0x7c00);
  t.equal(numberToF16(-1e10), 0xfc00);
  t.equal(numberToF16(2 ** -25), 0x0000, 'half the smallest subnormal ties to 0');
  t.equal(numberToF16(nudge(2 ** -25, 1)), 0x0001);
  t.equal(numberToF16(-0), 0x8000, 'negative zero');
  t.equal(numberToF16(1e-30), 0);
  // The array form agrees with the scalar form.
  const xs = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i * 12.9898) * 10 ** ((i % 12) - 6));
  const arr = f32ToF16(xs);
  t.same([...arr], [...xs].map(numberToF16));
});

t.test('f32 -> bf16 rounds to nearest even', async (t) => {
  const x = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, NaN, Infinity, -0]);
  const b = f32ToBf16(x);
  t.equal(b[0], 0x3f80);
  t.equal(b[1], 0x3f80, 'tie rounds to even (down)');
  t.equal(b[2], 0x3f82, 'tie rounds to even (up)');
  t.equal(b[3], 0x3f81, 'above the tie rounds up');
  t.ok(Number.isNaN(bf16ToF32(b.subarray(4, 5))[0]!), 'NaN stays NaN');
  t.equal(b[5], 0x7f80);
  t.equal(b[6], 0x8000);
});

function tmpdir(t: Test): string {
  return t.testdir({});
}

t.test('write -> read round trip for every dtype', async (t) => {
  const dir = tmpdir(t);
  const file = path.join(dir, 'all.safetensors');
  const tensors: Record<string, { dtype: StDType; shape: number[]; data: ArrayBufferView }> = {
    f64: { dtype: 'F64', shape: [2, 2], data: new Float64Array([1.5, -2, 1e300, 0.1]) },
    f32: { dtype: 'F32', shape: [3], data: new Float32Array([1, -2.5, 3e-40]) },
    f16: { dtype: 'F16', shape: [2, 1, 2], data: new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7bff]) },
    bf16: { dtype: 'BF16', shape: [2], data: new Uint16Array([0x3f80, 0xc040]) },
    i64: { dtype: 'I64', shape: [3], data: new BigInt64Array([1n, -5n, 2147483647n]) },
    i32: { dtype: 'I32', shape: [2], data: new Int32Array([-7, 123456789]) },
    i16: { dtype: 'I16', shape: [2], data: new Int16Array([-300, 300]) },
    i8: { dtype: 'I8', shape: [3], data: new Int8Array([-128, 0, 127]) },
    u8: { dtype: 'U8', shape: [2], data: new Uint8Array([0, 255]) },
    bool: { dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) },
    empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    scalar: { dtype: 'F32', shape: [], data: new Float32Array([42]) },
  };
  writeSafetensors(file, tensors, { format: 'pt', note: 'ünïcode' });
  const raw = fs.readFileSync(file);
  const n = Number(raw.readBigUInt64LE(0));
  t.equal(n % 8, 0, 'header padded to a multiple of 8');
  t.equal(raw.subarray(8, 8 + n).toString('utf8').trimEnd().endsWith('}'), true, 'padding is trailing spaces');

  using f = SafetensorsFile.open(file);
  t.same(f.metadata, { format: 'pt', note: 'ünïcode' });
  t.same(f.names().sort(), Object.keys(tensors).sort());
  for (const [name, want] of Object.entries(tensors)) {
    const info = f.info(name);
    t.equal(info.dtype, want.dtype, `${name} dtype`);
    t.same(info.shape, want.shape, `${name} shape`);
    const bytes = f.readBytes(name);
    t.same(
      Buffer.compare(bytes, Buffer.from(want.data.buffer, want.data.byteOffset, want.data.byteLength)),
      0,
      `${name} bytes`,
    );
  }
  t.same([...f.readFloat32('f64')], [1.5, -2, Infinity, Math.fround(0.1)]);
  t.same([...f.readFloat32('f32')], [1, -2.5, Math.fround(3e-40)]);
  t.same([...f.readFloat32('f16')], [1, -2, 2 ** -24, 65504]);
  t.same([...f.readFloat32('bf16')], [1, -3]);
  t.same([...f.readFloat32('i64')], [1, -5, 2147483648]);
  t.same([...f.readFloat32('bool')], [1, 0, 1]);
  t.same([...f.readFloat32('u8')], [0, 255]);
  t.same([...f.readFloat32('i8')], [-128, 0, 127]);
  t.same([...f.readFloat32('i16')], [-300, 300]);
  t.same([...f.readFloat32('i32')], [-7, 123456792]);
  t.equal(f.readFloat32('empty').length, 0, '0-size tensor is fine');
  t.same([...f.readFloat32('scalar')], [42]);
  t.same([...f.readInt32('i64')], [1, -5, 2147483647]);
  t.same([...f.readInt32('i32')], [-7, 123456789]);
  t.same([...f.readInt32('i16')], [-300, 300]);
  t.same([...f.readInt32('i8')], [-128, 0, 127]);
  t.same([...f.readInt32('u8')], [0, 255]);
  t.same([...f.readInt32('bool')], [1, 0, 1]);
  t.throws(() => f.readInt32('f32'), { code: 'E_MODEL_FORMAT' }, 'float tensor is not an int tensor');
  t.throws(() => f.info('nope'), { code: 'E_MODEL_FORMAT', message: /all\.safetensors.*"nope"/ });
  f.close();
  t.throws(() => f.readBytes('f32'), { code: 'E_DISPOSED' });
});

t.test('I64 outside int32 is refused by readInt32', async (t) => {
  const file = path.join(tmpdir(t), 'big.safetensors');
  writeSafetensors(file, { ids: { dtype: 'I64', shape: [2], data: new BigInt64Array([1n, 1n << 40n]) } });
  using f = SafetensorsFile.open(file);
  t.throws(() => f.readInt32('ids'), { code: 'E_MODEL_FORMAT', message: /big\.safetensors.*"ids".*element 1/ });
});

t.test('writer argument checks', async (t) => {
  const file = path.join(tmpdir(t), 'w.safetensors');
  t.throws(() => writeSafetensors(file, { a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }), { code: 'E_ARGUMENT' });
  t.throws(() => writeSafetensors(file, { a: { dtype: 'F8' as StDType, shape: [1], data: new Uint8Array(1) } }), { code: 'E_ARGUMENT' });
  t.throws(() => writeSafetensors(file, { a: { dtype: 'F32', shape: [-1], data: new Float32Array(0) } }), { code: 'E_ARGUMENT' });
  t.throws(() => writeSafetensors(file, { __metadata__: { dtype: 'F32', shape: [0], data: new Float32Array(0) } }), { code: 'E_ARGUMENT' });
  t.notOk(fs.existsSync(file), 'nothing written on failure');
});

t.test('reads the fixtures', async (t) => {
  using f = SafetensorsFile.open(path.join(FIXTURES, 'tiny-sd/text_encoder/model.safetensors'));
  t.equal(f.metadata.format, 'pt');
  t.ok(f.has('text_model.embeddings.position_ids'));
  t.same([...f.readInt32('text_model.embeddings.position_ids').slice(0, 4)], [0, 1, 2, 3]);
  const w = f.info('text_model.embeddings.token_embedding.weight');
  t.same(w.shape, [49408, 32]);
  t.equal(f.readFloat32(w.name).length, 49408 * 32);
});

// ---------------------------------------------------------------------------------------------
// Malformed files: each must be a typed E_MODEL_FORMAT naming the file, without big allocations.

function withHeader(header: string | Buffer, opts: { data?: number; len?: bigint } = {}): Buffer {
  const h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header;
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(opts.len ?? BigInt(h.length));
  return Buffer.concat([len, h, Buffer.alloc(opts.data ?? 0)]);
}
const ok = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, ...extra });

const BAD: [string, Buffer, RegExp][] = [
  ['shorter than 8 bytes', Buffer.from([1, 2, 3]), /shorter than/],
  ['empty file', Buffer.alloc(0), /shorter than/],
  ['header length 0', withHeader('', { data: 8 }), /header length is 0/],
  ['header length 2^63', withHeader('{}', { len: 1n << 63n }), /exceeds/],
  ['header length 2^64-1', withHeader('{}', { len: (1n << 64n) - 1n }), /exceeds/],
  ['header past end of file', withHeader('{}', { len: 1000n }), /past the end/],
  ['header not UTF-8', withHeader(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), /UTF-8/],
  ['header not JSON', withHeader('{"a": '), /not valid JSON/],
  ['header is an array', withHeader('[1,2]'), /not a JSON object/],
  ['header is null', withHeader('null '), /not a JSON object/],
  ['entry not an object', withHeader('{"a": 5}'), /"a".*not a JSON object/],
  ['entry missing dtype', withHeader('{"a": {"shape": [1], "data_offsets": [0, 4]}}', { data: 4 }), /"a".*no "dtype"/],
  ['entry missing shape', withHeader('{"a": {"dtype": "F32", "data_offsets": [0, 4]}}', { data: 4 }), /"a".*no "shape"/],
  ['entry missing data_offsets', withHeader('{"a": {"dtype": "F32", "shape": [1]}}', { data: 4 }), /"a".*no "data_offsets"/],
  ['unknown dtype', withHeader('{"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}', { data: 1 }), /"a".*unknown dtype/],
  ['shape not an array', withHeader('{"a": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}', { data: 16 }), /"a".*shape/],
  ['negative dim', withHeader('{"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}', { data: 16 }), /"a".*shape/],
  ['fractional dim', withHeader('{"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}', { data: 4 }), /"a".*shape/],
  ['huge dim 1e12', withHeader('{"a": {"dtype": "F32", "shape": [1e12], "data_offsets": [0, 8]}}', { data: 8 }), /"a".*needs 4000000000000 bytes/],
  ['dims overflow 2^53', withHeader('{"a": {"dtype": "F32", "shape": [9007199254740991, 9007199254740991], "data_offsets": [0, 8]}}', { data: 8 }), /"a".*needs/],
  ['size mismatch', withHeader('{"a": {"dtype": "F16", "shape": [3], "data_offsets": [0, 8]}}', { data: 8 }), /"a".*needs 6 bytes/],
  ['offsets not a pair', withHeader('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}', { data: 4 }), /"a".*data_offsets/],
  ['offsets not integers', withHeader('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}}', { data: 4 }), /"a".*data_offsets/],
  ['begin > end', withHeader('{"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}', { data: 8 }), /"a".*begin > end/],
  ['end offset 2^53', withHeader('{"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 9007199254740992]}}', { data: 8 }), /"a".*data_offsets/],
  ['end offset 2^53-1 past the data', withHeader('{"a": {"dtype": "U8", "shape": [9007199254740991], "data_offsets": [0, 9007199254740991]}}', { data: 8 }), /"a".*past the end/],
  ['offsets outside data area', withHeader(ok(), { data: 4 }), /"a".*past the end/],
  ['overlapping tensors', withHeader(ok({ b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }), { data: 12 }), /"a" and "b" overlap/],
  ['metadata not an object', withHeader(ok({ __metadata__: ['x'] }), { data: 8 }), /__metadata__ is not a JSON object/],
  ['metadata value not a string', withHeader(ok({ __metadata__: { n: 1 } }), { data: 8 }), /__metadata__\["n"\]/],
  // Refused because the spec forbids them (JSON.parse would keep the last duplicate silently).
  ['duplicate tensor key', withHeader('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}', { data: 8 }), /key "a" appears twice/],
  ['duplicate key inside an entry', withHeader('{"a": {"dtype": "F32", "dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}', { data: 8 }), /key "dtype" appears twice/],
  ['hole between tensors', withHeader(ok({ b: { dtype: 'U8', shape: [2], data_offsets: [10, 12] } }), { data: 12 }), /bytes 8\.\.10 of the data area belong to no tensor/],
  ['trailing bytes after the last tensor', withHeader(ok(), { data: 12 }), /4 byte\(s\) after the last tensor/],
];

t.test('malformed files are E_MODEL_FORMAT naming the file', async (t) => {
  const dir = tmpdir(t);
  const before = process.memoryUsage().rss;
  for (const [what, bytes, msg] of BAD) {
    const file = path.join(dir, `${what.replace(/[^a-z0-9]+/gi, '_')}.safetensors`);
    fs.writeFileSync(file, bytes);
    let err: unknown;
    try {
      SafetensorsFile.open(file).close();
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof IdforgeError, `${what}: IdforgeError`);
    const e = err as IdforgeError;
    t.equal(e?.code, 'E_MODEL_FORMAT', `${what}: code`);
    t.ok(e?.message.includes(file), `${what}: message names the file`);
    t.match(e?.message, msg, `${what}: message says what is wrong`);
  }
  t.ok(process.memoryUsage().rss - before < 200 * 2 ** 20, 'no huge allocation');
});

t.test('valid edge cases are accepted', async (t) => {
  const dir = tmpdir(t);
  // Zero-size tensors may share an offset with a real one (gaps and trailing bytes are refused:
  // see the malformed cases).
  const file = path.join(dir, 'edge.safetensors');
  fs.writeFileSync(
    file,
    withHeader(
      JSON.stringify({
        z: { dtype: 'F32', shape: [0], data_offsets: [0, 0] },
        a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
        z2: { dtype: 'I64', shape: [3, 0], data_offsets: [2, 2] },
        b: { dtype: 'U8', shape: [2], data_offsets: [4, 6] },
      }),
      { data: 6 },
    ),
  );
  using f = SafetensorsFile.open(file);
  t.same(f.names(), ['z', 'a', 'z2', 'b']);
  t.same(f.metadata, {});
  t.equal(f.readFloat32('z').length, 0);
  t.equal(f.readInt32('z2').length, 0);
});

t.test('missing files, folders and pickles', async (t) => {
  const dir = tmpdir(t);
  t.throws(() => SafetensorsFile.open(path.join(dir, 'nope.safetensors')), { code: 'E_NOT_FOUND', message: /nope\.safetensors/ });
  t.throws(() => SafetensorsFile.open(dir), { code: 'E_MODEL_FORMAT', message: /is a folder/ });
  for (const ext of ['.ckpt', '.pt', '.pth', '.bin', '.CKPT']) {
    const file = path.join(dir, `model${ext}`);
    fs.writeFileSync(file, Buffer.from('PK\x03\x04 pickle data'));
    t.throws(() => SafetensorsFile.open(file), {
      code: 'E_MODEL_FORMAT',
      message: new RegExp(`model\\${ext}.*pickle checkpoint; idforge never unpickles files: convert it to \\.safetensors`),
    }, `${ext} refused`);
  }
  t.throws(() => SafetensorsFile.open(''), { code: 'E_ARGUMENT' });
});

t.test('a file truncated after open fails on read, not by hanging', async (t) => {
  const file = path.join(tmpdir(t), 'trunc.safetensors');
  writeSafetensors(file, { a: { dtype: 'F32', shape: [1024], data: new Float32Array(1024) } });
  using f = SafetensorsFile.open(file);
  fs.truncateSync(file, 200);
  t.throws(() => f.readFloat32('a'), { code: 'E_MODEL_FORMAT', message: /trunc\.safetensors.*"a".*unexpected end of file/ });
});
