// Scale-out: `idforge serve --redis` and `idforge worker` child processes over a real redis-server
// (.ci/run's, or one started here on a free loopback port). Every image must equal the one
// engine.generate makes in this process for the same arguments, however the jobs were spread,
// killed or restarted.
import t from 'tap';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { TINY_SD } from './helpers/fixtures.js';
import { cli, events, hasRedis, pixels, post, redis, serveCli, settle, stop, type Child } from './helpers/serve.js';

if (!hasRedis) {
  t.plan(0, 'redis-server not installed (apt-get install redis-server; .ci/run installs it)');
  process.exit(0);
}

const r = await redis();
t.teardown(() => r.stop());
const engine = await Engine.load(TINY_SD, { device: 'cpu' });
t.teardown(() => engine.dispose());
const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-redis-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const children: Child[] = [];
t.teardown(async () => {
  for (const c of children) await stop(c, 'SIGKILL');
});
const track = (c: Child): Child => (children.push(c), c);

/** Each test has a queue of its own in the shared Redis. */
const queueName = () => `idforge-test-${randomUUID().slice(0, 8)}`;
// Short locks so that a killed worker's job is retried within a few seconds.
const worker = (queue: string) => track(cli(['worker', '--redis', r.url, '--model', TINY_SD, '--device', 'cpu', '--queue', queue, '--lock-ms', '3000', '--stalled-ms', '1000']));
const server = async (queue: string) => {
  const s = await serveCli(['--redis', r.url, '--queue', queue, '--identities', path.join(dir, 'ids')]);
  track(s.child);
  return s;
};

const refs = new Map<string, Buffer>();
async function reference(args: { prompt: string; width: number; height: number; steps: number; seed: number }): Promise<Buffer> {
  const key = JSON.stringify(args);
  if (!refs.has(key)) {
    const g = await engine.generate(args);
    refs.set(key, Buffer.from(g.images[0]!.data));
    g.latents.dispose();
    g.pixels.dispose();
  }
  return refs.get(key)!;
}
const job = (seed: number, steps = 2, size = 64) => ({ prompt: `a photo of a house, number ${seed}`, width: size, height: size, steps, seed });

async function submitAll(base: string, jobs: ReturnType<typeof job>[]): Promise<string[]> {
  const ids: string[] = [];
  for (const j of jobs) {
    const res = await post(base, '/generate', j);
    if (res.status !== 202) throw new Error(`submit: ${res.status} ${await res.text()}`);
    ids.push((await res.json()).id);
  }
  return ids;
}

async function checkAll(t: Tap.Test, base: string, ids: string[], jobs: ReturnType<typeof job>[], ms = 90_000): Promise<void> {
  for (let i = 0; i < ids.length; i++) {
    const v = await settle(base, ids[i]!, ms);
    t.equal(v.state, 'done', `job ${i} done ${JSON.stringify(v.error ?? '')}`);
    t.ok(Buffer.from(await pixels(base, ids[i]!)).equals(await reference(jobs[i]!)), `job ${i}: image equals engine.generate`);
  }
}

const started = (c: Child) => (c.out().match(/ generate started/g) ?? []).length;

// One queue, one story, so that few processes start (each costs seconds on a busy machine):
// jobs queued on a server that restarts, drained by two workers, one of them killed mid-job,
// the other stopped with SIGTERM mid-job.
const q = queueName();
let base = '';
let w1: Child;
let w2: Child;

t.test('queued jobs survive a server restart', async (t) => {
  const s1 = await server(q);
  const jobs = [job(300), job(301), job(302)];
  const ids = await submitAll(s1.base, jobs);
  t.equal(await stop(s1.child), 0, 'the server shut down cleanly');
  const s2 = await server(q);
  base = s2.base;
  for (const id of ids) t.equal((await (await fetch(`${base}/jobs/${id}`)).json()).state, 'queued', 'still queued after the restart');
  w1 = worker(q);
  await checkAll(t, base, ids, jobs);
});

t.test('two workers drain 10 jobs; SSE progress per step through the queue', async (t) => {
  w2 = worker(q);
  await w2.waitFor(/worker ready/);
  const before = started(w1);
  const jobs = Array.from({ length: 10 }, (_, i) => job(100 + i, i === 0 ? 4 : 2));
  const ids = await submitAll(base, jobs);
  const ev = await events(base, ids[0]!);
  t.same(ev.filter((e) => e.event === 'progress').map((e) => e.data.step), [1, 2, 3, 4], 'one progress event per step');
  t.equal(ev.at(-1)!.event, 'done');
  await checkAll(t, base, ids, jobs);
  const n1 = started(w1) - before;
  const n2 = started(w2);
  t.ok(n1 + n2 >= 10, `every job started (${n1} + ${n2})`);
  t.ok(n1 > 0 && n2 > 0, `both workers took jobs (${n1} + ${n2})`);
});

t.test('a worker killed mid-job loses nothing: the job is retried on the other, same images', async (t) => {
  // Long jobs (~1-2 s each) so that the kill lands inside one.
  const jobs = [job(200, 12, 128), job(201, 12, 128), job(202, 2), job(203, 2)];
  const seen = w1.out().length;
  const ids = await submitAll(base, jobs);
  const victim = await new Promise<string>((resolve) => {
    const poll = setInterval(() => {
      const m = / ([0-9a-f-]{36}) generate started/.exec(w1.out().slice(seen));
      if (m && ids.includes(m[1]!)) {
        clearInterval(poll);
        resolve(m[1]!);
      }
    }, 20);
  });
  await new Promise((r) => setTimeout(r, 300));
  w1.proc.kill('SIGKILL');
  await w1.exited;
  t.notMatch(w1.out(), new RegExp(`job ${victim} done`), 'the killed job had not finished');
  await checkAll(t, base, ids, jobs);
  t.match(w2.out(), new RegExp(`job ${victim} generate started`), 'the other worker ran the killed job again');
});

t.test('worker SIGTERM finishes the job in hand', async (t) => {
  const seen = w2.out().length;
  const jobs = [job(400, 10, 128)];
  const ids = await submitAll(base, jobs);
  await new Promise<void>((resolve) => {
    const poll = setInterval(() => {
      if (w2.out().slice(seen).includes(`job ${ids[0]} generate started`)) {
        clearInterval(poll);
        resolve();
      }
    }, 20);
  });
  t.equal(await stop(w2, 'SIGTERM'), 0);
  t.match(w2.out().slice(seen), new RegExp(`job ${ids[0]} done`), 'the job finished before the worker stopped');
  await checkAll(t, base, ids, jobs);
});

t.test('bad requests in redis mode are refused by the server, never queued', async (t) => {
  for (const body of [{ steps: 2 }, { prompt: 'a', width: 100000 }, { prompt: 'a', identity: 'nobody' }, { prompt: 'a', identity: '../x' }]) {
    const res = await post(base, '/generate', body);
    t.ok(res.status >= 400 && res.status < 500, `${JSON.stringify(body)} → ${res.status}`);
    t.type((await res.json()).error.code, 'string');
  }
});
