// On a machine with a usable GPU, `npm test` runs every CUDA check: the op table's CUDA modes
// (test/ops-cuda.test.ts), the stream checks (test/cuda-streams.test.ts), and here the native
// CUDA checks (kernel paths only a native call can force, bad ids, the stream stress check), the
// tiny model in float32 and float16 against the goldens (forward, ID encoder, streams) and the
// gradient goldens through the backward kernels. No benchmarks: scripts/gpu-all.sh adds those.
// Skips with the reason elsewhere.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { backends } from '../lib/native.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cuda = backends().cuda;
const skip = cuda.available ? false : `CUDA not available: ${cuda.reason}`;

function run(t: { equal: (a: unknown, b: unknown, msg: string) => unknown }, what: string, cmd: string, args: string[]): void {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-gpu-'));
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', env: { ...process.env, OUT: out }, maxBuffer: 64 << 20 });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  t.equal(r.status, 0, `${what}: exit status; tail:\n${log.slice(-4000)}`);
}

t.test('native CUDA checks (forced kernel paths, bad ids, stream stress)', { skip }, async (t) => {
  run(t, 'scripts/gpu-check.sh', 'bash', ['scripts/gpu-check.sh', '--no-bench']);
});

t.test('tiny model on CUDA (float32, float16) against the goldens', { skip }, async (t) => {
  // The scripts load the compiled package (dist/, built by npm's prepare step).
  if (!fs.existsSync(path.join(root, 'dist/engine.js'))) spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root });
  run(t, 'scripts/gpu-engine-check.mjs', process.execPath, ['scripts/gpu-engine-check.mjs', '--no-bench']);
  run(t, 'scripts/gpu-learn-check.mjs', process.execPath, ['scripts/gpu-learn-check.mjs', '--no-sd15']);
});
