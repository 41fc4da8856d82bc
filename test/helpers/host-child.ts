// Whole-process scenarios for test/host-safety.test.ts, run in a child process so that a crash
// (a V8 fatal error, std::terminate) fails that test instead of killing the test runner.
//   parallel   the main thread and two workers each load tiny-sd and generate at the same time
//   terminate  a worker is terminated in the middle of a long native run; the process lives on
//   teardown   a worker's environment exits (process.exit inside it) with a native run in flight
// Prints one JSON line per mode on success; any crash or rejection makes the child exit non-zero.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { Engine } from '../../lib/engine.js';
import { memory } from '../../lib/native.js';

const TINY_SD = fileURLToPath(new URL('../fixtures/tiny-sd', import.meta.url));

async function generate(size: number, steps: number, onStep?: () => void): Promise<number> {
  const e = await Engine.load(TINY_SD, { device: 'cpu' });
  try {
    const r = await e.generate({ prompt: 'a photo of a cat', steps, width: size, height: size, seed: 7, onProgress: onStep, nonFinite: 'warn' });
    r.latents.dispose();
    r.pixels.dispose();
    return r.images[0]!.data.reduce((a, b) => a + b, 0);
  } finally {
    e.dispose();
  }
}

function spawn(mode: string): Worker {
  return new Worker(new URL(import.meta.url), { execArgv: process.execArgv, workerData: { mode } });
}

function message(w: Worker): Promise<unknown> {
  return new Promise((resolve, reject) => {
    w.once('message', resolve);
    w.once('error', reject);
  });
}

if (!isMainThread) {
  const { mode } = workerData as { mode: string };
  if (mode === 'generate') {
    parentPort!.postMessage(await generate(64, 2));
  } else {
    // A long run (a 512² UNet step takes seconds on a CPU): the first in-step progress tick (about 1 s
    // into the step) says a native run is in flight.
    let told = false;
    const run = generate(512, 2, () => {
      if (told) return;
      told = true;
      parentPort!.postMessage('running');
      if (mode === 'teardown') setTimeout(() => process.exit(0), 200);
    });
    await run;
  }
} else {
  // Modes run one after the other in this process (one process start for several cases).
  for (const mode of process.argv.slice(2)) await main(mode);
}

async function main(mode: string | undefined): Promise<void> {
  const t0 = Date.now();
  if (mode === 'parallel') {
    const ws = [spawn('generate'), spawn('generate')];
    const sums = await Promise.all([generate(64, 2), ...ws.map(message)]);
    for (const w of ws) await w.terminate();
    // Same seed, same model, same size: every environment must produce the same image.
    console.log(JSON.stringify({ mode, sums, ms: Date.now() - t0 }));
  } else if (mode === 'terminate' || mode === 'teardown') {
    const w = spawn(mode);
    await message(w);
    const t1 = Date.now();
    const exited = new Promise<number>((resolve) => w.once('exit', resolve));
    if (mode === 'terminate') await w.terminate();
    const code = await exited;
    const stopMs = Date.now() - t1;
    // The process and the addon still work afterwards, and the worker's memory was freed.
    const sum = await generate(64, 1);
    console.log(JSON.stringify({ mode, code, stopMs, sum, liveCpuBytes: memory().cpu }));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
}
