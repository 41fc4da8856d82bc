import t from 'tap';
import { Tensor } from '../lib/tensor.js';
import { backends, memory } from '../lib/native.js';
import { IdforgeError } from '../lib/errors.js';

t.test('backends() shape', async (t) => {
  const b = backends();
  t.match(b.cpu, { available: true, isa: /^(avx512|avx2|sse2|neon)$/ });
  t.ok(b.cpu.supported.includes(b.cpu.isa), 'the chosen kernels are among the supported ones');
  t.type(b.cuda.compiled, 'boolean');
  t.type(b.cuda.available, 'boolean');
  if (!b.cuda.available) t.match(b.cuda.reason, /\w+/, 'a readable reason when CUDA is unavailable');
  else t.match(b.cuda.device, /\w+/);
});

t.test('round trips for every dtype', async (t) => {
  const f = new Float32Array([1.5, -2.25, 3e-5, 65504, -0, 7]);
  using a = Tensor.from(f, [2, 3]);
  t.same(a.shape, [2, 3]);
  t.equal(a.dtype, 'float32');
  t.equal(a.device, 'cpu');
  t.same([...a.toFloat32()], [...f]);

  // float16: every value here is exactly representable, so the trip is exact.
  using h = a.to('float16');
  t.equal(h.dtype, 'float16');
  t.same([...h.toFloat32()], [1.5, -2.25, h.toFloat32()[2], 65504, -0, 7]);
  t.ok(Math.abs(h.toFloat32()[2]! - 3e-5) < 1e-7, 'a subnormal half survives');
  const bits = new Uint16Array([0x3c00, 0xc000, 0x7c00, 0x0001]); // 1, -2, inf, smallest subnormal
  using h2 = Tensor.from(bits, [4], { dtype: 'float16' });
  t.same([...h2.toFloat32()], [1, -2, Infinity, 2 ** -24]);

  using bf = a.to('bfloat16');
  t.equal(bf.dtype, 'bfloat16');
  t.same([...bf.toFloat32()].slice(0, 2), [1.5, -2.25]);
  using bf2 = Tensor.from(new Uint16Array([0x3f80, 0xc040]), [2], { dtype: 'bfloat16' });
  t.same([...bf2.toFloat32()], [1, -3]);

  using i = Tensor.from(new Int32Array([1, -2, 2147483647]), [3]);
  t.equal(i.dtype, 'int32');
  t.same([...i.toInt32()], [1, -2, 2147483647]);
  using l = Tensor.from(new BigInt64Array([5n, -6n]), [2]);
  t.equal(l.dtype, 'int64');
  t.same([...l.toInt32()], [5, -6]);
  using u = Tensor.from(new Uint8Array([0, 255, 7]), [3]);
  t.equal(u.dtype, 'uint8');
  t.same([...u.toFloat32()], [0, 255, 7]);
  using d = Tensor.from(new Float64Array([0.25, 4]), [2]);
  t.equal(d.dtype, 'float32');
  t.same([...d.toFloat32()], [0.25, 4]);
});

t.test('shape and dtype errors', async (t) => {
  t.throws(() => Tensor.from(new Float32Array(5), [2, 3]), { code: 'E_SHAPE' });
  t.throws(() => Tensor.from(new Float32Array(1), [-1]), { code: 'E_SHAPE' });
  t.throws(() => Tensor.from(new Float32Array(1), [1.5]), { code: 'E_SHAPE' });
  t.throws(() => Tensor.from(new Uint16Array(1), [1]), { code: 'E_ARGUMENT' });
  t.throws(() => Tensor.from(new Float32Array(1), [1], { device: 'tpu' as 'cpu' }), { code: 'E_ARGUMENT' });
  t.throws(() => Tensor.from([1, 2, 3] as unknown as Float32Array, [3]), { code: 'E_ARGUMENT', message: /typed array/ });
  t.throws(() => Tensor.from(new Int16Array(3) as unknown as Int32Array, [3]), { code: 'E_ARGUMENT', message: /must be a supported typed array .*, got an Int16Array of 3/ });
  t.throws(() => Tensor.zeros([1e7, 1e7]), { code: 'E_SHAPE' }, 'more than 2^40 elements is refused before allocating');
  let code = '';
  try {
    Tensor.zeros([1e6, 1e6]).dispose();
  } catch (e) {
    code = (e as { code: string }).code;
  }
  t.ok(['E_OOM', 'E_SHAPE'].includes(code), `an impossible allocation is a typed error (${code})`);
  const shared = new Float32Array(new SharedArrayBuffer(8));
  shared.set([1, 2]);
  using fromShared = Tensor.from(shared, [2]);
  t.same([...fromShared.toFloat32()], [1, 2], 'a SharedArrayBuffer view is copied');
  t.throws(() => Tensor.from(new Float32Array([NaN, 300]), [2], { dtype: 'uint8' }), { code: 'E_ARGUMENT' });
  t.throws(() => Tensor.from(new Float32Array([300]), [1], { dtype: 'uint8' }), { code: 'E_ARGUMENT', message: /out of the range of uint8/ });
  using big = Tensor.from(new Float32Array([3e9]), [1]);
  using asI64 = big.to('int64');
  t.equal(asI64.dtype, 'int64', 'int64 holds 3e9');
  t.throws(() => big.to('int32'), { code: 'E_ARGUMENT', message: /out of the range of int32/ });
  t.throws(() => big.to(undefined as unknown as 'float32'), { code: 'E_ARGUMENT', message: /dtype must be a string/ });
  using a = Tensor.from(new Float32Array([1.5]), [1]);
  t.throws(() => a.to('int32'), { code: 'E_ARGUMENT' }, 'a fractional float does not silently become an int');
  const e = t.throws(() => a.to('float8' as 'float32'));
  t.ok(e instanceof IdforgeError);
});

t.test('dispose semantics and memory accounting', async (t) => {
  const before = memory().cpu;
  const a = Tensor.from(new Float32Array(1000), [10, 100]);
  t.equal(memory().cpu - before, 4000, 'live bytes grow by the tensor');
  a.dispose();
  t.equal(memory().cpu, before, 'and shrink on dispose');
  t.equal(a.disposed, true);
  t.throws(() => a.shape, { code: 'E_DISPOSED' });
  t.throws(() => a.toFloat32(), { code: 'E_DISPOSED' });
  a.dispose(); // twice is fine
  {
    using b = Tensor.zeros([4]);
    t.same([...b.toFloat32()], [0, 0, 0, 0]);
  }
  t.equal(memory().cpu, before, 'using disposes at scope end');
  t.match(String(a), /disposed/);
});

t.test('copyFrom overwrites in place, converting the dtype; a wrong size or a disposed source is a typed error', async (t) => {
  const half = Tensor.from(new Float32Array([1, 2, 3, 4]), [2, 2], { dtype: 'float16' });
  const src = Tensor.from(new Float32Array([0.5, -1.25, 1e5, 3]), [4]);
  half.copyFrom(src);
  t.same([...half.toFloat32()], [0.5, -1.25, Infinity, 3], 'float32 → float16 into the same tensor (1e5 overflows half to Inf)');
  t.equal(half.countNonFinite(), 1);
  const wrong = Tensor.from(new Float32Array(3), [3]);
  t.throws(() => half.copyFrom(wrong), { code: 'E_SHAPE', message: /copyFrom/ });
  wrong.dispose();
  t.throws(() => half.copyFrom(wrong), { code: 'E_DISPOSED' });
  half.dispose();
  src.dispose();
});
