#!/usr/bin/env node
// idforge command line: `idforge generate --model <dir|file> --prompt "..." [options]`.
import { parseArgs } from 'node:util';
import { Engine } from './engine.js';
import { IdforgeError } from './errors.js';
import { saveImage } from './io/image.js';

const USAGE = `usage: idforge generate --model <dir|file.safetensors> --prompt "text" [options]
  --negative TEXT     negative prompt ("")
  --steps N           DDIM steps (50)
  --guidance X        classifier-free guidance scale (7.5)
  --seed N            seed of the deterministic generator (random)
  --width N --height N  image size (512x512; multiples of the model's downsampling)
  --device D          auto | cpu | cuda (auto)
  --dtype T           float32 | float16 (float16 on CUDA, float32 on the CPU)
  --out FILE          output image (out.png)
       idforge build-dataset --help, idforge train-encoder --help   (DreamIdentity encoder training)`;

function num(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new IdforgeError('E_ARGUMENT', `--${name} must be a number, got '${v}'`);
  return n;
}

function bar(step: number, steps: number, ms: number): string {
  const w = 30;
  const done = Math.round((step / steps) * w);
  return `\r[${'#'.repeat(done)}${'.'.repeat(w - done)}] ${step}/${steps} ${(ms / 1000).toFixed(1)}s`;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  // The DreamIdentity training subcommands live in lib/train/cli.ts.
  const trained = await (await import('./train/cli.js')).trainCli(cmd, rest);
  if (trained !== undefined) return trained;
  // `eval` lives in lib/eval/cli.ts (it loads CLIP and the face models, which generate never needs).
  if (cmd === 'eval') return (await import('./eval/cli.js')).main(rest);
  if (cmd !== 'generate') {
    process.stderr.write(`${USAGE}\n       idforge eval --help\n`);
    return cmd === undefined || cmd === '--help' || cmd === '-h' ? 0 : 2;
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      model: { type: 'string' }, prompt: { type: 'string' }, negative: { type: 'string' },
      steps: { type: 'string' }, guidance: { type: 'string' }, seed: { type: 'string' },
      width: { type: 'string' }, height: { type: 'string' }, device: { type: 'string' },
      dtype: { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean' },
    },
  });
  if (values.help || !values.model || values.prompt === undefined) {
    process.stderr.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const engine = await Engine.load(values.model, {
    device: (values.device ?? 'auto') as 'auto' | 'cpu' | 'cuda',
    ...(values.dtype ? { dtype: values.dtype as 'float32' | 'float16' } : {}),
  });
  try {
    const ac = new AbortController();
    process.once('SIGINT', () => ac.abort());
    const opt = <T>(k: string, v: T | undefined) => (v === undefined ? {} : { [k]: v });
    const r = await engine.generate({
      prompt: values.prompt,
      ...opt('negativePrompt', values.negative),
      ...opt('steps', num(values.steps, 'steps')),
      ...opt('guidanceScale', num(values.guidance, 'guidance')),
      ...opt('seed', num(values.seed, 'seed')),
      ...opt('width', num(values.width, 'width')),
      ...opt('height', num(values.height, 'height')),
      signal: ac.signal,
      onProgress: (p) => process.stderr.write(bar(p.step, p.steps, p.elapsedMs)),
    });
    process.stderr.write('\n');
    for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
    const out = values.out ?? 'out.png';
    await saveImage(r.images[0]!, out);
    r.latents.dispose();
    r.pixels.dispose();
    process.stderr.write(`wrote ${out} (${r.images[0]!.width}x${r.images[0]!.height}, ${engine.backend.device} ${engine.backend.dtype})\n`);
    return 0;
  } finally {
    engine.dispose();
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    const err = e as IdforgeError;
    process.stderr.write(`\nidforge: ${err.code ? `${err.code}: ` : ''}${err.message}\n`);
    process.exit(1);
  },
);
