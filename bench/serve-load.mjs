#!/usr/bin/env node
// Bounded load test of the scale-out server on loopback: a redis-server on a free port,
// `idforge serve --redis`, N `idforge worker`s, and a fixed number of generation requests submitted
// at once. Reports images per minute and p50/p95 latency (submit → image ready) per worker count,
// alternating the worker counts over several rounds (same-session A/B).
//   node bench/serve-load.mjs [--model test/fixtures/tiny-sd] [--workers 1,2] [--requests 16]
//        [--rounds 2] [--size 128] [--steps 4] [--threads auto] [--json bench/results/FILE.json]
// --threads: CPU backend threads per worker (IDFORGE_THREADS); auto = CPUs / workers, so that every
// configuration uses the same cores.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const cliJs = path.join(root, 'dist/cli.js');
const { values: o } = parseArgs({
  options: {
    model: { type: 'string', default: path.relative(process.cwd(), path.join(root, 'test/fixtures/tiny-sd')) }, workers: { type: 'string', default: '1,2' },
    requests: { type: 'string', default: '16' }, rounds: { type: 'string', default: '2' }, size: { type: 'string', default: '128' },
    steps: { type: 'string', default: '4' }, threads: { type: 'string', default: 'auto' }, json: { type: 'string' },
  },
});
const counts = o.workers.split(',').map(Number);
const requests = Number(o.requests);
const cpus = os.availableParallelism();

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function start(args, env = {}) {
  const p = spawn(process.execPath, [cliJs, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.until = async (re) => {
    while (!re.test(out)) {
      if (p.exitCode !== null) throw new Error(`${args[0]} exited: ${out}`);
      await sleep(20);
    }
    return re.exec(out);
  };
  return p;
}
const stop = (p) => new Promise((resolve) => (p.exitCode !== null ? resolve() : (p.once('exit', resolve), p.kill('SIGTERM'))));

const pct = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
};

const redisPort = await freePort();
const redisDir = mkdtempSync(path.join(os.tmpdir(), 'idforge-load-'));
const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], { stdio: 'ignore' });
const url = `redis://127.0.0.1:${redisPort}`;
await sleep(300);

const runs = [];
try {
  for (let round = 0; round < Number(o.rounds); round++) {
    for (const n of counts) {
      const queue = `load-${round}-${n}`;
      const threads = o.threads === 'auto' ? Math.max(1, Math.floor(cpus / n)) : Number(o.threads);
      const server = start(['serve', '--redis', url, '--queue', queue, '--port', '0', '--max-queue', String(requests + 1)]);
      const base = (await server.until(/listening on (http:\/\/[0-9.:]+)/))[1];
      const workers = Array.from({ length: n }, () => start(['worker', '--redis', url, '--model', o.model, '--device', 'cpu', '--queue', queue], { IDFORGE_THREADS: String(threads) }));
      await Promise.all(workers.map((w) => w.until(/worker ready/)));
      // Warm-up: one job per worker compiles its programs; not timed.
      const body = (seed) => JSON.stringify({ prompt: `a photo of a house ${seed}`, width: Number(o.size), height: Number(o.size), steps: Number(o.steps), seed });
      const submit = async (seed) => (await (await fetch(`${base}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(seed) })).json()).id;
      const done = async (id) => {
        for (;;) {
          const v = await (await fetch(`${base}/jobs/${id}`)).json();
          if (v.state === 'done') return;
          if (v.state === 'failed') throw new Error(JSON.stringify(v.error));
          await sleep(10);
        }
      };
      await Promise.all((await Promise.all(workers.map((_, i) => submit(10_000 + i)))).map(done));
      const t0 = performance.now();
      const latencies = await Promise.all(Array.from({ length: requests }, async (_, i) => {
        const s = performance.now();
        await done(await submit(i));
        return performance.now() - s;
      }));
      const wall = (performance.now() - t0) / 1000;
      const r = { workers: n, threadsPerWorker: threads, requests, wallS: +wall.toFixed(2), imagesPerMin: +((requests / wall) * 60).toFixed(1), p50Ms: Math.round(pct(latencies, 0.5)), p95Ms: Math.round(pct(latencies, 0.95)) };
      runs.push({ round, ...r });
      console.log(JSON.stringify(r));
      await Promise.all(workers.map(stop));
      await stop(server);
    }
  }
} finally {
  redis.kill('SIGKILL');
  rmSync(redisDir, { recursive: true, force: true });
}

const summary = counts.map((n) => {
  const rs = runs.filter((r) => r.workers === n);
  const mean = (k) => +(rs.reduce((a, r) => a + r[k], 0) / rs.length).toFixed(1);
  return { workers: n, imagesPerMin: mean('imagesPerMin'), p50Ms: mean('p50Ms'), p95Ms: mean('p95Ms') };
});
console.table(summary);
if (o.json) {
  writeFileSync(o.json, `${JSON.stringify({
    command: `node bench/serve-load.mjs ${process.argv.slice(2).join(' ')}`.trim(), date: new Date().toISOString(),
    machine: { cpus, model: os.cpus()[0]?.model, loadavg: os.loadavg() }, options: o, runs, summary,
  }, null, 2)}\n`);
}
