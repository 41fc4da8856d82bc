/**
 * The benchmark harness: times the text encoder, one UNet step (the classifier-free-guidance
 * program generate() runs), the VAE decoder and a whole generate(), records peak memory, and
 * breaks one profiled UNet step down per op with FLOP and byte counts. `npm run bench` is its CLI
 * (lib/bench/cli.ts); bench(opts) returns the same JSON the CLI writes.
 */
import { execFileSync } from 'node:child_process';
import * as os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Engine } from '../engine.js';
import type { BackendSpec, Program } from '../graph/program.js';
import { memory } from '../native.js';
import { resolveBackend } from '../runtime/runtime.js';
import type { SdRuntime } from '../runtime/sd.js';
import { REGION_CAPACITY, type Region } from '../regions.js';
import { randn } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import { imageSide, integer, invalid, shown } from '../validate.js';
import { aggregateOps, programFlops } from './flops.js';
import { cpuMeter, describeMachine, measurePeak } from './machine.js';
import { randomModelSource } from './random-model.js';
import type { BenchConfig, BenchOptions, BenchReport, BenchResults, Stats } from './report.js';

export { randomModelSource, modelLayout, unetLayout, vaeLayout, textLayout, paramCount, sd15Configs } from './random-model.js';
export { opFlops, opBytes, aggregateOps, programFlops } from './flops.js';
export { describeMachine, type MachineInfo } from './machine.js';
export { formatReport } from './table.js';
export type { BenchConfig, BenchOptions, BenchReport, BenchResults, Stats } from './report.js';

export function stats(samples: readonly number[]): Stats {
  if (samples.length === 0) throw invalid('samples', 'at least one (stats of no samples)', shown('none'));
  const s = [...samples].sort((a, b) => a - b);
  const q = (p: number) => {
    const x = (s.length - 1) * p;
    const lo = Math.floor(x);
    const hi = Math.ceil(x);
    return s[lo]! + (s[hi]! - s[lo]!) * (x - lo);
  };
  return {
    n: s.length,
    median: q(0.5),
    min: s[0]!,
    max: s[s.length - 1]!,
    q1: q(0.25),
    q3: q(0.75),
    mean: s.reduce((a, b) => a + b, 0) / s.length,
    samples: [...samples],
  };
}

const now = () => performance.now();

// `spec` is resolveBackend's: float16 on the CPU is float16 weights computing in float32.
async function openEngine(o: BenchOptions, spec: BackendSpec): Promise<{ engine: Engine; model: string }> {
  const half = (spec.weights ?? spec.dtype) === 'float16';
  const given = [o.model !== undefined, o.random !== undefined, o.source !== undefined].filter(Boolean).length;
  if (given !== 1) throw invalid('model, random and source', 'exactly one given (model: a path, random: e.g. "sd15", or source)', shown(`${given} given`), { where: 'bench' });
  if (o.model !== undefined) return { engine: await Engine.load(o.model, { device: spec.device, dtype: half ? 'float16' : 'float32', ...(o.vae !== undefined ? { vae: o.vae } : {}) }), model: o.model + (o.vae ? ` with VAE ${o.vae}` : '') };
  if (o.vae !== undefined && o.vae !== 'tiny') throw invalid('vae', "'tiny' (a random TAESD) with random weights", o.vae, { where: 'bench' });
  if (o.source) return { engine: Engine.fromSource(o.source, spec), model: o.source.path };
  const src = randomModelSource(o.random!, { seed: o.seed ?? 0, dtype: half ? 'F16' : 'F32', ...(o.vae ? { vae: 'tiny' as const } : {}) });
  return { engine: Engine.fromSource(src, spec), model: `random ${o.random}${o.vae ? ' with a random TAESD' : ''} (seed ${o.seed ?? 0})` };
}

/** Runs the benchmark and returns its report (the JSON `npm run bench -- --json` writes). */
export async function bench(opts: BenchOptions): Promise<BenchReport> {
  const log = opts.log ?? (() => {});
  const machine = describeMachine();
  const spec = resolveBackend(opts);
  const { device, dtype, weights } = spec;
  if (device === 'cpu') machine.measuredPeakGflops = measurePeak();
  const cpuPeak = machine.measuredPeakGflops ?? machine.fp32PeakGflops ?? undefined;
  const width = integer(opts.width ?? 512, 'width', 1);
  const height = integer(opts.height ?? opts.width ?? 512, 'height', 1);
  const batch = integer(opts.batch ?? 2, 'batch', 1);
  const steps = integer(opts.steps ?? 5, 'steps', 1);
  const warmup = integer(opts.warmup ?? 1, 'warmup', 0);
  const seed = integer(opts.seed ?? 0, 'seed', 0);
  const images = integer(opts.images ?? 1, 'images', 1); // checked here, not minutes in
  const regions = benchRegions(integer(opts.regions ?? 0, 'regions', 0, REGION_CAPACITY));
  const prompt = opts.prompt ?? 'a photo of the face of person, oil painting';
  const elem = dtype === 'float16' ? 2 : 4;

  const nativePeak = { cpu: 0, cuda: 0 };
  const sample = () => {
    const m = memory();
    nativePeak.cpu = Math.max(nativePeak.cpu, m.cpu);
    nativePeak.cuda = Math.max(nativePeak.cuda, m.cuda);
  };

  let t0 = now();
  const { engine, model } = await openEngine(opts, spec);
  const loadMs = now() - t0;
  const rt = engine.runtime;
  try {
    imageSide(width, 'width', engine.sizeMultiple);
    imageSide(height, 'height', engine.sizeMultiple);
    const lh = height / engine.latentFactor;
    const lw = width / engine.latentFactor;
    const rev = revision();
    const config: BenchConfig = { model, device, dtype, ...(weights ? { weights } : {}), width, height, latent: [lh, lw], batch, steps, warmup, seed, prompt, ...(rev ? { revision: rev } : {}) };
    log(`model ${model} on ${device} ${dtype}${weights ? ` (${weights} weights)` : ''}, ${width}x${height} (latent ${lh}x${lw}), UNet batch ${batch}`);

    // Text encoder: the prompts of one guided step (negative first), as generate() encodes them.
    const ids = Array.from({ length: batch }, (_, i) => engine.tokenize(i === 0 && batch > 1 ? '' : prompt));
    const timeText = async () => {
      const s = now();
      const out = await rt.runText(ids);
      return { ms: now() - s, out };
    };
    const first = await timeText();
    first.out.dispose();
    log(`text encoder: first run (weights + compile) ${first.ms.toFixed(0)} ms`);
    for (let i = 1; i < warmup; i++) (await timeText()).out.dispose();
    const textSamples: number[] = [];
    let context: Tensor | undefined;
    for (let i = 0; i < steps; i++) {
      const r = await timeText();
      textSamples.push(r.ms);
      context?.dispose();
      context = r.out;
    }
    sample();
    log(`text encoder: median ${stats(textSamples).median.toFixed(1)} ms`);

    // UNet step.
    const ch = engine.configs.unet.inChannels;
    t0 = now();
    const program = unetProgram(rt, batch, lh, lw, false);
    // --regions: the same step confining regions, timed alternately with the plain one (same process and weights).
    const regional = regions.length ? unetProgram(rt, batch, lh, lw, true) : undefined;
    const buildMs = now() - t0;
    sample();
    log(`UNet: graph built, weights uploaded and compiled in ${(buildMs / 1000).toFixed(1)} s`);
    const xb = batch <= 2 ? 1 : batch;
    const x = Tensor.from(randn(seed + 7, xb * ch * lh * lw), [xb, ch, lh, lw], rt.backend);
    const tt = Tensor.from(new Float32Array(batch).fill(500), [batch], rt.backend);
    const inputs = [x, tt, context!];
    const table = regional ? rt.regionInput(regions, 77, batch, batch === 2) : undefined;
    const regionSamples: number[] = [];
    let regionFirst = 0;
    const timeRegional = async () => {
      const s = now();
      (await regional!.run([...inputs, table!]))[0]!.dispose();
      return now() - s;
    };
    let outputFinite = true;
    let unetFirst = 0;
    let unetCpu: { own: number; others?: number } = { own: 0 };
    const unetSamples: number[] = [];
    let ops: BenchResults['ops'] = null;
    try {
      for (let i = 0; i < Math.max(1, warmup); i++) {
        const s = now();
        const [e] = await program.run(inputs);
        if (i === 0) unetFirst = now() - s;
        e!.dispose();
        if (i === 0) log(`UNet: first step ${unetFirst.toFixed(0)} ms`);
        if (regional) {
          const ms = await timeRegional();
          if (i === 0) regionFirst = ms;
        }
      }
      const meter = cpuMeter();
      for (let i = 0; i < steps; i++) {
        // With regions, every other pair runs the regional step first (no order bias).
        if (regional && i % 2) regionSamples.push(await timeRegional());
        const s = now();
        const [e] = await program.run(inputs);
        unetSamples.push(now() - s);
        if (i === steps - 1) outputFinite = e!.toFloat32().every(Number.isFinite);
        e!.dispose();
        if (regional && i % 2 === 0) regionSamples.push(await timeRegional());
        log(`UNet: step ${i + 1}/${steps} ${unetSamples[i]!.toFixed(0)} ms${regional ? `, with ${regions.length} regions ${regionSamples[i]!.toFixed(0)} ms` : ''}`);
      }
      unetCpu = meter();
      sample();
      if (opts.ops !== false) {
        const r = await program.runProfiled(inputs);
        for (const o of r.outputs) o.dispose();
        if (r.timings) {
          const agg = aggregateOps(r.timings, program.opShapes, elem, device === 'cpu' ? cpuPeak : undefined, program.opNames);
          ops = { profiledMs: agg.totalMs, stepMs: stats(unetSamples).median, clock: device === 'cuda' ? 'device' : 'host', rows: agg.rows, top: agg.top };
        }
      }
    } finally {
      for (const v of [...inputs, ...(table ? [table] : [])]) v.dispose();
    }
    const unetStats = stats(unetSamples);
    const gflopPerStep = programFlops(program.opNames, program.opShapes) / 1e9;
    const gflops = gflopPerStep / (unetStats.median / 1000);
    const peak = device === 'cpu' ? cpuPeak ?? null : null;

    // VAE decoder: one image, as generate() decodes.
    const lat = engine.configs.vae.latentChannels;
    const z = Tensor.from(randn(seed + 11, lat * lh * lw), [1, lat, lh, lw]);
    const vaeSamples: number[] = [];
    let vaeFirst = 0;
    try {
      for (let i = 0; i < Math.max(1, warmup); i++) {
        const s = now();
        (await engine.decodeLatents(z)).dispose();
        if (i === 0) vaeFirst = now() - s;
      }
      log(`VAE decode: first run ${vaeFirst.toFixed(0)} ms`);
      for (let i = 0; i < steps; i++) {
        const s = now();
        (await engine.decodeLatents(z)).dispose();
        vaeSamples.push(now() - s);
      }
    } finally {
      z.dispose();
    }
    sample();
    log(`VAE decode: median ${stats(vaeSamples).median.toFixed(0)} ms`);

    let generate: BenchResults['generate'] = null;
    if (opts.generate !== false) {
      const sampler = opts.sampler ?? 'ddim';
      const guidance = opts.guidance ?? (batch === 1 ? 1 : 7.5);
      const run = (n: number) => engine.generate({ prompt, width, height, steps: n, seed, sampler, guidanceScale: guidance });
      // One untimed step first: the step program (one for every step count) compiles there.
      const warm = await run(1);
      warm.latents.dispose();
      warm.pixels.dispose();
      const perImage: number[] = [];
      for (let i = 0; i < images; i++) {
        const s = now();
        const g = await run(steps);
        perImage.push((now() - s) / 1000);
        g.latents.dispose();
        g.pixels.dispose();
        log(`generate: ${sampler}, ${steps} steps, image ${i + 1}/${images}: ${perImage[i]!.toFixed(2)} s`);
      }
      const st = stats(perImage);
      generate = { sampler, steps, guidance, perImage: st, perStepMs: (st.median * 1000) / steps };
      sample();
    }

    const w = rt.residentBytes();
    const results: BenchResults = {
      loadMs,
      textEncoder: { batch, firstMs: first.ms, ms: stats(textSamples) },
      unet: { batch, buildMs, firstMs: unetFirst, ms: unetStats, gflopPerStep, gflops, ...(peak ? { ofPeak: gflops / peak } : {}), outputFinite, cpu: unetCpu,
        ...(regional ? { regions: { count: regions.length, firstMs: regionFirst, ms: stats(regionSamples), ratio: stats(regionSamples.map((v, i) => v / unetSamples[i]!)) } } : {}) },
      vaeDecode: { batch: 1, firstMs: vaeFirst, ms: stats(vaeSamples) },
      generate,
      memory: {
        maxRssBytes: process.resourceUsage().maxRSS * 1024,
        nativePeakBytes: nativePeak,
        weightsBytes: { unet: w.unet!, vae: w.vae!, text: w.text_encoder! },
      },
      ops,
    };
    machine.loadavg.end = Math.round(os.loadavg()[0]! * 100) / 100;
    return { command: opts.command ?? `bench(${JSON.stringify(publicOpts(opts))})`, date: new Date().toISOString(), machine, config, results };
  } finally {
    engine.dispose();
  }
}

function revision(): string | undefined {
  try {
    const cwd = fileURLToPath(new URL('../../', import.meta.url));
    return execFileSync('git', ['describe', '--always', '--dirty'], { cwd, stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).toString().trim() || undefined;
  } catch {
    return undefined;
  }
}

function publicOpts(o: BenchOptions): Omit<BenchOptions, 'log' | 'source'> {
  const { log: _l, source: _s, ...rest } = o;
  return rest;
}

/**
 * The UNet step program: generate()'s own guided step for batch 1 and 2 (one latent, duplicated
 * for classifier-free guidance inside the graph), or a plain batch-B UNet otherwise.
 */
function unetProgram(rt: SdRuntime, batch: number, h: number, w: number, regions: boolean): Program {
  if (batch === 2) return rt.unetProgram(1, h, w, 77, 7.5, { regions });
  return rt.unetProgram(batch, h, w, 77, null, { regions });
}

/** n regions of 2 tokens each (tokens 5, 6; 8, 9; ...) in side-by-side full-height boxes. */
function benchRegions(n: number): Region[] {
  return Array.from({ length: n }, (_, i) => ({ tokens: [5 + 3 * i, 6 + 3 * i], box: [i / n, 0, (i + 1) / n, 1] }));
}
