/**
 * `npm run bench -- --fewstep`: the few-step path against the default one, per 512² image end to
 * end (generate(): text encoder, every step, the decode), in one run, alternating:
 *   default:  25 steps DPM++ 2M Karras, guidance 7.5, the model's KL VAE;
 *   few-step: 4 steps LCM, guidance 1 (one UNet branch), TAESD decoding;
 * plus what the add-ons cost: setLoras with an SD-1.5-sized LoRA (rank 64 on every attention
 * projection and conv; synthesised) and its restore, and a TAESD preview per step.
 * Weights come from files, as a user's do (setLoras re-reads the base from them): with --random, an
 * SD-1.5-shaped model with seeded random weights (and a random TAESD of the real architecture) is
 * written once as a diffusers folder (float16, about 2 GB) under the temp folder and reused.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { SD15_SCHEDULER_JSON, SD15_TEXT, SD15_UNET, SD15_VAE } from '../io/configs.js';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { f32ToF16 } from '../io/half.js';
import type { ProgressInfo } from '../generate/options.js';
import { resolveBackend } from '../runtime/runtime.js';
import { randn } from '../sched/random.js';
import { Tensor } from '../tensor.js';
import { integer, invalid, oneOf } from '../validate.js';
import { stats } from './index.js';
import { describeMachine, type MachineInfo } from './machine.js';
import { defaultTokenizerDir, randomModelSource, sampleInit } from './random-model.js';
import type { Stats } from './report.js';

export const FEWSTEP_USAGE = `usage: npm run bench -- --fewstep (--random sd15 | --model DIR --vae TAESD_DIR) [options]
  --device cpu|cuda|auto   backend (default auto)
  --dtype float32|float16  compute dtype (default float16 on CUDA, float32 on the CPU)
  --size 512|WxH           image size (default 512)
  --rounds N               default/few-step image pairs, alternating (default 2)
  --steps N                few-step steps (default 4); the default path runs 25
  --lora-rank R            the synthesised LoRA's rank for the setLoras timing (default 64; 0 skips it)
  --no-preview             skip the preview-per-step timing
  --seed N, --prompt TEXT  random weights' seed; the prompt
  --json FILE              also write the report as JSON`;

export interface FewstepOptions {
  model?: string;
  random?: 'sd15';
  vae?: string;
  device?: 'auto' | 'cpu' | 'cuda';
  dtype?: 'float32' | 'float16';
  width?: number;
  height?: number;
  rounds?: number;
  steps?: number;
  loraRank?: number;
  preview?: boolean;
  seed?: number;
  prompt?: string;
  command?: string;
  log?: (line: string) => void;
}

export interface FewstepReport {
  command: string;
  date: string;
  machine: MachineInfo;
  config: { model: string; taesd: string; device: string; dtype: string; width: number; height: number; rounds: number; steps: number; baseline: string; fewstep: string };
  results: {
    /** Seconds per image, one sample per round. */
    defaultPath: Stats;
    fewstep: Stats;
    /** default / few-step, medians. */
    speedup: number;
    lora: { rank: number; modules: number; fileBytes: number; setMs: Stats; restoreMs: Stats } | null;
    /** One step's preview (SdRuntime.preview: x0 → the preview image), ms; and the few-step generate() with previews, s per image. */
    previewMsPerStep: Stats | null;
    fewstepWithPreview: Stats | null;
    /** This process's CPU seconds (user + system) per sample of the measurements above. */
    cpuSeconds: { defaultPath: number[]; fewstep: number[]; setLoras: number[]; restore: number[] };
  };
}

const snake = (k: string) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const json = (o: object, skip: string[], extra: object) =>
  JSON.stringify({ ...extra, ...Object.fromEntries(Object.entries(o).filter(([k]) => !skip.includes(k)).map(([k, v]) => [snake(k), v])) }, null, 1);

/** An SD-1.5-shaped diffusers folder with seeded random float16 weights, and a random TAESD folder beside it (written once, reused). */
export function materializeRandomSd15(seed: number, log: (l: string) => void): { model: string; taesd: string } {
  const dir = path.join(os.tmpdir(), `idforge-bench-sd15-seed${seed}`);
  const model = path.join(dir, 'model');
  const taesd = path.join(dir, 'taesd');
  if (fs.existsSync(path.join(dir, '.complete'))) return { model, taesd };
  log(`writing a random SD-1.5-shaped model (float16, ~2 GB) to ${dir} (once)`);
  const src = randomModelSource('sd15', { seed, dtype: 'F16' });
  const tiny = randomModelSource('sd15', { seed, dtype: 'F16', vae: 'tiny' });
  const write = (file: string, refs: Map<string, { shape: number[]; readBytes(): Buffer }>) => {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const t: Record<string, TensorToWrite> = {};
    for (const [name, r] of refs) t[name] = { dtype: 'F16', shape: r.shape, data: r.readBytes() };
    writeSafetensors(file, t);
  };
  fs.rmSync(dir, { recursive: true, force: true });
  write(path.join(model, 'unet', 'diffusion_pytorch_model.safetensors'), src.weights.unet);
  write(path.join(model, 'vae', 'diffusion_pytorch_model.safetensors'), src.weights.vae);
  write(path.join(model, 'text_encoder', 'model.safetensors'), src.weights.text);
  write(path.join(taesd, 'diffusion_pytorch_model.safetensors'), tiny.weights.vae);
  fs.writeFileSync(path.join(model, 'model_index.json'), JSON.stringify({ _class_name: 'StableDiffusionPipeline' }));
  fs.writeFileSync(path.join(model, 'unet', 'config.json'), json(SD15_UNET, ['attentionHeads'], { _class_name: 'UNet2DConditionModel' }));
  fs.writeFileSync(path.join(model, 'vae', 'config.json'), json(SD15_VAE, ['normEps'], { _class_name: 'AutoencoderKL' }));
  fs.writeFileSync(path.join(model, 'text_encoder', 'config.json'), json(SD15_TEXT, [], { architectures: ['CLIPTextModel'] }));
  fs.mkdirSync(path.join(model, 'scheduler'));
  fs.writeFileSync(path.join(model, 'scheduler', 'scheduler_config.json'), JSON.stringify(SD15_SCHEDULER_JSON));
  fs.cpSync(defaultTokenizerDir(), path.join(model, 'tokenizer'), { recursive: true });
  fs.writeFileSync(path.join(taesd, 'config.json'), JSON.stringify({ _class_name: 'AutoencoderTiny' }));
  fs.writeFileSync(path.join(dir, '.complete'), '');
  return { model, taesd };
}

/**
 * A kohya-named float16 LoRA of rank `rank` on every attention projection (UNet attn1/attn2 q, k,
 * v, out; the text encoder's q, k, v, out) and every UNet conv (LoCon on the 3x3 ones), alpha =
 * rank, small random values. Returns how many modules it holds and the file's size.
 */
export function writeSyntheticLora(file: string, engine: Engine, rank: number, seed: number): { modules: number; bytes: number } {
  const t: Record<string, TensorToWrite> = {};
  let modules = 0;
  const add = (prefix: string, name: string, shape: readonly number[]) => {
    const k = `${prefix}_${name.slice(0, -'.weight'.length).replace(/\./g, '_')}`;
    const tail = shape.slice(1);
    const down = [rank, ...tail];
    const up = shape.length === 4 ? [shape[0]!, rank, 1, 1] : [shape[0]!, rank];
    const n = (s: number[]) => s.reduce((a, b) => a * b, 1);
    t[`${k}.lora_down.weight`] = { dtype: 'F16', shape: down, data: f32ToF16(sampleInit({ kind: 'normal', std: 0.01 }, n(down), seed + 2 * modules)) };
    t[`${k}.lora_up.weight`] = { dtype: 'F16', shape: up, data: f32ToF16(sampleInit({ kind: 'normal', std: 0.01 }, n(up), seed + 2 * modules + 1)) };
    t[`${k}.alpha`] = { dtype: 'F16', shape: [], data: f32ToF16(Float32Array.of(rank)) };
    modules++;
  };
  const w = engine.runtime.weights;
  for (const [name, r] of w.unet.refs) {
    if (!name.endsWith('.weight')) continue;
    if (r.shape.length === 4 || /\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(name)) add('lora_unet', name, r.shape);
  }
  for (const [name, r] of w.text.refs) if (/self_attn\.(q|k|v|out)_proj\.weight$/.test(name)) add('lora_te', name, r.shape);
  writeSafetensors(file, t, { ss_network_module: 'networks.lora' });
  return { modules, bytes: fs.statSync(file).size };
}

const now = () => performance.now();

export async function benchFewstep(o: FewstepOptions): Promise<FewstepReport> {
  const log = o.log ?? (() => {});
  const machine = describeMachine();
  const { device, dtype } = resolveBackend(o);
  const width = o.width ?? 512, height = o.height ?? width;
  const rounds = o.rounds ?? 2, steps = o.steps ?? 4, rank = o.loraRank ?? 64, seed = o.seed ?? 0;
  const prompt = o.prompt ?? 'a photo of the face of person, oil painting';
  let model: string, taesd: string;
  if (o.random !== undefined) ({ model, taesd } = materializeRandomSd15(seed, log));
  else if (o.model !== undefined && o.vae !== undefined) ({ model, taesd } = { model: o.model, taesd: o.vae });
  else throw invalid('bench --fewstep', 'given --random sd15, or --model DIR with --vae TAESD_DIR');
  const base = { prompt, width, height, seed };
  const defaults = { ...base, steps: 25, sampler: 'dpmpp-2m-karras' as const, guidanceScale: 7.5 };
  const few = { ...base, steps, sampler: 'lcm' as const, guidanceScale: 1 };
  // Wall time, and this process's CPU seconds (user + system): on a shared machine the wall time
  // grows with the other processes' load, the CPU seconds much less.
  const cpu = { defaultPath: [] as number[], fewstep: [] as number[], setLoras: [] as number[], restore: [] as number[] };
  const measure = async (f: () => Promise<unknown>, into?: number[]): Promise<number> => {
    const c0 = process.cpuUsage();
    const s = now();
    await f();
    const ms = now() - s;
    const c = process.cpuUsage(c0);
    into?.push((c.user + c.system) / 1e6);
    return ms;
  };
  const time = (engine: Engine, opts: Parameters<Engine['generate']>[0], into?: number[]) => measure(async () => {
    const r = await engine.generate(opts);
    r.latents.dispose();
    r.pixels.dispose();
  }, into);

  const defaultS: number[] = [], fewS: number[] = [], setMs: number[] = [], restoreMs: number[] = [], previewMs: number[] = [], previewRunS: number[] = [];
  let lora: { modules: number; bytes: number } | undefined;
  // The synthesised LoRA lives in the temp folder for the run (never beside a model the user named).
  const loraFile = path.join(os.tmpdir(), `idforge-bench-lora-r${rank}-${process.pid}.safetensors`);
  try {
    for (let r = 0; r < rounds; r++) {
      {
        using engine = await Engine.load(model, { device, dtype });
        await time(engine, { ...defaults, steps: 1 }); // weights uploaded and programs compiled, untimed
        defaultS.push((await time(engine, defaults, cpu.defaultPath)) / 1000);
        log(`round ${r + 1}: default path ${defaultS[r]!.toFixed(1)} s per image`);
      }
      {
        using engine = await Engine.load(model, { device, dtype, vae: taesd, previewVae: taesd });
        await time(engine, { ...few, steps: 1 });
        fewS.push((await time(engine, few, cpu.fewstep)) / 1000);
        log(`round ${r + 1}: few-step path ${fewS[r]!.toFixed(2)} s per image`);
        if (o.preview !== false) {
          // A generate() with previews (checked to deliver one per step), then the preview call the
          // Denoiser makes after each step, timed on its own: x0 on the device → the preview image.
          let previews = 0;
          const onProgress = (p: ProgressInfo) => { if (p.preview) previews++; };
          const ms = await time(engine, { ...few, onProgress });
          if (previews !== steps) throw new IdforgeError('E_INTERNAL', `bench: ${previews} previews for ${steps} steps`);
          const rt = engine.runtime;
          using x0 = Tensor.from(randn(seed + 3, 4 * (height / 8) * (width / 8)), [1, 4, height / 8, width / 8], rt.backend);
          const one: number[] = [];
          for (let k = 0; k < 4; k++) {
            const s = now();
            await rt.preview(x0);
            if (k > 0) one.push(now() - s); // the first compiles its program
          }
          previewMs.push(stats(one).median);
          previewRunS.push(ms / 1000);
          log(`round ${r + 1}: with a preview each step ${(ms / 1000).toFixed(2)} s; one preview ${previewMs[r]!.toFixed(0)} ms`);
        }
        if (rank > 0) {
          lora ??= writeSyntheticLora(loraFile, engine, rank, seed);
          setMs.push(await measure(() => engine.setLoras([{ path: loraFile, scale: 1 }]), cpu.setLoras));
          restoreMs.push(await measure(() => engine.setLoras([]), cpu.restore));
          log(`round ${r + 1}: setLoras (rank ${rank}) ${setMs[r]!.toFixed(0)} ms, restore ${restoreMs[r]!.toFixed(0)} ms`);
        }
      }
    }
  } finally {
    fs.rmSync(loraFile, { force: true });
  }
  machine.loadavg.end = Math.round(os.loadavg()[0]! * 100) / 100;
  const d = stats(defaultS), f = stats(fewS);
  return {
    command: o.command ?? 'benchFewstep()',
    date: new Date().toISOString(),
    machine,
    config: {
      model: o.random ? `random sd15 (seed ${seed}), float16 files: ${model}` : model, taesd, device, dtype, width, height, rounds, steps,
      baseline: '25 steps dpmpp-2m-karras, guidance 7.5, KL VAE', fewstep: `${steps} steps lcm, guidance 1, TAESD`,
    },
    results: {
      defaultPath: d,
      fewstep: f,
      speedup: d.median / f.median,
      lora: rank > 0 && lora ? { rank, modules: lora.modules, fileBytes: lora.bytes, setMs: stats(setMs), restoreMs: stats(restoreMs) } : null,
      previewMsPerStep: previewMs.length ? stats(previewMs) : null,
      fewstepWithPreview: previewRunS.length ? stats(previewRunS) : null,
      cpuSeconds: cpu,
    },
  };
}

export function formatFewstepReport(r: FewstepReport): string {
  const cfg = r.config, x = r.results, m = r.machine;
  const s = (st: Stats, d = 1) => `${st.median.toFixed(d)} (${st.samples.map((v) => v.toFixed(d)).join(', ')})`;
  const c = (a: number[]) => (a.length ? `; CPU s ${a.map((v) => v.toFixed(1)).join(', ')}` : '');
  return [
    `idforge bench --fewstep  ${r.date}`,
    `machine: ${m.cpu}, ${m.cpus} CPUs (${m.threads} backend threads, ${m.simd}); load average ${m.loadavg.start}${m.loadavg.end !== undefined ? ` → ${m.loadavg.end}` : ''}`,
    `model: ${cfg.model}; TAESD ${cfg.taesd}; ${cfg.device} ${cfg.dtype}; ${cfg.width}x${cfg.height}; ${cfg.rounds} round(s), alternating`,
    `command: ${r.command}`,
    '',
    `default path  (${cfg.baseline}): ${s(x.defaultPath)} s per image${c(x.cpuSeconds.defaultPath)}`,
    `few-step path (${cfg.fewstep}): ${s(x.fewstep, 2)} s per image${c(x.cpuSeconds.fewstep)}`,
    `speedup: ${x.speedup.toFixed(1)}x (medians)`,
    x.lora ? `setLoras, rank ${x.lora.rank} on ${x.lora.modules} attention/conv modules (${(x.lora.fileBytes / 2 ** 20).toFixed(0)} MiB file): ${s(x.lora.setMs, 0)} ms${c(x.cpuSeconds.setLoras)}; setLoras([]) ${s(x.lora.restoreMs, 0)} ms${c(x.cpuSeconds.restore)}` : 'setLoras: not timed',
    x.previewMsPerStep ? `preview per step (TAESD, longer side 256 px): ${s(x.previewMsPerStep, 0)} ms; the few-step image with a preview each step: ${s(x.fewstepWithPreview!, 2)} s` : 'preview: not timed',
  ].join('\n');
}

export function parseFewstepArgs(argv: string[]): { opts: FewstepOptions; json?: string; help: boolean; quiet: boolean } {
  const { values: v } = parseArgs({
    args: argv.filter((a) => a !== '--fewstep'),
    strict: true,
    options: {
      model: { type: 'string' }, random: { type: 'string' }, vae: { type: 'string' }, device: { type: 'string' }, dtype: { type: 'string' },
      size: { type: 'string' }, rounds: { type: 'string' }, steps: { type: 'string' }, 'lora-rank': { type: 'string' }, 'no-preview': { type: 'boolean' },
      seed: { type: 'string' }, prompt: { type: 'string' }, json: { type: 'string' }, quiet: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
    },
  });
  const int = (s: string | undefined, what: string, min: number) => (s === undefined ? undefined : integer(s.trim() === '' ? NaN : Number(s), `--${what}`, min));
  const opts: FewstepOptions = { command: `npm run bench -- ${argv.join(' ')}` };
  if (v.random !== undefined) {
    opts.random = oneOf(v.random, '--random', ['sd15'] as const);
  }
  if (v.model !== undefined) opts.model = v.model;
  if (v.vae !== undefined) opts.vae = v.vae;
  if (v.device !== undefined) opts.device = v.device as FewstepOptions['device'];
  if (v.dtype !== undefined) opts.dtype = v.dtype as FewstepOptions['dtype'];
  if (v.size !== undefined) {
    const mm = /^(\d+)(?:x(\d+))?$/i.exec(v.size.trim());
    if (!mm) throw invalid('--size', 'N or WxH', v.size);
    opts.width = Number(mm[1]);
    opts.height = Number(mm[2] ?? mm[1]);
  }
  const set = <K extends 'rounds' | 'steps' | 'loraRank' | 'seed'>(k: K, s: string | undefined, what: string, min: number) => {
    const n = int(s, what, min);
    if (n !== undefined) opts[k] = n;
  };
  set('rounds', v.rounds, 'rounds', 1);
  set('steps', v.steps, 'steps', 1);
  set('loraRank', v['lora-rank'], 'lora-rank', 0);
  set('seed', v.seed, 'seed', 0);
  if (v['no-preview']) opts.preview = false;
  if (v.prompt !== undefined) opts.prompt = v.prompt;
  return { opts, ...(v.json !== undefined ? { json: v.json } : {}), help: !!v.help, quiet: !!v.quiet };
}
