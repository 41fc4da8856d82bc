#!/usr/bin/env node
// Time per SeFi-IDE learning step for SD 1.5's architecture (seeded random weights, nothing to
// download) at 512² on CUDA, float32 (learning refuses float16): 25 learnIdentity steps, the
// median after 5 warm-up steps. Needs dist/ (npm run build). Run by scripts/gpu-bench.sh.
//   node scripts/bench-learn-step.mjs [--json out.json]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = (p) => import(path.join(path.dirname(fileURLToPath(import.meta.url)), '../dist', p));
const { Engine } = await dist('engine.js');
const { randomModelSource, sd15Configs } = await dist('bench/random-model.js');

// A synthetic square "face" at the model's size, taken as is (no detection, decoding or resizing).
const n = 512;
const face = { width: n, height: n, channels: 3, data: Uint8Array.from({ length: n * n * 3 }, (_, i) => ((i * 37) ^ ((i >> 9) * 11)) & 255) };
const engine = Engine.fromSource(randomModelSource(sd15Configs(), { seed: 0 }), { device: 'cuda', dtype: 'float32' });
const times = [];
let last = performance.now();
await engine.learnIdentity(face, { steps: 25, seed: 1, face: false, onProgress: () => { const now = performance.now(); times.push(now - last); last = now; } });
engine.dispose();
const steady = times.slice(5).sort((a, b) => a - b);
const median = steady[Math.floor(steady.length / 2)];
const report = { model: 'sd15-random', device: 'cuda', dtype: 'float32', size: n, steps: times.length, firstStepMs: times[0], medianStepMs: median, stepsMs: times };
console.log(`SD 1.5 (random weights) ${n}² float32 learning step: first ${times[0].toFixed(0)} ms, median ${median.toFixed(1)} ms (1000 steps ≈ ${median.toFixed(0)} s)`);
const j = process.argv.indexOf('--json');
if (j > 0 && process.argv[j + 1]) fs.writeFileSync(process.argv[j + 1], `${JSON.stringify(report, null, 2)}\n`);
