#!/usr/bin/env node
// Same-process A/B of the UNet step: two worker threads, each with its own engine on the random
// SD 1.5 model, A and B given by the addon each loads (--a / --b: .node files, e.g. the platform
// package's and a -march=native build's) and the weights dtype each uses (--a-dtype / --b-dtype),
// run one step at a time in turn (AB, BA, AB, ...), so that both see the same moment of a shared
// machine; the ratio A/B is taken pair by pair and its median reported. Needs `npm run build`.
//   node bench/ab-unet.mjs --a prebuilt/linux-x64/idforge.node --b build/native/Release/idforge.node
//        [--a-dtype float32] [--b-dtype float16] [--size 256] [--batch 2] [--pairs 12] [--json FILE]
// Both workers hold a model (SD 1.5 in float32: ~4 GB each). One .node file serves both sides when
// --a and --b name the same file (a dtype A/B); IDFORGE_CPU_ISA and IDFORGE_THREADS are process-wide.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => pathToFileURL(path.join(root, 'dist', p)).href;

if (!isMainThread) {
  // One side: an engine, its text context and the guided UNet step program, then steps on request.
  const { Engine } = await import(dist('engine.js'));
  const { randomModelSource } = await import(dist('bench/random-model.js'));
  const { randn } = await import(dist('sched/random.js'));
  const { Tensor } = await import(dist('tensor.js'));
  const { backends, memory } = await import(dist('native.js'));
  const { resolveBackend } = await import(dist('runtime/runtime.js'));
  const { measurePeak } = await import(dist('bench/machine.js'));
  const { dtype, size, batch } = workerData;
  const engine = Engine.fromSource(randomModelSource('sd15', { seed: 0, dtype: dtype === 'float16' ? 'F16' : 'F32' }), resolveBackend({ device: 'cpu', dtype }));
  const rt = engine.runtime;
  const lh = size / engine.latentFactor;
  const ctx = await rt.runText(Array.from({ length: batch }, (_, i) => engine.tokenize(i === 0 && batch > 1 ? '' : 'a photo of the face of person, oil painting')));
  const program = batch === 2 ? rt.unetProgram(1, lh, lh, 77, 7.5, {}) : rt.unetProgram(batch, lh, lh, 77, null, {});
  const xb = batch <= 2 ? 1 : batch;
  const x = Tensor.from(randn(7, xb * 4 * lh * lh), [xb, 4, lh, lh], rt.backend);
  const t = Tensor.from(new Float32Array(batch).fill(500), [batch], rt.backend);
  // Wall time, and the process's CPU time: the other side idles while this one steps, so it is this
  // step's work (what a shared machine inflates least).
  const step = async () => {
    const s = performance.now(), c = process.cpuUsage();
    (await program.run([x, t, ctx]))[0].dispose();
    const d = process.cpuUsage(c);
    return { ms: performance.now() - s, cpuMs: (d.user + d.system) / 1000 };
  };
  await step();  // first run: arena, packing buffers
  parentPort.postMessage({ ready: true, isa: backends().cpu.isa, backend: engine.backend, weightBytes: rt.residentBytes(), nativeBytes: memory().cpu, peak: measurePeak(0.5) });
  parentPort.on('message', async (m) => {
    if (m === 'step') parentPort.postMessage(await step());
    else process.exit(0);
  });
} else {
  const { values: o } = parseArgs({
    options: {
      a: { type: 'string' }, b: { type: 'string' }, 'a-dtype': { type: 'string', default: 'float32' }, 'b-dtype': { type: 'string', default: 'float32' },
      size: { type: 'string', default: '256' }, batch: { type: 'string', default: '2' }, pairs: { type: 'string', default: '12' }, json: { type: 'string' },
    },
  });
  if (!o.a || !o.b) throw new Error('--a and --b name the two addons (.node files; the same file for a dtype A/B)');
  const side = (addon, dtype) => {
    const w = new Worker(fileURLToPath(import.meta.url), { workerData: { dtype, size: Number(o.size), batch: Number(o.batch) }, env: { ...process.env, IDFORGE_ADDON: path.resolve(addon) } });
    let waiting;
    w.on('message', (m) => waiting?.(m));
    w.on('error', (e) => { console.error(e); process.exit(1); });
    const next = () => new Promise((resolve) => (waiting = resolve));
    return { w, next, ask: (m) => { const p = next(); w.postMessage(m); return p; } };
  };
  // One at a time: building a side compiles and uploads SD 1.5, no need to do both at once.
  const A = side(o.a, o['a-dtype']);
  const infoA = await A.next();
  const B = side(o.b, o['b-dtype']);
  const infoB = await B.next();
  console.log(`A: ${o.a} ${JSON.stringify(infoA.backend)} isa ${infoA.isa}, peak ${infoA.peak.toFixed(0)} GFLOP/s, weights ${(Object.values(infoA.weightBytes).reduce((x, y) => x + y, 0) / 2 ** 30).toFixed(2)} GiB`);
  console.log(`B: ${o.b} ${JSON.stringify(infoB.backend)} isa ${infoB.isa}, peak ${infoB.peak.toFixed(0)} GFLOP/s, weights ${(Object.values(infoB.weightBytes).reduce((x, y) => x + y, 0) / 2 ** 30).toFixed(2)} GiB`);
  const pairs = [];
  for (let i = 0; i < Number(o.pairs); i++) {
    const first = i % 2 ? B : A, second = i % 2 ? A : B;
    const r1 = await first.ask('step'), r2 = await second.ask('step');
    const [a, b] = i % 2 ? [r2, r1] : [r1, r2];
    pairs.push({ a: a.ms, b: b.ms, ratio: a.ms / b.ms, cpuA: a.cpuMs, cpuB: b.cpuMs, cpuRatio: a.cpuMs / b.cpuMs, load: os.loadavg()[0] });
    console.log(`pair ${i + 1}: A ${a.ms.toFixed(0)} ms (CPU ${a.cpuMs.toFixed(0)}), B ${b.ms.toFixed(0)} ms (CPU ${b.cpuMs.toFixed(0)}), wall A/B ${(a.ms / b.ms).toFixed(3)}, CPU A/B ${(a.cpuMs / b.cpuMs).toFixed(3)} (load ${os.loadavg()[0].toFixed(2)})`);
  }
  const med = (v) => { const s = [...v].sort((x, y) => x - y); const n = s.length; return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2; };
  const spread = (v) => ({ median: med(v), min: Math.min(...v), max: Math.max(...v) });
  const summary = {
    medianA: med(pairs.map((p) => p.a)), medianB: med(pairs.map((p) => p.b)), minA: Math.min(...pairs.map((p) => p.a)), minB: Math.min(...pairs.map((p) => p.b)),
    medianRatio: med(pairs.map((p) => p.ratio)), wallRatio: spread(pairs.map((p) => p.ratio)), cpuRatio: spread(pairs.map((p) => p.cpuRatio)),
  };
  const f = (r) => `${r.median.toFixed(3)} (min ${r.min.toFixed(3)}, max ${r.max.toFixed(3)})`;
  console.log(`median A ${summary.medianA.toFixed(0)} ms, median B ${summary.medianB.toFixed(0)} ms, min A ${summary.minA.toFixed(0)}, min B ${summary.minB.toFixed(0)}`);
  console.log(`pair ratios A/B over ${pairs.length} pairs: wall ${f(summary.wallRatio)}; CPU time ${f(summary.cpuRatio)}`);
  if (o.json) writeFileSync(o.json, `${JSON.stringify({ date: new Date().toISOString(), command: `node bench/ab-unet.mjs ${process.argv.slice(2).join(' ')}`, a: { addon: o.a, ...infoA }, b: { addon: o.b, ...infoB }, pairs, summary }, null, 1)}\n`);
  A.w.postMessage('exit');
  B.w.postMessage('exit');
}
