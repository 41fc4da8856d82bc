#!/usr/bin/env node
// `npm run bench -- [options]`: see bench/README.md.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseBenchArgs, USAGE } from './args.js';
import { bench } from './index.js';
import { formatReport } from './table.js';

async function main(): Promise<void> {
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
