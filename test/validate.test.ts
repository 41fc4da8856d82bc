// The one validation style (lib/validate.ts): the error maker's message form and the shared
// predicates' ranges, on the edges of each range.
import t from 'tap';
import { IdforgeError } from '../lib/errors.js';
import { Tensor } from '../lib/tensor.js';
import { bool, describe, integer, invalid, nonNegative, numberIn, oneOf, options, seedOf, shown, text } from '../lib/validate.js';

const fails = (t: Tap.Test, f: () => unknown, code: string, message: string) => {
  try {
    f();
    t.fail(`no error, expected ${message}`);
  } catch (e) {
    t.ok(e instanceof IdforgeError, 'an IdforgeError');
    t.equal((e as IdforgeError).code, code);
    t.equal((e as Error).message, message);
  }
};

t.test('invalid(): [where: ]name must be expected[, got value]', async (t) => {
  fails(t, () => { throw invalid('steps', 'an integer in [1, 1000]', 0); }, 'E_ARGUMENT', 'steps must be an integer in [1, 1000], got 0');
  fails(t, () => { throw invalid('width', 'a multiple of 64', 100, { where: 'evaluate', code: 'E_SHAPE' }); }, 'E_SHAPE', 'evaluate: width must be a multiple of 64, got 100');
  fails(t, () => { throw invalid('strength', 'left out without an image'); }, 'E_ARGUMENT', 'strength must be left out without an image');
  const cause = new Error('disk full');
  t.equal(invalid('out', 'a writable folder', 'x', { cause }).cause, cause, 'the cause is kept');
});

t.test('describe() shows any value briefly', async (t) => {
  t.equal(describe(1.5), '1.5');
  t.equal(describe(NaN), 'NaN');
  t.equal(describe(null), 'null');
  t.equal(describe('a'), '"a"');
  t.equal(describe('x'.repeat(200)).length, 82, 'long strings are cut');
  t.equal(describe([1, 2]), '[1,2]');
  t.equal(describe(new Array(100).fill(0)), 'an array of 100');
  t.equal(describe({ a: 1 }), '{"a":1}');
  t.equal(describe(new Map()), 'a Map');
  t.equal(describe(new Int32Array(5)), 'an Int32Array of 5');
  t.equal(describe(() => 1), 'a function');
  t.equal(describe(shown('3 NaN values')), '3 NaN values');
  using x = Tensor.zeros([2, 3]);
  t.equal(describe(x), 'a float32 tensor [2,3]');
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  t.equal(describe(cyclic), 'an object');
});

t.test('the predicates take their range and refuse what lies outside, with the maker\'s message', async (t) => {
  t.equal(integer(1, 'n', 1, 3), 1);
  t.equal(integer(3, 'n', 1, 3), 3);
  fails(t, () => integer(4, 'n', 1, 3), 'E_ARGUMENT', 'n must be an integer in [1, 3], got 4');
  fails(t, () => integer(1.5, 'n', 1), 'E_ARGUMENT', 'n must be an integer ≥ 1, got 1.5');
  fails(t, () => integer('2', 'n', 1, 3, 'api'), 'E_ARGUMENT', 'api: n must be an integer in [1, 3], got "2"');
  t.equal(nonNegative(0, 'x'), 0);
  fails(t, () => nonNegative(0, 'x', { positive: true }), 'E_ARGUMENT', 'x must be a finite number > 0, got 0');
  fails(t, () => nonNegative(Infinity, 'x'), 'E_ARGUMENT', 'x must be a finite number ≥ 0, got Infinity');
  t.equal(numberIn(1, 'eta', 0, 1), 1);
  fails(t, () => numberIn(0, 's', 0, 1, { above: true }), 'E_ARGUMENT', 's must be a finite number in (0, 1], got 0');
  fails(t, () => numberIn(NaN, 'eta', 0, 1), 'E_ARGUMENT', 'eta must be a finite number in [0, 1], got NaN');
  t.equal(oneOf('v', 'kind', ['k', 'v']), 'v');
  fails(t, () => oneOf('x', 'kind', ['k', 'v', 'q'], 'encodeText'), 'E_ARGUMENT', "encodeText: kind must be 'k', 'v' or 'q', got \"x\"");
  t.equal(seedOf(5), 5);
  t.ok(Number.isSafeInteger(seedOf(undefined)), 'a random seed when none is given');
  fails(t, () => seedOf(-1), 'E_ARGUMENT', 'seed must be a non-negative integer, got -1');
  t.equal(bool(false, 'b'), false);
  fails(t, () => bool(0, 'b'), 'E_ARGUMENT', 'b must be a boolean, got 0');
  t.equal(text('', 's'), '');
  fails(t, () => text('  ', 's', { nonEmpty: true }), 'E_ARGUMENT', 's must be a non-empty string, got "  "');
  t.same(options(undefined, 'opts'), {});
  fails(t, () => options(null as unknown as object, 'opts', 'load'), 'E_ARGUMENT', 'load: opts must be an object, got null');
  fails(t, () => options([] as object, 'opts'), 'E_ARGUMENT', 'opts must be an object, got []');
});
