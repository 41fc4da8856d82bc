/** Real parts for the server tests: a redis-server on a free loopback port, CLI child processes, HTTP. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadImage } from '../../lib/io/image.js';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1', () => {
        c.end();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${ms} ms`);
}

export const hasRedis = !!process.env.IDFORGE_TEST_REDIS || spawnSync('redis-server', ['--version']).status === 0;

/**
 * A Redis URL: .ci/run's server (IDFORGE_TEST_REDIS), else a redis-server of our own on a free port,
 * stopped by `stop()`. Tests share one server by using queue names of their own.
 */
export async function redis(): Promise<{ url: string; stop(): void }> {
  if (process.env.IDFORGE_TEST_REDIS) return { url: process.env.IDFORGE_TEST_REDIS, stop() {} };
  const port = await freePort();
  const p = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await waitForPort(port, 10_000);
  return { url: `redis://127.0.0.1:${port}`, stop: () => p.kill('SIGKILL') };
}

/**
 * Children run the compiled CLI (dist/cli.js): compiling lib/ on the fly costs every child 10-30 s
 * on 2 busy cores. `npm test` compiles first (pretest); a dist older than its source fails loudly
 * instead of testing old code.
 */
export function compiledCli(): string {
  const stale: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(path.join(root, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
        const js = path.join(root, 'dist', path.relative('lib', rel).replace(/\.ts$/, '.js'));
        if (!existsSync(js) || statSync(js).mtimeMs < statSync(path.join(root, rel)).mtimeMs) stale.push(rel);
      }
    }
  };
  walk('lib');
  if (stale.length) throw new Error(`dist/ is older than ${stale.slice(0, 5).join(', ')}: run \`npm run build\` (npm test does)`);
  return path.join(root, 'dist/cli.js');
}

export interface Child {
  proc: ChildProcess;
  /** Everything written to stdout so far. */
  out(): string;
  /** Resolves when stdout matches. */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
}

/** Runs `idforge <args>` (dist/cli.js) in a child process. */
export function cli(args: string[], env: Record<string, string> = {}): Child {
  const proc = spawn(process.execPath, [compiledCli(), ...args], {
    cwd: root, env: { ...process.env, NODE_OPTIONS: '', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const waiters: (() => void)[] = [];
  proc.stdout!.on('data', (d) => {
    out += d;
    for (const w of waiters) w();
  });
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return {
    proc,
    out: () => out,
    exited,
    waitFor(re, ms = 60_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(out);
          if (m) {
            clearTimeout(timer);
            resolve(m);
          }
        };
        const timer = setTimeout(() => reject(new Error(`no ${re} in stdout after ${ms} ms; stdout: ${out.slice(-2000)}; stderr: ${err.slice(-2000)}`)), ms);
        waiters.push(check);
        void exited.then((code) => reject(new Error(`exited ${code} before ${re}; stdout: ${out.slice(-2000)}; stderr: ${err.slice(-3000)}`)));
        check();
      });
    },
  };
}

/** Starts `idforge serve` and returns its base URL. */
export async function serveCli(args: string[], env: Record<string, string> = {}): Promise<{ child: Child; base: string }> {
  const child = cli(['serve', '--port', '0', ...args], env);
  const m = await child.waitFor(/listening on (http:\/\/[0-9.:]+)/);
  return { child, base: m[1]! };
}

export async function stop(c: Child, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill(signal);
  return c.exited;
}

export async function post(base: string, route: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(base + route, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
}

/** Polls a job until it is done or failed. */
export async function settle(base: string, id: string, ms = 60_000, headers: Record<string, string> = {}): Promise<any> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = await (await fetch(`${base}/jobs/${id}`, { headers })).json();
    if (v.state === 'done' || v.state === 'failed') return v;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`job ${id} not settled after ${ms} ms`);
}

/** The decoded pixels of a job's first image. */
export async function pixels(base: string, id: string, headers: Record<string, string> = {}): Promise<Uint8Array> {
  const res = await fetch(`${base}/jobs/${id}/images/0.png`, { headers });
  if (res.status !== 200) throw new Error(`image of ${id}: HTTP ${res.status} ${await res.text()}`);
  return (await loadImage(Buffer.from(await res.arrayBuffer()))).data;
}

/** Reads a Server-Sent Events stream to its end: [{ event, data }]. */
export async function events(base: string, id: string, headers: Record<string, string> = {}): Promise<{ event: string; data: any }[]> {
  const res = await fetch(`${base}/jobs/${id}/events`, { headers });
  const text = await res.text();
  return text.split('\n\n').filter((b) => b.startsWith('event:')).map((b) => {
    const [ev, data] = b.split('\n');
    return { event: ev!.slice(7), data: JSON.parse(data!.slice(6)) };
  });
}
