#!/usr/bin/env node
// Time per SeFi-IDE learning step (engine.learnIdentity), float32 (learning refuses float16):
// `--steps` steps after the first, which includes the set-up (compiling the step program, the
// first VAE encode), and `--warmup` more; their median, min and max. Default: SD 1.5's
// architecture with seeded random weights (nothing to download) at 512² on CUDA (scripts/gpu-bench.sh).
// Needs dist/ (npm run build). Only the public API is used, so the script times any version.
//   node scripts/bench-learn-step.mjs [--random sd15 | --model DIR] [--device cuda|cpu] [--size N]
//                                     [--steps N] [--warmup N] [--json out.json]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : def;
};
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(path.join(root, 'dist', p));
const { Engine } = await dist('engine.js');
const { randomModelSource, sd15Configs } = await dist('bench/random-model.js');

const device = arg('device', 'cuda');
const model = arg('model');
const steps = Number(arg('steps', 20));
const warmup = Number(arg('warmup', 4));
const size = arg('size');
// Learning trains at the model's native size: for the random SD 1.5 it is set to --size (default
// 512) by the UNet's sample size; a loaded model keeps its own (--size must match it).
const configs = sd15Configs();
if (size) configs.unet.sampleSize = Number(size) / 8;
const engine = model
  ? await Engine.load(model, { device, dtype: 'float32' })
  : Engine.fromSource(randomModelSource(configs, { seed: 0 }), { device, dtype: 'float32' });
const n = engine.runtime.nativeSize;
if (size && Number(size) !== n) throw new Error(`--size ${size}: the model learns at ${n}²`);
// A synthetic square "face" at that size, taken as is (no detection, no resizing).
const face = { width: n, height: n, channels: 3, data: Uint8Array.from({ length: n * n * 3 }, (_, i) => ((i * 37) ^ ((i >> 9) * 11)) & 255) };
// Wall time per step, and the process's CPU time (user + system, every thread) per step: on a shared
// machine the CPU time moves less with the other load than the wall time does.
const times = [];
const cpus = [];
let last = performance.now();
let lastCpu = process.cpuUsage();
const t0 = last;
// No augmentation: then the one image is VAE-encoded before the first step, and every later step
// is a learning step alone (with augmentation each of the pool's images is encoded on its first draw).
await engine.learnIdentity(face, { steps: 1 + warmup + steps, seed: 1, face: false, augment: false, onProgress: () => {
  const now = performance.now();
  const cpu = process.cpuUsage();
  times.push(now - last);
  cpus.push((cpu.user - lastCpu.user + cpu.system - lastCpu.system) / 1000);
  [last, lastCpu] = [now, cpu];
} });
engine.dispose();
const timed = times.slice(1 + warmup);
const sorted = [...timed].sort((a, b) => a - b);
const median = sorted[Math.floor(sorted.length / 2)];
const cpuSorted = cpus.slice(1 + warmup).sort((a, b) => a - b);
const cpuMedian = cpuSorted[Math.floor(cpuSorted.length / 2)];
const report = {
  command: `node scripts/bench-learn-step.mjs ${process.argv.slice(2).join(' ')}`,
  model: model ?? 'sd15-random', device, dtype: 'float32', size: n, loadavg: os_loadavg(),
  firstStepMs: times[0], medianStepMs: median, minStepMs: sorted[0], maxStepMs: sorted.at(-1), stepsMs: timed, totalMs: last - t0,
  medianStepCpuMs: cpuMedian, stepsCpuMs: cpus.slice(1 + warmup),
};
console.log(`${report.model} ${n}² float32 ${device} learning step: first ${times[0].toFixed(0)} ms, median ${median.toFixed(1)} ms (min ${sorted[0].toFixed(1)}, max ${sorted.at(-1).toFixed(1)}; ${timed.length} steps after ${1 + warmup}); CPU time per step, median ${cpuMedian.toFixed(1)} ms`);
const j = arg('json');
if (j) fs.writeFileSync(j, `${JSON.stringify(report, null, 2)}\n`);

function os_loadavg() {
  return fs.existsSync('/proc/loadavg') ? fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number) : [];
}
