// The CPU backend's own op checks (test/native/cpu_ops_test.cc): every op against a naive
// double-precision reference on random, never-zero inputs with NaN-poisoned outputs.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const hasGxx = spawnSync('g++', ['--version']).status === 0;

t.test('native CPU op checks', { skip: hasGxx ? false : 'g++ not found' }, async (t) => {
  const r = spawnSync('bash', ['scripts/test-cpu-ops.sh'], { cwd: root, encoding: 'utf8', env: { ...process.env, IDFORGE_OPS_QUICK: '1' } });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  t.equal(r.status, 0, `cpu_ops_test exit status; tail:\n${out.slice(-3000)}`);
  t.notMatch(out, /FAIL/, 'no op check failed');
});
