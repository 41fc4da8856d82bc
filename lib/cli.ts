#!/usr/bin/env node
// idforge command line: `idforge generate --model <dir|file> --prompt "..." [options]`.
import { parseArgs } from 'node:util';
import { Engine } from './engine.js';
import { IdforgeError } from './errors.js';
import { checkImageOutput, saveImage } from './io/image.js';
import { loraArg, num, opt } from './cliargs.js';
import type { SamplerName } from './sched/sampler.js';

const USAGE = `usage: idforge generate --model <dir|file.safetensors> --prompt "text" [options]
       idforge serve | worker | build | eval --help   (HTTP server, BullMQ worker, compile the addon, identity report)
  --negative TEXT     negative prompt ("")
  --steps N           sampler steps (50)
  --sampler S         ddim | dpmpp-2m | dpmpp-2m-karras | euler | euler-a | lcm (ddim)
  --lora FILE[:X]     merge a LoRA file at scale X (1); repeat for several (LCM-LoRA: --sampler lcm --guidance 1 --steps 4)
  --vae DIR           another VAE in place of the model's (e.g. a TAESD folder: fast decodes)
  --num-images N      images in one batch, image i seeded with seed + i (1); written as out-0.png, ...
  --image FILE        image to image: start from this picture (its size unless --width/--height)
  --strength X        image to image: how much of the schedule runs, (0, 1] (0.8)
  --guidance X        classifier-free guidance scale (7.5)
  --seed N            seed of the deterministic generator (random; -1: random)
  --width N --height N  image size (512x512; multiples of the model's downsampling)
  --device D          auto | cpu | cuda (auto)
  --dtype T           float32 | float16 (float16 on CUDA, float32 on the CPU)
  --out FILE          output image (out.png)
       idforge build-dataset --help, idforge train-encoder --help   (DreamIdentity encoder training)`;


function bar(step: number, fraction: number | undefined, steps: number, ms: number): string {
  const w = 30;
  const done = Math.round(((step + (fraction ?? 0)) / steps) * w);
  const where = fraction === undefined ? `${step}/${steps}` : `${step}/${steps} (step ${step + 1}: ${Math.round(fraction * 100)}%)`;
  return `\r[${'#'.repeat(done)}${'.'.repeat(w - done)}] ${where} ${(ms / 1000).toFixed(1)}s\x1b[K`;
}

/** `--seed -1` → `--seed=-1`: parseArgs would read a negative number as an option. */
function joinNegativeNumbers(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (a.startsWith('--') && !a.includes('=') && next !== undefined && /^-\d/.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** Subcommands that live in their own files (loaded on demand: `generate` never loads Fastify). */
const COMMANDS: Record<string, () => Promise<(argv: string[]) => Promise<number>>> = {
  serve: async () => (await import('./serve/cli.js')).serve,
  worker: async () => (await import('./serve/cli.js')).worker,
  build: async () => (await import('./build.js')).build,
  // CLIP and the face models, which generate never needs.
  eval: async () => (await import('./eval/cli.js')).main,
  // DreamIdentity encoder training.
  'train-encoder': async () => (await import('./dreamidentity/cli.js')).trainCmd,
  'build-dataset': async () => (await import('./dreamidentity/cli.js')).datasetCmd,
};

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd !== undefined && Object.hasOwn(COMMANDS, cmd)) return (await COMMANDS[cmd]!())(rest);
  if (cmd !== 'generate') {
    process.stderr.write(`${USAGE}\n`);
    return cmd === undefined || cmd === '--help' || cmd === '-h' ? 0 : 2;
  }
  const { values } = parseArgs({
    args: joinNegativeNumbers(rest),
    options: {
      model: { type: 'string' }, prompt: { type: 'string' }, negative: { type: 'string' },
      steps: { type: 'string' }, guidance: { type: 'string' }, seed: { type: 'string' },
      width: { type: 'string' }, height: { type: 'string' }, device: { type: 'string' },
      dtype: { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean' },
      sampler: { type: 'string' }, 'num-images': { type: 'string' }, image: { type: 'string' }, strength: { type: 'string' },
      lora: { type: 'string', multiple: true }, vae: { type: 'string' },
    },
  });
  if (values.help || !values.model || values.prompt === undefined) {
    process.stderr.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  // Checked before the model loads: a run must not end in "cannot write" after minutes of work.
  const out = values.out ?? 'out.png';
  checkImageOutput(out);
  const seed = num(values.seed, 'seed');
  const loras = (values.lora ?? []).map(loraArg);
  const engine = await Engine.load(values.model, {
    device: (values.device ?? 'auto') as 'auto' | 'cpu' | 'cuda',
    ...(values.dtype ? { dtype: values.dtype as 'float32' | 'float16' } : {}),
    ...opt('vae', values.vae),
  });
  try {
    if (loras.length) await engine.setLoras(loras);
    const ac = new AbortController();
    // First Ctrl-C: abort the run (it stops within a fraction of a second); a second one exits now.
    process.once('SIGINT', () => {
      ac.abort();
      process.once('SIGINT', () => process.exit(130));
    });
    const r = await engine.generate({
      prompt: values.prompt,
      ...opt('negativePrompt', values.negative),
      ...opt('steps', num(values.steps, 'steps')),
      ...opt('guidanceScale', num(values.guidance, 'guidance')),
      ...opt('seed', seed === -1 ? undefined : seed),
      ...opt('width', num(values.width, 'width')),
      ...opt('height', num(values.height, 'height')),
      ...opt('sampler', values.sampler as SamplerName | undefined),
      ...opt('numImages', num(values['num-images'], 'num-images')),
      ...opt('image', values.image),
      ...opt('strength', num(values.strength, 'strength')),
      signal: ac.signal,
      onProgress: (p) => process.stderr.write(bar(p.step, p.fraction, p.steps, p.elapsedMs)),
    });
    process.stderr.write('\n');
    for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
    const dot = out.lastIndexOf('.') > out.lastIndexOf('/') ? out.lastIndexOf('.') : out.length;
    const files = r.images.length === 1 ? [out] : r.images.map((_, i) => `${out.slice(0, dot)}-${i}${out.slice(dot)}`);
    for (let i = 0; i < files.length; i++) await saveImage(r.images[i]!, files[i]!);
    r.latents.dispose();
    r.pixels.dispose();
    process.stderr.write(`wrote ${files.join(', ')} (${r.images[0]!.width}x${r.images[0]!.height}, ${engine.backend.device} ${engine.backend.dtype})\n`);
    return 0;
  } finally {
    engine.dispose();
  }
}

/** One line: the code and the first line of the message (no stack, no library internals). */
function errorLine(e: unknown): { line: string; status: number } {
  if (e instanceof IdforgeError) return { line: `${e.code}: ${e.message.split('\n')[0]}`, status: e.code === 'E_ABORTED' ? 130 : 1 };
  const err = e as { code?: unknown; message?: unknown };
  const msg = (typeof err?.message === 'string' ? err.message : String(e)).split('\n')[0];
  // node:util parseArgs errors (unknown option, missing value) are usage errors.
  if (typeof err?.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS')) return { line: `E_ARGUMENT: ${msg} (see idforge --help)`, status: 2 };
  return { line: `E_INTERNAL: ${msg}`, status: 1 };
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    const { line, status } = errorLine(e);
    process.stderr.write(`\nidforge: ${line}\n`);
    process.exit(status);
  },
);
