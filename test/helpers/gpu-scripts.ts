// Runs a GPU check script as a child process for the tap tests that wrap them (test/cuda-native.test.ts,
// test/gpu-goldens.test.ts), with $OUT in a fresh temporary folder.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function runScript(t: { equal: (a: unknown, b: unknown, msg: string) => unknown }, what: string, cmd: string, args: string[]): void {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-gpu-'));
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', env: { ...process.env, OUT: out }, maxBuffer: 64 << 20 });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  t.equal(r.status, 0, `${what}: exit status; tail:\n${log.slice(-4000)}`);
}
