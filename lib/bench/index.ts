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
import { IdforgeError } from '../errors.js';
import type { Program } from '../graph/program.js';
import { memory } from '../native.js';
import { randn } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import type { ModelSource } from '../io/checkpoint.js';
import { aggregateOps, programFlops, type OpInstance, type OpRow } from './flops.js';
import { cpuMeter, describeMachine, type MachineInfo } from './machine.js';
import { randomModelSource, type RandomPreset } from './random-model.js';

export { randomModelSource, modelLayout, unetLayout, vaeLayout, textLayout, paramCount, sd15Configs } from './random-model.js';
export { opFlops, opBytes, aggregateOps, programFlops } from './flops.js';
export { describeMachine, type MachineInfo } from './machine.js';
export { formatReport } from './table.js';

export interface BenchOptions {
  /** A diffusers folder or single .safetensors file. */
  model?: string;
  /** Synthetic weights with a real architecture instead of a model on disk. */
  random?: RandomPreset;
  /** An already opened source (taken over and closed). */
  source?: ModelSource;
  device?: 'auto' | 'cpu' | 'cuda';
  dtype?: 'float32' | 'float16';
  /** Image size (default 512×512). */
  width?: number;
  height?: number;
  /** UNet batch: 2 = one image with classifier-free guidance (default), 1 = no guidance. */
  batch?: number;
  /** Timed repetitions per stage after warm-up, and the steps of the timed generate() (default 5). */
  steps?: number;
  /** Untimed runs before timing (default 1; the first run also builds and uploads). */
  warmup?: number;
  /** Time a whole generate() (default true). */
  generate?: boolean;
  /** Profile one UNet step per op (default true). */
  ops?: boolean;
  seed?: number;
  prompt?: string;
  /** Recorded in the result (the CLI passes its command line). */
  command?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface Stats {
  n: number;
  median: number;
  min: number;
  max: number;
  q1: number;
  q3: number;
  mean: number;
  samples: number[];
}

export interface BenchConfig {
  model: string;
  device: 'cpu' | 'cuda';
  dtype: 'float32' | 'float16';
  width: number;
  height: number;
  latent: [number, number];
  batch: number;
  steps: number;
  warmup: number;
  seed: number;
  prompt: string;
  /** `git describe --always --dirty` of the package checkout, when it is one. */
  revision?: string;
}

export interface BenchResults {
  /** Opening the model (headers and configs; weights load lazily on first use). */
  loadMs: number;
  textEncoder: { batch: number; firstMs: number; ms: Stats };
  unet: {
    batch: number;
    /** Building the step graph: weights read (or generated) and uploaded, program compiled. */
    buildMs: number;
    firstMs: number;
    ms: Stats;
    gflopPerStep: number;
    gflops: number;
    ofPeak?: number;
    outputFinite: boolean;
    /** CPUs busy on average during the timed steps: this process, and everything else (Linux). */
    cpu: { own: number; others?: number };
  };
  vaeDecode: { batch: number; firstMs: number; ms: Stats };
  generate: { steps: number; s: number } | null;
  memory: {
    /** process.resourceUsage().maxRSS, bytes. */
    maxRssBytes: number;
    /** Highest live native tensor bytes seen between stages (idforge memory()). */
    nativePeakBytes: { cpu: number; cuda: number };
    weightsBytes: { unet: number; vae: number; text: number };
  };
  /** clock: 'device' = CUDA events between ops (no host sync), 'host' = each op synchronised and timed. */
  ops: { profiledMs: number; stepMs: number; clock: 'device' | 'host'; rows: OpRow[]; top: OpInstance[] } | null;
}

export interface BenchReport {
  command: string;
  date: string;
  machine: MachineInfo;
  config: BenchConfig;
  results: BenchResults;
}

export function stats(samples: readonly number[]): Stats {
  if (samples.length === 0) throw new IdforgeError('E_ARGUMENT', 'stats of no samples');
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

function posInt(v: unknown, what: string, min = 1): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)
    throw new IdforgeError('E_ARGUMENT', `${what} must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  return v;
}

async function openEngine(o: BenchOptions, device: 'cpu' | 'cuda', dtype: 'float32' | 'float16'): Promise<{ engine: Engine; model: string }> {
  const given = [o.model !== undefined, o.random !== undefined, o.source !== undefined].filter(Boolean).length;
  if (given !== 1) throw new IdforgeError('E_ARGUMENT', 'bench needs exactly one of model (a path), random (e.g. "sd15") or source');
  if (o.model !== undefined) return { engine: await Engine.load(o.model, { device, dtype }), model: o.model };
  if (o.source) return { engine: Engine.fromSource(o.source, { device, dtype }), model: o.source.path };
  const src = randomModelSource(o.random!, { seed: o.seed ?? 0, dtype: dtype === 'float16' ? 'F16' : 'F32' });
  return { engine: Engine.fromSource(src, { device, dtype }), model: `random ${o.random} (seed ${o.seed ?? 0})` };
}

function resolveDevice(o: BenchOptions, cudaAvailable: () => boolean): { device: 'cpu' | 'cuda'; dtype: 'float32' | 'float16' } {
  const d = o.device ?? 'auto';
  if (!['auto', 'cpu', 'cuda'].includes(d)) throw new IdforgeError('E_ARGUMENT', `device must be auto, cpu or cuda, got ${JSON.stringify(d)}`);
  const device = d === 'auto' ? (cudaAvailable() ? 'cuda' : 'cpu') : d;
  const dtype = o.dtype ?? (device === 'cuda' ? 'float16' : 'float32');
  if (dtype !== 'float32' && dtype !== 'float16') throw new IdforgeError('E_ARGUMENT', `dtype must be float32 or float16, got ${JSON.stringify(dtype)}`);
  if (device === 'cpu' && dtype !== 'float32') throw new IdforgeError('E_ARGUMENT', 'the CPU backend computes in float32 only');
  return { device, dtype };
}

/** Runs the benchmark and returns its report (the JSON `npm run bench -- --json` writes). */
export async function bench(opts: BenchOptions): Promise<BenchReport> {
  const log = opts.log ?? (() => {});
  const machine = describeMachine();
  const { device, dtype } = resolveDevice(opts, () => machine.cuda.available);
  const width = posInt(opts.width ?? 512, 'width');
  const height = posInt(opts.height ?? opts.width ?? 512, 'height');
  const batch = posInt(opts.batch ?? 2, 'batch');
  const steps = posInt(opts.steps ?? 5, 'steps');
  const warmup = posInt(opts.warmup ?? 1, 'warmup', 0);
  const seed = posInt(opts.seed ?? 0, 'seed', 0);
  const prompt = opts.prompt ?? 'a photo of the face of person, oil painting';
  const elem = dtype === 'float16' ? 2 : 4;

  const nativePeak = { cpu: 0, cuda: 0 };
  const sample = () => {
    const m = memory();
    nativePeak.cpu = Math.max(nativePeak.cpu, m.cpu);
    nativePeak.cuda = Math.max(nativePeak.cuda, m.cuda);
  };

  let t0 = now();
  const { engine, model } = await openEngine(opts, device, dtype);
  const loadMs = now() - t0;
  try {
    const mult = engine.sizeMultiple;
    for (const [k, v] of [['width', width], ['height', height]] as const)
      if (v % mult) throw new IdforgeError('E_SHAPE', `${k} ${v} is not a multiple of ${mult}`);
    const lh = height / engine.latentFactor;
    const lw = width / engine.latentFactor;
    const rev = revision();
    const config: BenchConfig = { model, device, dtype, width, height, latent: [lh, lw], batch, steps, warmup, seed, prompt, ...(rev ? { revision: rev } : {}) };
    log(`model ${model} on ${device} ${dtype}, ${width}x${height} (latent ${lh}x${lw}), UNet batch ${batch}`);

    // Text encoder: the prompts of one guided step (negative first), as generate() encodes them.
    const ids = Array.from({ length: batch }, (_, i) => engine.tokenize(i === 0 && batch > 1 ? '' : prompt));
    const timeText = async () => {
      const s = now();
      const out = await engine.runText(ids);
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
    const program = unetProgram(engine, batch, lh, lw);
    const buildMs = now() - t0;
    sample();
    log(`UNet: graph built, weights uploaded and compiled in ${(buildMs / 1000).toFixed(1)} s`);
    const xb = batch <= 2 ? 1 : batch;
    const x = Tensor.from(randn(seed + 7, xb * ch * lh * lw), [xb, ch, lh, lw], engine.backend);
    const tt = Tensor.from(new Float32Array(batch).fill(500), [batch], engine.backend);
    const inputs = [x, tt, context!];
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
      }
      const meter = cpuMeter();
      for (let i = 0; i < steps; i++) {
        const s = now();
        const [e] = await program.run(inputs);
        unetSamples.push(now() - s);
        if (i === steps - 1) outputFinite = e!.toFloat32().every(Number.isFinite);
        e!.dispose();
        log(`UNet: step ${i + 1}/${steps} ${unetSamples[i]!.toFixed(0)} ms`);
      }
      unetCpu = meter();
      sample();
      if (opts.ops !== false) {
        const r = await program.runProfiled(inputs);
        for (const o of r.outputs) o.dispose();
        if (r.timings) {
          const agg = aggregateOps(r.timings, program.opShapes, elem, device === 'cpu' ? machine.fp32PeakGflops ?? undefined : undefined, program.opNames);
          ops = { profiledMs: agg.totalMs, stepMs: stats(unetSamples).median, clock: device === 'cuda' ? 'device' : 'host', rows: agg.rows, top: agg.top };
        }
      }
    } finally {
      x.dispose();
      tt.dispose();
      context?.dispose();
    }
    const unetStats = stats(unetSamples);
    const gflopPerStep = programFlops(program.opNames, program.opShapes) / 1e9;
    const gflops = gflopPerStep / (unetStats.median / 1000);
    const peak = device === 'cpu' ? machine.fp32PeakGflops : null;

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
      const s = now();
      const g = await engine.generate({ prompt, width, height, steps, seed, guidanceScale: batch === 1 ? 1 : 7.5 });
      generate = { steps, s: (now() - s) / 1000 };
      g.latents.dispose();
      g.pixels.dispose();
      sample();
      log(`generate: ${steps} steps in ${generate.s.toFixed(2)} s`);
    }

    const w = engine.w;
    const results: BenchResults = {
      loadMs,
      textEncoder: { batch, firstMs: first.ms, ms: stats(textSamples) },
      unet: { batch, buildMs, firstMs: unetFirst, ms: unetStats, gflopPerStep, gflops, ...(peak ? { ofPeak: gflops / peak } : {}), outputFinite, cpu: unetCpu },
      vaeDecode: { batch: 1, firstMs: vaeFirst, ms: stats(vaeSamples) },
      generate,
      memory: {
        maxRssBytes: process.resourceUsage().maxRSS * 1024,
        nativePeakBytes: nativePeak,
        weightsBytes: { unet: w.unet.residentBytes, vae: w.vae.residentBytes, text: w.text.residentBytes },
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
function unetProgram(engine: Engine, batch: number, h: number, w: number): Program {
  if (batch === 2) return engine.guidedUNet(h, w, 77, 7.5);
  return engine.unetProgram(batch, h, w, 77, null);
}
