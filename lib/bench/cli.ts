#!/usr/bin/env node
// `npm run bench -- [options]`: see bench/README.md.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseBenchArgs, USAGE } from './args.js';
import { bench } from './index.js';
import { formatReport } from './table.js';

/** Writes a report as JSON (creating the folder). */
function writeJson(file: string, report: unknown): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  console.error(`[bench] wrote ${file}`);
}

async function main(): Promise<void> {
  if (process.argv.includes('--train-encoder')) {
    const { benchTrainEncoder, formatTrainReport, parseTrainBenchArgs, TRAIN_USAGE } = await import('./train-encoder.js');
    const argv = process.argv.slice(2);
    const { help, quiet, json } = parseTrainBenchArgs(argv);
    if (help) return console.log(TRAIN_USAGE);
    const r = await benchTrainEncoder(argv, quiet ? () => {} : (l) => console.error(`[bench] ${l}`));
    console.log(formatTrainReport(r));
    if (json) writeJson(json, r);
    return;
  }
  if (process.argv.includes('--fewstep')) {
    const { benchFewstep, formatFewstepReport, parseFewstepArgs, FEWSTEP_USAGE } = await import('./fewstep.js');
    const { opts, json, help, quiet } = parseFewstepArgs(process.argv.slice(2));
    if (help) return console.log(FEWSTEP_USAGE);
    if (!quiet) opts.log = (line) => console.error(`[bench] ${line}`);
    const r = await benchFewstep(opts);
    console.log(formatFewstepReport(r));
    if (json) writeJson(json, r);
    return;
  }
  let parsed;
  try {
    parsed = parseBenchArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  if (parsed.help) {
    console.log(USAGE);
    return;
  }
  const { opts, json, quiet } = parsed;
  if (!quiet) opts.log = (line) => console.error(`[bench] ${line}`);
  const report = await bench(opts);
  console.log(formatReport(report));
  if (json) writeJson(json, report);
}

main().catch((e: unknown) => {
  const err = e as Error & { code?: string };
  console.error(`bench failed: ${err.code ? `${err.code}: ` : ''}${err.message}`);
  process.exitCode = 1;
});
