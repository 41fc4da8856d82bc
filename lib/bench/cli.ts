#!/usr/bin/env node
// `npm run bench -- [options]`: see bench/README.md.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseBenchArgs, USAGE } from './args.js';
import { bench } from './index.js';
import { formatReport } from './table.js';

async function main(): Promise<void> {
  if (process.argv.includes('--train-encoder')) {
    const { benchTrainEncoder, formatTrainReport, TRAIN_USAGE } = await import('./train-encoder.js');
    if (process.argv.includes('--help')) return console.log(TRAIN_USAGE);
    const argv = process.argv.slice(2);
    const r = await benchTrainEncoder(argv, argv.includes('--quiet') ? () => {} : (l) => console.error(`[bench] ${l}`));
    console.log(formatTrainReport(r));
    const j = argv.indexOf('--json');
    if (j >= 0 && argv[j + 1]) {
      fs.mkdirSync(path.dirname(path.resolve(argv[j + 1]!)), { recursive: true });
      fs.writeFileSync(argv[j + 1]!, `${JSON.stringify(r, null, 2)}\n`);
    }
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
  if (json) {
    fs.mkdirSync(path.dirname(path.resolve(json)), { recursive: true });
    fs.writeFileSync(json, `${JSON.stringify(report, null, 2)}\n`);
    console.error(`[bench] wrote ${json}`);
  }
}

main().catch((e: unknown) => {
  const err = e as Error & { code?: string };
  console.error(`bench failed: ${err.code ? `${err.code}: ` : ''}${err.message}`);
  process.exitCode = 1;
});
