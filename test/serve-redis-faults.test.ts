// Issue 25 in Redis mode, against a redis-server this test starts itself (it SIGSTOPs it): the
// server answers 503 within its timeouts when Redis is frozen, failed jobs keep no stack traces or
// paths in Redis and are kept by count, and learning ids stay reserved across a server restart.
import sharp from 'sharp';
import t from 'tap';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RedisQueue, startWorker } from '../lib/serve/redis.js';
import { buildServer } from '../lib/serve/server.js';
import { IdentityStore } from '../lib/serve/store.js';
import { TINY_SD, fixture } from './helpers/fixtures.js';
import { hasRedisServer, ownRedis, post, settle } from './helpers/serve.js';

if (!hasRedisServer) {
  t.plan(0, 'redis-server not installed (apt-get install redis-server; .ci/run installs it)');
  process.exit(0);
}

const r = await ownRedis();
t.teardown(() => r.stop());
const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-redis-faults-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const b64 = (b: Buffer) => b.toString('base64');
const face = b64(await sharp(fixture('faces/astronaut.jpg')).resize(256, 256).jpeg().toBuffer());
const cat = b64(await sharp(fixture('faces/chelsea.jpg')).resize(256, 192).jpeg().toBuffer());

async function start(t: Tap.Test, name: string, commandMs = 3000) {
  const queue = await RedisQueue.open(r.url, { name, maxQueue: 10, keep: { count: 2, ms: 60_000 }, commandMs });
  const app = await buildServer({ queue, store: new IdentityStore(path.join(dir, 'ids')), timeouts: { healthMs: 500 } });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  const close = async () => {
    await app.close();
    await queue.close();
  };
  t.teardown(close);
  return { base, close };
}

/** A request that must be answered within `ms`; returns the response and how long it took. */
async function timed(req: (signal: AbortSignal) => Promise<Response>, ms = 5000): Promise<[Response, number]> {
  const t0 = Date.now();
  const res = await req(AbortSignal.timeout(ms));
  return [res, Date.now() - t0];
}

t.test('7: with Redis frozen, /health and every route answer 503 within their timeouts', async (t) => {
  const { base } = await start(t, `faults-${randomUUID().slice(0, 8)}`, 500);
  t.match(await (await fetch(`${base}/health`)).json(), { ok: true, mode: 'redis', redis: 'ok' });
  const { id } = await (await post(base, '/generate', { prompt: 'a', width: 64, height: 64, steps: 1 })).json();
  r.proc.kill('SIGSTOP');
  t.teardown(() => void r.proc.kill('SIGCONT'));
  const routes: [string, (s: AbortSignal) => Promise<Response>][] = [
    ['GET /health', (signal) => fetch(`${base}/health`, { signal })],
    ['POST /generate', (signal) => fetch(`${base}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"prompt":"a"}', signal })],
    ['GET /jobs/:id', (signal) => fetch(`${base}/jobs/${id}`, { signal })],
    ['GET /jobs/:id/events', (signal) => fetch(`${base}/jobs/${id}/events`, { signal })],
  ];
  for (const [what, req] of routes) {
    const [res, ms] = await timed(req);
    t.equal(res.status, 503, `${what}: 503 in ${ms} ms`);
    t.ok(ms < 2000, `${what}: answered in ${ms} ms`);
    t.match(await res.json(), { error: { code: 'E_UNAVAILABLE', message: /Redis/ } });
  }
  r.proc.kill('SIGCONT');
  let health = 0;
  for (let i = 0; i < 50 && health !== 200; i++) {
    health = (await fetch(`${base}/health`)).status;
    if (health !== 200) await new Promise((res) => setTimeout(res, 100));
  }
  t.equal(health, 200, 'healthy again once Redis answers');
  t.match(await (await fetch(`${base}/jobs/${id}`)).json(), { id, state: 'queued' }, 'the queued job is still there');
});

t.test('7: failed jobs keep no stack trace or path in Redis, and are kept by count', async (t) => {
  const name = `faults-${randomUUID().slice(0, 8)}`;
  const { base } = await start(t, name);
  const logs: string[] = [];
  const w = await startWorker({ redis: r.url, model: TINY_SD, load: { device: 'cpu' }, queue: name, log: (l) => logs.push(l) });
  t.teardown(() => w.close(true));
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const res = await post(base, '/identities', { image: cat, method: 'sefi-ide', steps: 1 });
    t.equal(res.status, 202);
    ids.push((await res.json()).id);
    t.match(await settle(base, ids[i]!, 60_000), { state: 'failed', error: { code: 'E_NO_FACE', message: /no face/ } });
  }
  const { Redis } = await import('ioredis');
  const client = new Redis(r.url);
  t.teardown(() => void client.quit());
  const stored = await client.hgetall(`bull:${name}:${ids[2]}`);
  t.equal(stored.stacktrace, '[]', 'no stack trace');
  t.match(stored.failedReason, /^E_NO_FACE: no face found/);
  t.match(JSON.parse(stored.data!), { kind: 'learn', image: '' }, 'the failed job no longer holds its photo');
  for (const [k, v] of Object.entries(stored)) if (k !== 'data') t.notMatch(v, /\/[a-z]+\/|\bat [A-Za-z.<>]+ \(/, `${k}: no path, no stack`);
  t.equal(await client.zcard(`bull:${name}:failed`), 2, 'two failed jobs kept (keep count 2)');
  t.equal((await fetch(`${base}/jobs/${ids[0]}`)).status, 404, 'the oldest is gone');
  t.match(logs.join('\n'), /failed: E_NO_FACE[^]*\n\s+at /, "the worker's log has the whole story");
});

t.test('3: a learning job queued before a server restart keeps its id', async (t) => {
  const name = `faults-${randomUUID().slice(0, 8)}`;
  const first = await start(t, name);
  t.equal((await post(first.base, '/identities', { image: face, method: 'sefi-ide', id: 'held', steps: 1 })).status, 202);
  await first.close();
  const second = await start(t, name);
  const res = await post(second.base, '/identities', { image: face, method: 'sefi-ide', id: 'held', steps: 1 });
  t.equal(res.status, 409, 'the id of a queued learning job is taken');
});
