/** Real parts for the server tests: a redis-server on a free loopback port, CLI child processes, HTTP. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
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

export const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0;
export const hasRedis = !!process.env.IDFORGE_TEST_REDIS || hasRedisServer;

/** A redis-server of this test's own on a free loopback port (one it may SIGSTOP): its process and URL. */
export async function ownRedis(): Promise<{ url: string; proc: ChildProcess; stop(): void }> {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await waitForPort(port, 10_000);
  return {
    url: `redis://127.0.0.1:${port}`,
    proc,
    stop: () => {
      proc.kill('SIGCONT');
      proc.kill('SIGKILL');
    },
  };
}

/**
 * A Redis URL: .ci/run's server (IDFORGE_TEST_REDIS), else a redis-server of our own on a free port,
 * stopped by `stop()`. Tests share one server by using queue names of their own.
 */
export async function redis(): Promise<{ url: string; stop(): void }> {
  if (process.env.IDFORGE_TEST_REDIS) return { url: process.env.IDFORGE_TEST_REDIS, stop() {} };
  return ownRedis();
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
  /** Everything written to stderr so far. */
  err(): string;
  /** Resolves when stdout matches. */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
}

/** Runs `idforge <args>` (dist/cli.js) in a child process (`node` takes `nodeArgs` first). */
export function cli(args: string[], env: Record<string, string> = {}, nodeArgs: string[] = []): Child {
  const proc = spawn(process.execPath, [...nodeArgs, compiledCli(), ...args], {
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
    err: () => err,
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
export async function serveCli(args: string[], env: Record<string, string> = {}, nodeArgs: string[] = []): Promise<{ child: Child; base: string }> {
  const child = cli(['serve', '--port', '0', ...args], env, nodeArgs);
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
    const v: any = await (await fetch(`${base}/jobs/${id}`, { headers })).json();
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

/** Resident memory of a process in MB (Linux /proc). */
export function rssMB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/**
 * A raw HTTP client on one socket, for what fetch cannot do: send part of a request and wait.
 * `reply` resolves with everything the server sent once it closes the connection.
 */
export function rawRequest(base: string, text: string): { socket: net.Socket; reply: Promise<string> } {
  const { hostname, port } = new URL(base);
  const socket = net.connect(Number(port), hostname);
  socket.write(text);
  let got = '';
  socket.on('data', (d) => (got += d));
  const reply = new Promise<string>((resolve) => {
    socket.on('close', () => resolve(got));
    socket.on('error', () => {});
  });
  return { socket, reply };
}

/** The JSON body of a raw HTTP response text. */
export function rawJson(reply: string): any {
  const i = reply.indexOf('\r\n\r\n');
  return JSON.parse(reply.slice(i + 4));
}

// ---- Hostile uploads (issue 25)

/** 235 bytes of SVG that take libvips a minute of CPU to render. */
export const SVG_BOMB = '<svg width="4000" height="4000"><filter id="f"><feTurbulence baseFrequency="0.9" numOctaves="10"/><feGaussianBlur stdDeviation="500"/></filter><rect width="4000" height="4000" filter="url(#f)"/></svg>';

function crc32(b: Buffer): number {
  let crc = 0xffffffff;
  for (const x of b) {
    let c = (crc ^ x) & 0xff;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    crc = (crc >>> 8) ^ c;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** A PNG whose header claims width×height RGB, followed by `idatBytes` of random (undecodable) data. */
export function lyingPng(width: number, height: number, idatBytes: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr), pngChunk('IDAT', randomBytes(idatBytes)), pngChunk('IEND', Buffer.alloc(0)),
  ]);
}
