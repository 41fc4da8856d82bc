// Command-line options of `npm run bench` (see bench/README.md).
import { parseArgs } from 'node:util';
import { badSampler, isSamplerName } from '../sched/sampler.js';
import type { BenchOptions } from './report.js';
import { invalid } from '../validate.js';

export const USAGE = `usage: npm run bench -- (--model DIR|FILE | --random sd15) [options]
  --device cpu|cuda|auto    backend (default auto: CUDA when available)
  --dtype float32|float16   compute dtype (default float16 on CUDA, float32 on the CPU)
  --size 256|512|WxH        image size (default 512)
  --batch N                 UNet batch: 2 = one guided image (default), 1 = unguided
  --steps N                 timed runs per stage, and steps of the timed generate() (default 5)
  --warmup N                untimed runs first (default 1)
  --no-generate             skip the whole-generate() timing (for big sizes)
  --sampler NAME            sampler of the timed generate(): ddim (default), dpmpp-2m, dpmpp-2m-karras, euler, euler-a, lcm
  --guidance X              guidance scale of the timed generate() (default 7.5; 1 with --batch 1: one UNet branch)
  --vae tiny|DIR            the engine's VAE: tiny = a random TAESD of the real architecture (--random), DIR = a VAE folder (--model)
  --images N                timed generate() calls, one image each: the time per image (default 1)
  --no-ops                  skip the per-op profile
  --regions N               also time the UNet step confining N regions, alternating with the plain one
  --threads N               CPU backend threads (sets IDFORGE_THREADS)
  --seed N                  seeds the random weights and inputs (default 0)
  --prompt TEXT             prompt for the text encoder and generate()
  --json FILE               also write the report as JSON
  --quiet                   no progress lines on stderr`;

function shellQuote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

export function parseSize(s: string): { width: number; height: number } {
  const m = /^(\d+)(?:x(\d+))?$/i.exec(s.trim());
  if (!m) throw invalid('--size', 'N or WxH', s);
  const width = Number(m[1]);
  return { width, height: m[2] ? Number(m[2]) : width };
}

function int(v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw invalid(what, 'an integer', v);
  return n;
}

export function parseBenchArgs(argv: string[]): { opts: BenchOptions; json?: string; quiet: boolean; help: boolean } {
  const { values: v } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      model: { type: 'string' },
      random: { type: 'string' },
      device: { type: 'string' },
      dtype: { type: 'string' },
      size: { type: 'string' },
      batch: { type: 'string' },
      steps: { type: 'string' },
      warmup: { type: 'string' },
      'no-generate': { type: 'boolean' },
      sampler: { type: 'string' },
      guidance: { type: 'string' },
      vae: { type: 'string' },
      images: { type: 'string' },
      'no-ops': { type: 'boolean' },
      regions: { type: 'string' },
      threads: { type: 'string' },
      seed: { type: 'string' },
      prompt: { type: 'string' },
      json: { type: 'string' },
      quiet: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const opts: BenchOptions = { command: `npm run bench -- ${argv.map(shellQuote).join(' ')}`.trimEnd() };
  if (v.model !== undefined) opts.model = v.model;
  if (v.random !== undefined) {
    if (v.random !== 'sd15') throw invalid('--random', "'sd15' (the one it knows)", v.random);
    opts.random = 'sd15';
  }
  if (v.device !== undefined) opts.device = v.device as BenchOptions['device'];
  if (v.dtype !== undefined) opts.dtype = v.dtype as BenchOptions['dtype'];
  if (v.size !== undefined) Object.assign(opts, parseSize(v.size));
  const set = (k: 'batch' | 'steps' | 'warmup' | 'seed' | 'regions', s: string | undefined) => {
    const n = int(s, `--${k}`);
    if (n !== undefined) opts[k] = n;
  };
  set('batch', v.batch);
  set('steps', v.steps);
  set('warmup', v.warmup);
  set('seed', v.seed);
  set('regions', v.regions);
  if (v['no-generate']) opts.generate = false;
  if (v.sampler !== undefined) {
    if (!isSamplerName(v.sampler)) throw badSampler(v.sampler);
    opts.sampler = v.sampler;
  }
  if (v.guidance !== undefined) {
    const gs = Number(v.guidance);
    if (!v.guidance.trim() || !Number.isFinite(gs) || gs < 0) throw invalid('--guidance', 'a number ≥ 0', v.guidance);
    opts.guidance = gs;
  }
  if (v.vae !== undefined) opts.vae = v.vae;
  const images = int(v.images, '--images');
  if (images !== undefined) opts.images = images;
  if (v['no-ops']) opts.ops = false;
  if (v.prompt !== undefined) opts.prompt = v.prompt;
  if (v.threads !== undefined) {
    const n = int(v.threads, '--threads');
    if (!n || n < 1) throw invalid('--threads', 'an integer ≥ 1', v.threads);
    process.env.IDFORGE_THREADS = String(n);
  }
  return { opts, ...(v.json !== undefined ? { json: v.json } : {}), quiet: !!v.quiet, help: !!v.help };
}
