// The CLI checks before it works (output path and format before loading the model), parses
// negative numbers, stops within a fraction of a second on Ctrl-C, and reports errors as one line
// with the code. Each case is a real child process.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TINY_SD } from './helpers/fixtures.js';

const cli = fileURLToPath(new URL('../lib/cli.ts', import.meta.url));
const loader = process.execArgv.filter((a) => a.includes('@tapjs/typescript'));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

function idforge(...args: string[]): { status: number | null; stderr: string; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [...loader, cli, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stderr: r.stderr, ms: Date.now() - t0 };
}
/** The error line: exactly one line starting with "idforge: E_". */
function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '');
}

t.test('the output is checked before the model is loaded', async (t) => {
  // A model path that does not exist: the output error must come first.
  const cases: [string, RegExp][] = [
    [path.join(tmp, 'no/such/folder/out.png'), /^idforge: E_NOT_FOUND: .*the folder .*no\/such\/folder does not exist$/],
    [path.join(tmp, 'out.bmp'), /^idforge: E_ARGUMENT: .*unknown image format '\.bmp'/],
  ];
  fs.mkdirSync(path.join(tmp, 'dir.png'));
  cases.push([path.join(tmp, 'dir.png'), /^idforge: E_ARGUMENT: the output path must be a new or regular file \(it exists and is not a regular file\), got ".*dir\.png"$/]);
  for (const [out, msg] of cases) {
    const r = idforge('generate', '--model', '/does/not/exist', '--prompt', 'x', '--out', out);
    t.equal(r.status, 1, `${out}: exit 1`);
    const lines = errorLines(r.stderr);
    t.equal(lines.length, 1, `${out}: one line (${JSON.stringify(lines)})`);
    t.match(lines[0], msg);
  }
});

t.test('usage errors are one line with a code', async (t) => {
  const r = idforge('generate', '--model', TINY_SD, '--prompt', 'x', '--bogus');
  t.equal(r.status, 2);
  const lines = errorLines(r.stderr);
  t.equal(lines.length, 1);
  t.match(lines[0], /^idforge: E_ARGUMENT: Unknown option '--bogus'/);
});

t.test('--seed -1 parses (a random seed) and the image is written', async (t) => {
  const out = path.join(tmp, 'seed.png');
  const r = idforge('generate', '--model', TINY_SD, '--prompt', 'a cat', '--steps', '1', '--width', '64', '--height', '64', '--seed', '-1', '--out', out);
  t.equal(r.status, 0, r.stderr);
  t.ok(fs.statSync(out).size > 0);
});

t.test('Ctrl-C stops a long step within a fraction of a second', async (t) => {
  const child = spawn(process.execPath, [...loader, cli, 'generate', '--model', TINY_SD, '--prompt', 'a cat', '--steps', '2', '--width', '1024', '--height', '1024', '--out', path.join(tmp, 'big.png')]);
  let stderr = '';
  let sentAt = 0;
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    // The first in-step progress report ("(step 1: N%)") means a native run is in flight.
    if (!sentAt && /\(step 1: \d+%\)/.test(stderr)) {
      sentAt = Date.now();
      child.kill('SIGINT');
    }
  });
  const kill = setTimeout(() => child.kill('SIGKILL'), 180_000);
  const status = await exited;
  clearTimeout(kill);
  const ms = Date.now() - sentAt;
  t.ok(sentAt > 0, 'progress was printed inside the first step');
  t.equal(status, 130, 'exit status 130 (interrupted)');
  t.match(stderr, /idforge: E_ABORTED: /);
  t.ok(ms < 3000, `exited ${ms} ms after SIGINT`);
  t.comment(`CLI exit ${ms} ms after SIGINT at 1024x1024`);
});
