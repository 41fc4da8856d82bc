#!/usr/bin/env node
// The engine-level GPU check (run by scripts/gpu-all.sh on a machine with a GPU, the CUDA toolkit
// and Node): the whole tiny model on CUDA in float32 and float16 against the reference goldens,
// the ID encoder, one CUDA stream per engine (scripts/streams-check.mjs), and the SD 1.5 UNet-step benchmark. Writes JSON + text to $OUT (or ./gpu-out).
//   node scripts/gpu-engine-check.mjs [--no-bench]
import fs from 'node:fs';
import path from 'node:path';

import { dist as d, fx, out, relL2 } from './gpu-common.mjs';
const { Engine } = await d('engine.js');
const { Tensor } = await d('tensor.js');
const { backends, memory } = await d('native.js');
const { SafetensorsFile } = await d('io/safetensors.js');
const { IdEncoder } = await d('identity/encoder.js');

const lines = [];
const log = (s) => { lines.push(s); console.log(s); };
const report = { backends: backends(), goldens: [], bench: [] };
log(`backends: ${JSON.stringify(report.backends)}`);
if (!report.backends.cuda.available) {
  log('CUDA not available: nothing to check');
  process.exit(2);
}

// The single-file fixture is stored gzipped (see test/helpers/fixtures.ts).
const { gunzipSync } = await import('node:zlib');
const ldm = path.join(out, 'tiny-sd-ldm.safetensors');
fs.writeFileSync(ldm, gunzipSync(fs.readFileSync(fx('tiny-sd-ldm.safetensors.gz'))));
let failures = 0;
const check = (dtype, name, out, ref, tol) => {
  const e = relL2(out, ref);
  const ok = Number.isFinite(e) && e <= tol;
  if (!ok) failures++;
  report.goldens.push({ dtype, name, relL2: e, tol, ok });
  log(`${ok ? 'ok  ' : 'FAIL'} [${dtype}] ${name}: rel L2 ${e.toExponential(2)} (≤ ${tol})`);
};

function golden(name) {
  const f = SafetensorsFile.open(fx(`golden/${name}.safetensors`));
  return {
    f32: (k) => f.readFloat32(k),
    i32: (k) => f.readInt32(k),
    t: (k) => Tensor.from(f.readFloat32(k), f.info(k).shape),
    shape: (k) => f.info(k).shape,
  };
}

for (const dtype of ['float32', 'float16']) {
  const tol = dtype === 'float32' ? 1e-4 : 2e-2;
  for (const model of [fx('tiny-sd'), ldm]) {
    const engine = await Engine.load(model, { device: 'cuda', dtype });
    const tag = `${dtype} ${path.basename(model)}`;
    const te = golden('text_encoder');
    const ids = te.i32('ids');
    const rows = [];
    for (let i = 0; i < ids.length / 77; i++) rows.push(ids.slice(i * 77, i * 77 + 77));
    check(tag, 'text last_hidden_state', (await engine.encodeText(rows)).toFloat32(), te.f32('last_hidden_state'), tol);
    const u = golden('unet');
    const x = u.t('x'), ctx = u.t('context');
    for (const t of [981, 1, 500]) check(tag, `unet eps_t${t}`, (await engine.predictNoise(x, t, ctx)).toFloat32(), u.f32(`eps_t${t}`), tol);
    check(tag, 'unet eps_wide_t500', (await engine.predictNoise(u.t('x_wide'), 500, u.t('context_wide'))).toFloat32(), u.f32('eps_wide_t500'), tol);
    const x1 = Tensor.from(u.f32('x').subarray(0, 1024), [1, 4, 16, 16]);
    check(tag, 'unet eps_dual_t741', (await engine.predictNoise(x1, 741, { k: u.t('context_k'), v: u.t('context_v') })).toFloat32(), u.f32('eps_dual_t741'), tol);
    const r = await engine.predictNoiseWithAttention(x, 981, ctx, engine.crossAttentionLayers);
    let worst = 0;
    for (const l of engine.crossAttentionLayers) worst = Math.max(worst, relL2(r.attention.get(l).toFloat32(), u.f32(`attn:${l}`)));
    const attTol = Math.max(tol, 1e-3); // the golden maps are stored as float16
    const attOk = worst <= attTol;
    if (!attOk) failures++;
    report.goldens.push({ dtype: tag, name: 'unet attn:* (worst of 16 layers)', relL2: worst, tol: attTol, ok: attOk });
    log(`${attOk ? 'ok  ' : 'FAIL'} [${tag}] unet attn:* worst of 16 layers: rel L2 ${worst.toExponential(2)} (≤ ${attTol})`);
    const v = golden('vae');
    check(tag, 'vae decoded', (await engine.decodeLatents(v.t('z'))).toFloat32(), v.f32('decoded'), tol);
    check(tag, 'vae decoded_wide', (await engine.decodeLatents(v.t('z_wide'))).toFloat32(), v.f32('decoded_wide'), tol);
    const enc = await engine.encodeImage(v.t('image'));
    check(tag, 'vae latent_mean', enc.mean.toFloat32(), v.f32('latent_mean'), tol);
    check(tag, 'vae latent_logvar', enc.logvar.toFloat32(), v.f32('latent_logvar'), tol);
    const p = golden('pipeline');
    const g = await engine.generate({ prompt: 'a photo of the face of person, oil painting', negativePrompt: '', steps: 10, guidanceScale: 7.5, eta: 0, width: 128, height: 128, latents: p.t('init_latents') });
    check(tag, 'pipeline final_latents', g.latents.toFloat32(), p.f32('final_latents'), tol);
    check(tag, 'pipeline image', g.pixels.toFloat32(), p.f32('image'), tol);
    engine.dispose();
  }
  const id = golden('id_encoder');
  const enc = await IdEncoder.load(fx('tiny-id-encoder'), { device: 'cuda', dtype });
  const f = await enc.encodeFeatures(id.t('image'));
  check(`${dtype} id-encoder`, 'tap_features', f.taps, id.f32('tap_features'), tol);
  check(`${dtype} id-encoder`, 'words', f.words, id.f32('words'), tol);
  enc.dispose();
}

// One stream per engine (scripts/streams-check.mjs, the same checks as test/cuda-streams.test.ts).
{
  const { streamChecks } = await import('./streams-check.mjs');
  const { Graph } = await d('graph/graph.js');
  const { Program } = await d('graph/program.js');
  report.streams = [];
  for (const dtype of ['float32', 'float16']) {
    try {
      await streamChecks({ Engine, Graph, Program, Tensor }, fx('tiny-sd'), (ok, msg) => {
        if (!ok) failures++;
        report.streams.push({ ok, msg });
        log(`${ok ? 'ok  ' : 'FAIL'} streams ${msg}`);
      }, dtype);
    } catch (e) {
      failures++;
      log(`FAIL streams [${dtype}] threw ${e?.code ?? ''} ${e?.stack ?? e}`);
    }
  }
}

if (!process.argv.includes('--no-bench')) {
  // The UNet step with and without CUDA graphs (Program reads IDFORGE_CUDA_GRAPH when it is
  // compiled; every bench() loads its own engine). IDFORGE_PROGRAM_LOG makes each program print
  // its static buffer plan (arena vs one buffer per intermediate) to stderr.
  const { bench, formatReport } = await d('bench/index.js');
  const graphEnv = process.env.IDFORGE_CUDA_GRAPH;
  process.env.IDFORGE_PROGRAM_LOG = '1';
  const summary = [];
  for (const size of [512, 256]) {
    for (const graph of ['0', '1']) {
      process.env.IDFORGE_CUDA_GRAPH = graph;
      const on = graph === '1';
      const r = await bench({ random: 'sd15', device: 'cuda', dtype: 'float16', width: size, height: size, batch: 2, steps: 30, warmup: 5, generate: on && size === 512, ops: on, command: `scripts/gpu-engine-check.mjs (size ${size}, CUDA graph ${on ? 'on' : 'off'})`, log: (s) => console.log(s) });
      r.cudaGraph = on;
      report.bench.push(r);
      log(formatReport(r));
      const u = r.results.unetStep ?? r.results.unet;
      summary.push({ size, graph: on, median: u?.ms?.median, min: u?.ms?.min, q1: u?.ms?.q1, q3: u?.ms?.q3, n: u?.ms?.n });
    }
  }
  if (graphEnv === undefined) delete process.env.IDFORGE_CUDA_GRAPH;
  else process.env.IDFORGE_CUDA_GRAPH = graphEnv;
  report.graphSummary = summary;
  log('SD 1.5 UNet step (fp16, batch 2), ms: median [q1 – q3] min, n after warm-up');
  for (const x of summary) log(`  ${x.size}²  CUDA graph ${x.graph ? 'on ' : 'off'}  ${x.median?.toFixed(2)} [${x.q1?.toFixed(2)} – ${x.q3?.toFixed(2)}] min ${x.min?.toFixed(2)}  n=${x.n}`);
}

report.memory = memory();
fs.rmSync(ldm, { force: true });
fs.writeFileSync(path.join(out, 'engine.json'), JSON.stringify(report, null, 2));
fs.writeFileSync(path.join(out, 'engine.txt'), lines.join('\n') + '\n');
log(`${failures === 0 ? 'all golden checks passed' : `${failures} golden checks FAILED`}`);
process.exit(failures === 0 ? 0 : 1);
