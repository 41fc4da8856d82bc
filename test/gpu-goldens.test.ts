// On a machine with a usable GPU: the tiny model in float32 and float16 against the reference
// goldens (text encoder, UNet, attention maps, VAE, pipeline, ID encoder, engine streams:
// scripts/gpu-engine-check.mjs) and the gradient goldens through the CUDA backward kernels plus a
// tiny learnIdentity (scripts/gpu-learn-check.mjs), without their SD 1.5 benchmarks. Skips with
// the reason elsewhere.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { backends } from '../lib/native.js';
import { root, runScript } from './helpers/gpu-scripts.js';

const cuda = backends().cuda;
const skip = cuda.available ? false : `CUDA not available: ${cuda.reason}`;

t.test('tiny model on CUDA (float32, float16) against the goldens', { skip }, async (t) => {
  // The scripts load the compiled package (dist/, built by npm's prepare step).
  if (!fs.existsSync(path.join(root, 'dist/engine.js'))) spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root });
  runScript(t, 'scripts/gpu-engine-check.mjs', process.execPath, ['scripts/gpu-engine-check.mjs', '--no-bench']);
  runScript(t, 'scripts/gpu-learn-check.mjs', process.execPath, ['scripts/gpu-learn-check.mjs', '--no-sd15']);
});
