#!/usr/bin/env node
// idforge command line: a table of subcommands, each in its own module (loaded on demand:
// `generate` never loads Fastify), and one error line `idforge: E_CODE: message` for every failure.
import { readFileSync } from 'node:fs';
import { UsageError } from './cliargs.js';
import { IdforgeError } from './errors.js';

const USAGE = `usage: idforge <command> [options]      (idforge <command> --help for its options)
  identity encode|learn|show   make an identity file from a face photo, or describe one
  generate                     text to image (with --identity: of that person), image to image
  serve | worker               HTTP server with the studio page at / (in-process or over Redis), BullMQ worker
  eval                         ID similarity and CLIP-T report of a model and an identity
  train-encoder | build-dataset  DreamIdentity encoder training and its edit data
  build                        compile the native addon from source
  --version                    print the version

A person in two commands (the bundled tiny models make noise; use a real SD 1.x model for pictures):
  idforge identity encode --encoder ENCODER_DIR --photo me.jpg --out me.safetensors
  idforge generate --model SD_DIR --identity me.safetensors --prompt "a photo of <id> as a chef" --out chef.png`;

/** Subcommands (each a module of its own, imported only when run). */
const COMMANDS: Record<string, () => Promise<(argv: string[]) => Promise<number>>> = {
  generate: async () => (await import('./cli/generate.js')).generateCmd,
  identity: async () => (await import('./cli/identity.js')).identityCmd,
  serve: async () => (await import('./serve/cli.js')).serve,
  worker: async () => (await import('./serve/cli.js')).worker,
  build: async () => (await import('./build.js')).build,
  // CLIP and the face models, which generate never needs.
  eval: async () => (await import('./eval/cli.js')).main,
  // DreamIdentity encoder training.
  'train-encoder': async () => (await import('./dreamidentity/cli.js')).trainCmd,
  'build-dataset': async () => (await import('./dreamidentity/cli.js')).datasetCmd,
};

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd !== undefined && Object.hasOwn(COMMANDS, cmd)) return (await COMMANDS[cmd]!())(rest);
  if (cmd === '--version' || cmd === '-v') {
    process.stdout.write(`idforge ${version()}\n`);
    return 0;
  }
  if (cmd === undefined || cmd === '--help' || cmd === '-h') {
    (cmd === undefined ? process.stderr : process.stdout).write(`${USAGE}\n`);
    return cmd === undefined ? 2 : 0;
  }
  throw new UsageError(`unknown command '${cmd}' (commands: ${Object.keys(COMMANDS).join(', ')}; see idforge --help)`);
}

/** One line: the code and the first line of the message (no stack, no library internals). */
function errorLine(e: unknown): { line: string; status: number } {
  if (e instanceof IdforgeError) return { line: `${e.code}: ${e.message.split('\n')[0]}`, status: e.code === 'E_ABORTED' ? 130 : e instanceof UsageError ? 2 : 1 };
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
