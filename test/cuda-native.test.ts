// The native-only CUDA checks (test/native/cuda_ops_test.cu, built and run by
// scripts/cuda-ops-test.sh): the kernel paths only a native call can force, bad ids raised at
// synchronisation, the stream stress check. Every op's own cases are the op table's
// (test/ops-cuda.test.ts); the models' goldens run on CUDA through test/helpers/backends.ts. Skips
// with the reason where no GPU is usable.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { backends } from '../lib/native.js';

const cuda = backends().cuda;
const skip = cuda.available ? false : `CUDA not available: ${cuda.reason}`;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

t.test('native CUDA checks (forced kernel paths, bad ids, stream stress)', { skip }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-cuda-native-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const json = path.join(dir, 'cuda_ops.json');
  const r = spawnSync('bash', ['scripts/cuda-ops-test.sh', '--json', json], { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  t.equal(r.status, 0, `scripts/cuda-ops-test.sh exit status; tail:\n${log.slice(-4000)}`);
  if (!fs.existsSync(json)) return void t.fail('no JSON report written');
  const { checks } = JSON.parse(fs.readFileSync(json, 'utf8')) as { checks: { name: string; dtype: string; rel_l2: number; pass: boolean; note: string }[] };
  t.ok(checks.length > 0, `${checks.length} checks ran`);
  for (const c of checks) t.ok(c.pass, `${c.name} [${c.dtype}]: rel L2 ${c.rel_l2} ${c.note}`);
});
