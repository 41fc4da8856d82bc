// `idforge eval`: generates a prompt set with a model (and an identity) and writes the measurements
// (report.json, contact.png, report.html) into a folder. lib/cli.ts hands `eval` over to main().
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { ClipScorer } from '../clip/scorer.js';
import { num, opt } from '../cliargs.js';
import { readRegularFile } from '../io/files.js';
import { Engine } from '../engine.js';
import { Identity } from '../identity/identity.js';
import type { FaceAnalyzer } from '../faces/index.js';
import { evaluate } from './evaluate.js';
import { DEFAULT_PROMPTS } from './prompts.js';
import { writeReport } from './report.js';
import { invalid } from '../validate.js';

export const EVAL_USAGE = `usage: idforge eval --model <dir|file.safetensors> --clip <CLIP folder> --reference <face photo> [options]
  --identity FILE     identity (.safetensors) that <id> names; without one <id> reads "a person"
  --prompts FILE      prompts, one per line or a JSON array, <id> where the person goes
                      (default: ${DEFAULT_PROMPTS.length} built-in prompts: scenes, actions, age/expression, styles)
  --seeds LIST        comma-separated seeds (0)
  --steps N           DDIM steps (30)
  --width N --height N  image size (512x512)
  --guidance X        classifier-free guidance scale (7.5)
  --scale X           identity scale of the identity row (1)
  --threshold X       CLIP cosine from which ID similarity counts for ID(Prompt) (0.23)
  --no-baseline       skip the generic-person row (identityScale 0)
  --device D          auto | cpu | cuda (auto), for the model and CLIP
  --dtype T           float32 | float16
  --cell N            contact-sheet cell size in pixels (160)
  --out DIR           report folder (eval-report)`;


/** A prompts file: a JSON array of strings, or one prompt per non-empty line. */
export function readPrompts(file: string): string[] {
  // A regular file of sane size (a FIFO would hang the read); E_NOT_FOUND when absent.
  const text = readRegularFile(file, 16 << 20, 'prompts file').toString('utf8');
  if (text.trimStart().startsWith('[')) {
    let list: unknown;
    try {
      list = JSON.parse(text);
    } catch (e) {
      throw invalid('the prompts file', `a JSON array (${(e as Error).message})`, file, { cause: e });
    }
    if (!Array.isArray(list) || !list.every((p) => typeof p === 'string')) throw invalid('the prompts file', 'a JSON array of strings', file);
    return list;
  }
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0);
}

/** Where main() writes: the process's streams, or a test's collectors. */
export interface CliIO {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

/** `idforge eval …` → exit code (0 done, 2 usage); failures reject with an IdforgeError. */
export async function main(argv: string[], io: CliIO = process): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' }, clip: { type: 'string' }, reference: { type: 'string' }, identity: { type: 'string' },
      prompts: { type: 'string' }, seeds: { type: 'string' }, steps: { type: 'string' }, width: { type: 'string' },
      height: { type: 'string' }, guidance: { type: 'string' }, scale: { type: 'string' }, threshold: { type: 'string' },
      'no-baseline': { type: 'boolean' }, device: { type: 'string' }, dtype: { type: 'string' }, out: { type: 'string' }, cell: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help || !values.model || !values.clip || !values.reference) {
    io.stderr.write(`${EVAL_USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const seeds = values.seeds === undefined ? undefined : values.seeds.split(',').map((s) => num(s.trim(), 'seeds')!);
  const device = (values.device ?? 'auto') as 'auto' | 'cpu' | 'cuda';
  const dtype = values.dtype as 'float32' | 'float16' | undefined;
  const identity = values.identity ? Identity.load(values.identity) : undefined;
  const prompts = values.prompts ? readPrompts(values.prompts) : undefined;
  const engine = await Engine.load(values.model, { device, ...opt('dtype', dtype) });
  const clip = await ClipScorer.load(values.clip, { device, ...opt('dtype', dtype) }).catch((e: unknown) => {
    engine.dispose();
    throw e;
  });
  let faces: FaceAnalyzer | undefined;
  let cleanup = () => {};
  try {
    // The face models (tfjs) load only here: generate never needs them.
    const { FaceAnalyzer } = await import('../faces/index.js');
    faces = await FaceAnalyzer.load();
    const ac = new AbortController();
    const onSigint = () => ac.abort();
    process.once('SIGINT', onSigint);
    cleanup = () => process.off('SIGINT', onSigint);
    const result = await evaluate({
      engine, clip, faces, reference: values.reference,
      ...opt('identity', identity), ...opt('prompts', prompts), ...opt('seeds', seeds),
      ...opt('steps', num(values.steps, 'steps')), ...opt('width', num(values.width, 'width')),
      ...opt('height', num(values.height, 'height')), ...opt('guidanceScale', num(values.guidance, 'guidance')),
      ...opt('identityScale', num(values.scale, 'scale')), ...opt('threshold', num(values.threshold, 'threshold')),
      baseline: !values['no-baseline'],
      signal: ac.signal,
      onProgress: (p) => io.stderr.write(`\r${p.done}/${p.total} ${p.variant} ${(p.elapsedMs / 1000).toFixed(1)}s   `),
    });
    io.stderr.write('\n');
    for (const w of result.warnings) io.stderr.write(`warning: ${w}\n`);
    const files = await writeReport(result, values.out ?? 'eval-report', opt('cell', num(values.cell, 'cell')));
    const line = (r: NonNullable<typeof result.rows.generic>) =>
      `${r.label}: ID ${r.idSimilarity.mean.toFixed(3)} ± ${r.idSimilarity.std.toFixed(3)}, face ${(100 * r.faceRate).toFixed(0)}%, ` +
      `CLIP ${r.clipScore.mean.toFixed(1)} ± ${r.clipScore.std.toFixed(1)} (cos ${r.clipCosine.mean.toFixed(3)} ± ${r.clipCosine.std.toFixed(3)}), ID(Prompt) ${r.idPrompt.mean.toFixed(3)} ± ${r.idPrompt.std.toFixed(3)}\n`;
    for (const r of [result.rows.identity, result.rows.generic, result.rows.reference]) if (r) io.stdout.write(line(r));
    io.stderr.write(`wrote ${files.json}, ${files.contactSheet}, ${files.html}\n`);
    return 0;
  } finally {
    cleanup();
    faces?.dispose();
    clip.dispose();
    engine.dispose();
  }
}
