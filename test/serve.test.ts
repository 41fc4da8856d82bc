// `idforge serve` in one process: the real Fastify server on 127.0.0.1 over an in-process engine
// queue, driven by real HTTP requests. Images must equal engine.generate's for the same arguments.
import sharp from 'sharp';
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { Identity } from '../lib/identity/identity.js';
import { LocalQueue } from '../lib/serve/queue.js';
import { buildServer } from '../lib/serve/server.js';
import { IdentityStore } from '../lib/serve/store.js';
import { TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';
import { events, pixels, post, settle } from './helpers/serve.js';

const engine = await Engine.load(TINY_SD, { device: 'cpu' });
const encoder = await IdEncoder.load(TINY_ID);
t.teardown(() => {
  engine.dispose();
  encoder.dispose();
});
const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-serve-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
// A real photo (within the test server's 256 px upload limit): identities are made from the
// detected, aligned face.
const face = (await sharp(fixture('faces/astronaut.jpg')).resize(256, 256).jpeg().toBuffer()).toString('base64');
const cat = (await sharp(fixture('faces/chelsea.jpg')).resize(256, 192).jpeg().toBuffer()).toString('base64');

async function start(t: Tap.Test, opts: { token?: string; maxQueue?: number; bodyBytes?: number } = {}) {
  const queue = new LocalQueue([engine], opts.maxQueue ?? 100);
  const app = await buildServer({
    queue, store: new IdentityStore(path.join(dir, 'identities')), encoder,
    limits: { maxSteps: 20, maxSide: 256, ...(opts.bodyBytes ? { bodyBytes: opts.bodyBytes } : {}) },
    ...(opts.token ? { token: opts.token } : {}),
  });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(async () => {
    await queue.close(0);
    await app.close();
  });
  return { base, queue, app };
}

const ARGS = { prompt: 'a photo of a cat, oil painting', negativePrompt: 'blurry', width: 64, height: 128, steps: 3, guidanceScale: 6, seed: 7 };

t.test('a generation through HTTP equals engine.generate with the same arguments', async (t) => {
  const { base } = await start(t);
  const res = await post(base, '/generate', ARGS);
  t.equal(res.status, 202);
  const { id } = await res.json();
  const v = await settle(base, id);
  t.equal(v.state, 'done', JSON.stringify(v.error));
  t.equal(v.seed, 7);
  t.same(v.images, [`/jobs/${id}/images/0.png`]);
  const ref = await engine.generate(ARGS);
  t.ok(Buffer.from(await pixels(base, id)).equals(Buffer.from(ref.images[0]!.data)), 'PNG pixels equal engine.generate');
  ref.latents.dispose();
  ref.pixels.dispose();
});

t.test('SSE: one progress event per step, then done', async (t) => {
  const { base } = await start(t);
  // The first job holds the only engine, so the second is still queued when we subscribe.
  const first = (await (await post(base, '/generate', { ...ARGS, steps: 8 })).json()).id;
  const second = (await (await post(base, '/generate', { ...ARGS, steps: 4 })).json()).id;
  const ev = await events(base, second);
  t.same(ev.filter((e) => e.event === 'progress').map((e) => e.data), [1, 2, 3, 4].map((step) => ({ step, steps: 4 })));
  t.equal(ev.at(-1)!.event, 'done');
  t.same(ev.at(-1)!.data.images, [`/jobs/${second}/images/0.png`]);
  // A client that comes late (here: after the job finished) still gets every step, then the result.
  const again = await events(base, first);
  t.same(again.map((e) => (e.event === 'progress' ? e.data.step : e.event)), [1, 2, 3, 4, 5, 6, 7, 8, 'done']);
});

t.test('identities: encode an upload, list, fetch, generate with it, delete', async (t) => {
  const { base } = await start(t);
  const res = await post(base, '/identities', { image: face, name: 'ann', id: 'ann-1' });
  t.equal(res.status, 201);
  const info = await res.json();
  t.match(info, { id: 'ann-1', name: 'ann', method: 'dreamidentity', stages: 1 });
  t.equal((await post(base, '/identities', { image: face, id: 'ann-1' })).status, 409, 'an existing id is not overwritten');
  const list = await (await fetch(`${base}/identities`)).json();
  t.ok(list.identities.some((i: { id: string }) => i.id === 'ann-1'));
  const file = path.join(dir, 'ann-1.safetensors');
  const { writeFileSync } = await import('node:fs');
  writeFileSync(file, Buffer.from(await (await fetch(`${base}/identities/ann-1/file`)).arrayBuffer()));
  const identity = Identity.load(file);
  const direct = await encoder.encode(Buffer.from(face, 'base64'));
  t.same(Array.from(identity.kData), Array.from(direct.kData), 'the stored identity is the encoder output');

  const args = { ...ARGS, prompt: 'a photo of <id> as an astronaut' };
  const { id } = await (await post(base, '/generate', { ...args, identity: 'ann-1' })).json();
  t.equal((await settle(base, id)).state, 'done');
  const ref = await engine.generate({ ...args, identity });
  t.ok(Buffer.from(await pixels(base, id)).equals(Buffer.from(ref.images[0]!.data)), 'identity generation equals engine.generate');
  ref.latents.dispose();
  ref.pixels.dispose();

  t.equal((await fetch(`${base}/identities/ann-1`, { method: 'DELETE' })).status, 204);
  t.equal((await fetch(`${base}/identities/ann-1`)).status, 404);
});

t.test('SeFi-IDE learning runs as a job and stores the identity', async (t) => {
  const { base } = await start(t);
  const res = await post(base, '/identities', { image: face, method: 'sefi-ide', id: 'bob', steps: 2, seed: 3 });
  t.equal(res.status, 202);
  const sub = await res.json();
  t.equal(sub.identity, 'bob');
  const v = await settle(base, sub.id, 120_000);
  t.equal(v.state, 'done', JSON.stringify(v.error));
  t.equal(v.identity, 'bob');
  t.match(await (await fetch(`${base}/identities/bob`)).json(), { id: 'bob', method: 'sefi-ide', stages: 5 });
});

t.test('bad requests get 4xx with a JSON error and the server keeps serving', async (t) => {
  const { base } = await start(t, { bodyBytes: 200_000 });
  const cases: [string, () => Promise<Response>, number, string][] = [
    ['missing prompt', () => post(base, '/generate', { steps: 2 }), 400, 'E_ARGUMENT'],
    ['huge size', () => post(base, '/generate', { prompt: 'a', width: 1 << 20, height: 64 }), 400, 'E_ARGUMENT'],
    ['size not a multiple of 64', () => post(base, '/generate', { prompt: 'a', width: 72, height: 64 }), 400, 'E_ARGUMENT'],
    ['too many steps', () => post(base, '/generate', { prompt: 'a', steps: 21 }), 400, 'E_ARGUMENT'],
    ['wrong type', () => post(base, '/generate', { prompt: 'a', steps: '3' }), 400, 'E_ARGUMENT'],
    ['unknown sampler', () => post(base, '/generate', { prompt: 'a', sampler: 'nope' }), 400, 'E_ARGUMENT'],
    ['a model path from the request', () => post(base, '/generate', { prompt: 'a', model: '/etc' }), 400, 'E_ARGUMENT'],
    ['unknown identity', () => post(base, '/generate', { prompt: 'a <id>', identity: 'nobody' }), 404, 'E_NOT_FOUND'],
    ['path-like identity in a body', () => post(base, '/generate', { prompt: 'a', identity: '../../etc/passwd' }), 400, 'E_ARGUMENT'],
    ['path-like identity in a URL', () => fetch(`${base}/identities/..%2F..%2Fetc%2Fpasswd`), 400, 'E_ARGUMENT'],
    ['dot-dot identity in a URL', () => fetch(`${base}/identities/..`), 404, 'E_NOT_FOUND'],
    ['path-like id on upload', () => post(base, '/identities', { image: face, id: '../x' }), 400, 'E_ARGUMENT'],
    ['a photo without a face', () => post(base, '/identities', { image: cat }), 422, 'E_NO_FACE'],
    ['not an image', () => post(base, '/identities', { image: Buffer.from('this is not an image at all').toString('base64') }), 400, 'E_ARGUMENT'],
    ['body too large', () => post(base, '/identities', { image: 'A'.repeat(300_000) }), 413, 'FST_ERR_CTP_BODY_TOO_LARGE'],
    ['broken JSON', () => fetch(`${base}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"prompt":' }), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['unknown job', () => fetch(`${base}/jobs/00000000-0000-4000-8000-000000000000`), 404, 'E_NOT_FOUND'],
    ['malformed job id', () => fetch(`${base}/jobs/..%2Fx`), 400, 'E_ARGUMENT'],
    ['unknown route', () => fetch(`${base}/admin`), 404, 'E_NOT_FOUND'],
  ];
  for (const [what, req, status, code] of cases) {
    const res = await req();
    t.equal(res.status, status, what);
    t.match(res.headers.get('content-type'), /application\/json/, `${what}: JSON`);
    const body = await res.json();
    t.equal(body.error?.code, code, `${what}: error code`);
    t.type(body.error?.message, 'string', `${what}: message`);
  }
  t.equal((await fetch(`${base}/health`)).status, 200, 'still serving');
});

t.test('queue length limit: 429 once maxQueue jobs wait', async (t) => {
  const { base } = await start(t, { maxQueue: 1 });
  const a = await post(base, '/generate', { ...ARGS, steps: 6 }); // runs
  const b = await post(base, '/generate', ARGS); // waits
  const c = await post(base, '/generate', ARGS);
  t.same([a.status, b.status, c.status], [202, 202, 429]);
  t.equal((await c.json()).error.code, 'E_QUEUE_FULL');
  await settle(base, (await b.json()).id);
});

t.test('bearer token', async (t) => {
  const { base } = await start(t, { token: 's3cret' });
  const no = await post(base, '/generate', ARGS);
  t.equal(no.status, 401);
  t.equal((await no.json()).error.code, 'E_UNAUTHORIZED');
  t.equal((await post(base, '/generate', ARGS, { authorization: 'Bearer wrong' })).status, 401);
  t.equal((await fetch(`${base}/identities`)).status, 401);
  const ok = await post(base, '/generate', ARGS, { authorization: 'Bearer s3cret' });
  t.equal(ok.status, 202);
  const v = await settle(base, (await ok.json()).id, 60_000, { authorization: 'Bearer s3cret' });
  t.equal(v.state, 'done');
  t.equal((await fetch(`${base}/health`)).status, 200, 'health needs no token');
});

t.test('shutdown finishes the running job and fails the waiting ones', async (t) => {
  const queue = new LocalQueue([engine], 10);
  const running = await queue.submit({ kind: 'generate', ...ARGS, steps: 6, sampler: 'ddim' });
  const waiting = await queue.submit({ kind: 'generate', ...ARGS, sampler: 'ddim' });
  await new Promise((r) => setTimeout(r, 50));
  await queue.close(60_000);
  t.equal((await queue.get(running))!.state, 'done');
  t.match((await queue.get(waiting))!, { state: 'failed', error: { code: 'E_ABORTED' } });
  await t.rejects(queue.submit({ kind: 'generate', ...ARGS, sampler: 'ddim' }), { code: 'E_ABORTED' });
});
