#!/usr/bin/env node
// Learning on the GPU (run by scripts/gpu-all.sh): the gradient goldens (grad.safetensors) through
// the CUDA backward kernels in float32 and float16, a tiny-model learnIdentity on CUDA, and the
// seconds per SeFi-IDE learning step for SD 1.5 (random weights) at 512². Writes $OUT/learn.json.
import fs from 'node:fs';
import path from 'node:path';

import { dist as d, fx, out, relL2 } from './gpu-common.mjs';
const { Engine } = await d('engine.js');
const { Tensor } = await d('tensor.js');
const { Graph } = await d('graph/graph.js');
const { Program } = await d('graph/program.js');
const { grad } = await d('graph/autodiff.js');
const { buildUNetLoss } = await d('learn/objective.js');
const { SafetensorsFile } = await d('io/safetensors.js');
const { randomModelSource, sd15Configs } = await d('bench/random-model.js');

const report = { grads: [], learn: [] };
// A synthetic square face at the model's native size: learnIdentity takes it as is (no decoding or
// resizing, so the GPU machine needs no sharp).
const face = (n) => ({ width: n, height: n, channels: 3, data: Uint8Array.from({ length: n * n * 3 }, (_, i) => ((i * 37) ^ (i >> 9) * 11) & 255) });
let failures = 0;
const log = (s) => console.log(s);

const gf = SafetensorsFile.open(fx('golden/grad.safetensors'));
const cases = JSON.parse(fs.readFileSync(fx('golden/cases.json'), 'utf8')).grad;
const T = (k) => Tensor.from(gf.readFloat32(k), gf.info(k).shape);

for (const dtype of process.argv.includes('--only-sd15') ? [] : ['float32', 'float16']) {
  const tol = dtype === 'float32' ? 1e-4 : 3e-2;
  const engine = await Engine.load(fx('tiny-sd'), { device: 'cuda', dtype });
  const be = engine.backend;
  const xs = gf.info('z_t').shape, cs = gf.info('context_t').shape;
  const run = async (p, ins) => {
    const up = ins.map((x) => x.to(be.dtype, be.device));
    const o = await p.run(up);
    up.forEach((x) => x.dispose());
    return o.map((x) => x.toFloat32());
  };
  const tIn = () => Tensor.from(new Float32Array([cases.timestep]), [1]);
  // Known: in float16 the attention-loss gradient loses to rounding (two nearly equal probability
  // maps are subtracted), which is why Engine.learnIdentity requires float32. Reported, not failed.
  const known = (name) => dtype === 'float16' && name === 'grad_context_att';
  const check = (name, got, ref) => {
    const e = relL2(got, ref);
    const ok = Number.isFinite(e) && e <= tol;
    if (!ok && !known(name)) failures++;
    report.grads.push({ dtype, name, relL2: e, tol, ok, knownLimitation: !ok && known(name) });
    log(`${ok ? 'ok  ' : known(name) ? 'KNOWN' : 'FAIL'} [${dtype}] ${name}: rel L2 ${e.toExponential(2)} (≤ ${tol})${!ok && known(name) ? ' — float16 learning is refused for this reason' : ''}`);
  };
  {
    const g = new Graph();
    const x = g.input(xs), tt = g.input([1]), c = g.input(cs), e = g.input(xs);
    const r = buildUNetLoss(g, engine.runtime.weights.unet, engine.configs.unet, { x, t: tt, ctx: { k: c, v: c }, epsTarget: e });
    g.output(r.lossDiff);
    g.output(grad(g, r.lossDiff, [c])[0]);
    const p = new Program(g, be);
    const [, dc] = await run(p, [T('z_t'), tIn(), T('context_t'), T('eps_target')]);
    check('grad_context_diff', dc, gf.readFloat32('grad_context_diff'));
    p.dispose();
  }
  {
    const g = new Graph();
    const x = g.input(xs), tt = g.input([1]), c = g.input(cs), cr = g.input(cs);
    const r = buildUNetLoss(g, engine.runtime.weights.unet, engine.configs.unet, { x, t: tt, ctx: { k: c, v: c }, reference: { context: cr, layers: cases.att_layers } });
    g.output(r.lossAtt);
    g.output(grad(g, r.lossAtt, [c], { stop: r.stop })[0]);
    const p = new Program(g, be);
    const [, dc] = await run(p, [T('z_t'), tIn(), T('context_t'), T('context_r')]);
    check('grad_context_att', dc, gf.readFloat32('grad_context_att'));
    p.dispose();
  }
  {
    const g = new Graph();
    const x = g.input(xs), tt = g.input([1]), k = g.input(cs), v = g.input(cs), e = g.input(xs);
    const r = buildUNetLoss(g, engine.runtime.weights.unet, engine.configs.unet, { x, t: tt, ctx: { k, v }, epsTarget: e });
    g.output(r.lossDiff);
    const [dk, dv] = grad(g, r.lossDiff, [k, v]);
    g.output(dk);
    g.output(dv);
    const p = new Program(g, be);
    const [, gk, gv] = await run(p, [T('z_t'), tIn(), T('context_t'), T('context_r'), T('eps_target')]);
    check('grad_context_k', gk, gf.readFloat32('grad_context_k'));
    check('grad_context_v', gv, gf.readFloat32('grad_context_v'));
    p.dispose();
  }
  // A short learning run on CUDA (float32 only: learnIdentity refuses float16, see Engine.learnIdentity).
  if (dtype !== 'float32') { engine.dispose(); continue; }
  const losses = [];
  const t0 = performance.now();
  const id = await engine.learnIdentity(face(128), { steps: 20, seed: 1, onProgress: (p) => losses.push(p.loss) });
  const ms = (performance.now() - t0) / 20;
  const finite = losses.every(Number.isFinite) && [...id.kData].every(Number.isFinite);
  if (!finite) failures++;
  report.learn.push({ model: 'tiny', dtype, steps: 20, msPerStep: ms, finite, first: losses[0], last: losses.at(-1) });
  log(`${finite ? 'ok  ' : 'FAIL'} [${dtype}] tiny learnIdentity on CUDA: ${ms.toFixed(1)} ms/step (incl. setup), loss ${losses[0]?.toFixed(4)} → ${losses.at(-1)?.toFixed(4)}`);
  engine.dispose();
}

// SD 1.5 architecture, random weights, 512²: seconds per learning step (--sd15-dtype=float16|float32).
const sd15Dtype = (process.argv.find((a) => a.startsWith('--sd15-dtype=')) ?? '--sd15-dtype=float32').split('=')[1];
if (!process.argv.includes('--no-sd15')) {
  const engine = Engine.fromSource(randomModelSource(sd15Configs(), { seed: 0 }), { device: 'cuda', dtype: sd15Dtype });
  const times = [];
  let last = performance.now();
  await engine.learnIdentity(face(512), {
    steps: 25, seed: 1,
    onProgress: () => { const now = performance.now(); times.push(now - last); last = now; },
  });
  const steady = times.slice(5).sort((a, b) => a - b);
  const median = steady[Math.floor(steady.length / 2)];
  report.learn.push({ model: 'sd15-random', dtype: sd15Dtype, size: 512, steps: 25, firstStepMs: times[0], medianStepMs: median, projected1000StepsS: (median * 1000) / 1000 });
  log(`SD 1.5 (random) 512² ${sd15Dtype} learning step: first ${times[0].toFixed(0)} ms, median ${median.toFixed(1)} ms → 1000 steps ≈ ${(median).toFixed(0)} s`);
  engine.dispose();
}

fs.writeFileSync(path.join(out, 'learn.json'), JSON.stringify(report, null, 2));
log(failures === 0 ? 'all learning checks passed' : `${failures} learning checks FAILED`);
process.exit(failures === 0 ? 0 : 1);
