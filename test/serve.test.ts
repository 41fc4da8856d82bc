// `idforge serve` in one process: the real Fastify server on 127.0.0.1 over an in-process engine
// queue, driven by real HTTP requests. Images must equal engine.generate's for the same arguments.
import sharp from 'sharp';
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { heatmapCapture, imageHeatmaps, spreadSteps } from '../lib/attention.js';
import { Identity } from '../lib/identity/identity.js';
import { loadImage } from '../lib/io/image.js';
import { HEATMAP_STEPS } from '../lib/serve/jobs.js';
import { DEFAULT_KEEP, LocalQueue } from '../lib/serve/queue.js';
import { ResultStore } from '../lib/serve/results.js';
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

async function start(t: Tap.Test, opts: { token?: string; maxQueue?: number; bodyBytes?: number; results?: ResultStore } = {}) {
  const queue = new LocalQueue([engine], { maxQueue: opts.maxQueue ?? 100 });
  const app = await buildServer({
    queue, store: new IdentityStore(path.join(dir, 'identities')), encoder, ...(opts.results ? { results: opts.results } : {}),
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

  // regions: the identity (named ann) kept on the left half; the request's errors are the library's.
  const regions = { ann: [0, 0, 0.5, 1] as const };
  const left = (await (await post(base, '/generate', { ...args, identity: 'ann-1', regions })).json()).id;
  t.equal((await settle(base, left)).state, 'done');
  const refLeft = await engine.generate({ ...args, identity, regions });
  const got = Buffer.from(await pixels(base, left));
  t.ok(got.equals(Buffer.from(refLeft.images[0]!.data)), 'regions: equals engine.generate with the same regions');
  t.notOk(got.equals(Buffer.from(ref.images[0]!.data)), 'regions: another image than the unconfined one');
  refLeft.latents.dispose();
  refLeft.pixels.dispose();
  const refused: [object, RegExp][] = [
    [{ ...args, regions }, /'regions' needs 'identity'/],
    [{ ...args, identity: 'ann-1', regions: { bob: [0, 0, 1, 1] } }, /^regions\.bob must be the box of an identity in the prompt \(ann\), got no <id:bob> in the prompt$/],
    [{ ...args, identity: 'ann-1', regions: { ann: [0.5, 0, 0.5, 1] } }, /^regions\.ann must be a box with x0 < x1 and y0 < y1/],
    [{ ...args, identity: 'ann-1', regions: { ann: [0, 0, 1.5, 1] } }, /regions/],
    [{ ...args, identity: 'ann-1', regions: { ann: [0, 0, 1] } }, /regions/],
  ];
  for (const [body, message] of refused) {
    const res = await post(base, '/generate', body);
    t.equal(res.status, 400, JSON.stringify((body as { regions?: unknown }).regions));
    t.match((await res.json()).error, { code: 'E_ARGUMENT', message });
  }

  t.equal((await fetch(`${base}/identities/ann-1`, { method: 'DELETE' })).status, 204);
  t.equal((await fetch(`${base}/identities/ann-1`)).status, 404);
});

t.test('attention: the heatmap of where the identity attends, beside the picture, bounded, kept in --results', async (t) => {
  const results = path.join(dir, 'results');
  const { base } = await start(t, { results: new ResultStore(results, DEFAULT_KEEP) });
  t.equal((await post(base, '/identities', { image: face, id: 'heat' })).status, 201);
  const args = { ...ARGS, prompt: 'a photo of <id> at the beach', steps: 10 };
  const { id } = await (await post(base, '/generate', { ...args, identity: 'heat', attention: true })).json();
  const v = await settle(base, id);
  t.same(v.attention, [{ token: '<id>', url: `/jobs/${id}/attention/0.png` }]);
  const res = await fetch(`${base}${v.attention[0].url}`);
  t.match(res.headers.get('content-type'), /image\/png/);
  const png = Buffer.from(await res.arrayBuffer());
  const heat = await loadImage(png);
  // The reference: engine.generate with the capture the job asks for, drawn the same way.
  const identity = new IdentityStore(path.join(dir, 'identities')).load('heat');
  const capture = heatmapCapture(engine.crossAttentionLayers, args.height / engine.latentFactor, engine.configs.unet.blockOutChannels.length);
  const ref = await engine.generate({ ...args, identity, captureAttention: { ...capture, steps: spreadSteps(args.steps, HEATMAP_STEPS) } });
  t.equal(new Set(ref.attention!.maps.map((m) => m.step)).size, HEATMAP_STEPS, `${HEATMAP_STEPS} of the 10 steps captured`);
  t.ok(Buffer.from(heat.data).equals(Buffer.from((await imageHeatmaps(ref, '<id>'))[0]!.data)), 'the heatmap equals imageHeatmaps of engine.generate with that capture');
  t.ok(Buffer.from(await pixels(base, id)).equals(Buffer.from(ref.images[0]!.data)), 'and the picture equals its picture');
  ref.latents.dispose();
  ref.pixels.dispose();
  // A job that did not ask has no heatmap; a restarted server serves the one in --results.
  const plain = (await (await post(base, '/generate', { ...args, identity: 'heat' })).json()).id;
  t.notOk((await settle(base, plain)).attention, 'no heatmap unless asked');
  t.equal((await fetch(`${base}/jobs/${plain}/attention/0.png`)).status, 404);
  const again = await start(t, { results: new ResultStore(results, DEFAULT_KEEP) });
  const kept = await fetch(`${again.base}/jobs/${id}/attention/0.png`);
  t.ok(Buffer.from(await kept.arrayBuffer()).equals(png), 'the heatmap outlives the server in --results');
});

t.test('several people: identities named by <id:name>, each kept in its box, a heatmap each', async (t) => {
  const { base } = await start(t);
  const marks = JSON.parse(readFileSync(fixture('faces/landmarks.json'), 'utf8'));
  for (const [id, file] of [['two-ann', 'face-a'], ['two-bob', 'face-b']])
    t.equal((await post(base, '/identities', { image: readFileSync(fixture(`faces/${file}.png`)).toString('base64'), id, landmarks: marks[file] })).status, 201);
  const args = { ...ARGS, prompt: 'a photo of <id:ann> and <id:bob> at the beach' };
  const regions = { ann: [0, 0, 0.5, 1], bob: [0.5, 0, 1, 1] } as const;
  const { id } = await (await post(base, '/generate', { ...args, identities: { ann: 'two-ann', bob: 'two-bob' }, regions, attention: true })).json();
  const v = await settle(base, id);
  t.same(v.attention.map((a: { token: string }) => a.token), ['<id:ann>', '<id:bob>'], 'a heatmap per person');
  const store = new IdentityStore(path.join(dir, 'identities'));
  // A capture runs another step program (the maps are outputs): the same picture within float rounding (a pixel level here and there), so the reference captures too.
  const captureAttention = heatmapCapture(engine.crossAttentionLayers, args.height / engine.latentFactor, engine.configs.unet.blockOutChannels.length);
  const ref = await engine.generate({ ...args, identities: { ann: store.load('two-ann'), bob: store.load('two-bob') }, regions, captureAttention });
  t.ok(Buffer.from(await pixels(base, id)).equals(Buffer.from(ref.images[0]!.data)), 'equals engine.generate with the same identities and regions');
  ref.latents.dispose();
  ref.pixels.dispose();
  const refused: [object, number, string, RegExp][] = [
    [{ ...args, identity: 'two-ann', identities: { ann: 'two-ann', bob: 'two-bob' } }, 400, 'E_ARGUMENT', /not both/],
    [{ ...args, identities: { ann: 'two-ann', bob: 'two-bob', cy: 'two-ann' } }, 400, 'E_IDENTITY', /^identities\.cy is not in the prompt/],
    [{ ...args, identities: { ann: 'two-ann' } }, 400, 'E_IDENTITY', /bob/],
    [{ ...args, identities: { ann: 'two-ann', bob: 'nobody' } }, 404, 'E_NOT_FOUND', /nobody/],
    [{ ...args, identities: { 'a<b': 'two-ann' } }, 400, 'E_ARGUMENT', /identities/],
    [{ ...args, identities: {} }, 400, 'E_ARGUMENT', /identities/],
  ];
  for (const [body, status, code, message] of refused) {
    const res = await post(base, '/generate', body);
    t.equal(res.status, status, JSON.stringify(body));
    t.match((await res.json()).error, { code, message });
  }
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
  const progress = (await events(base, sub.id)).filter((e) => e.event === 'progress').map((e) => e.data);
  t.same(progress.map((p) => p.step), [1, 2], 'a progress event per learning step');
  t.ok(progress.every((p) => Number.isFinite(p.loss) && p.loss > 0), `each with its loss (${progress.map((p) => p.loss)})`);
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
    ['path-like id on upload', () => post(base, '/identities', { image: face, id: '../x' }), 400, 'E_ARGUMENT'],
    ['a photo without a face', () => post(base, '/identities', { image: cat }), 422, 'E_NO_FACE'],
    ['not an image', () => post(base, '/identities', { image: Buffer.from('this is not an image at all').toString('base64') }), 415, 'E_UNSUPPORTED_MEDIA'],
    ['body too large', () => post(base, '/identities', { image: 'A'.repeat(300_000) }), 413, 'E_TOO_LARGE'],
    ['broken JSON', () => fetch(`${base}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"prompt":' }), 400, 'E_ARGUMENT'],
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
  // A dot-dot id never reaches the server: the client resolves /identities/.. to /, the studio page.
  const dd = await fetch(`${base}/identities/..`);
  t.equal(dd.url, `${base}/`, 'dot-dot identity in a URL: resolved to / by the client');
  t.match(dd.headers.get('content-type'), /text\/html/, 'dot-dot identity in a URL: the page, no identity');
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
  const queue = new LocalQueue([engine], { maxQueue: 10 });
  const running = await queue.submit({ kind: 'generate', ...ARGS, steps: 6, sampler: 'ddim' });
  const waiting = await queue.submit({ kind: 'generate', ...ARGS, sampler: 'ddim' });
  await new Promise((r) => setTimeout(r, 50));
  await queue.close(60_000);
  t.equal((await queue.get(running))!.state, 'done');
  t.match((await queue.get(waiting))!, { state: 'failed', error: { code: 'E_ABORTED' } });
  await t.rejects(queue.submit({ kind: 'generate', ...ARGS, sampler: 'ddim' }), { code: 'E_UNAVAILABLE' });
});

t.test('studio routes without the face models installed: 501 E_NO_FACE_MODELS, and the page is told', async (t) => {
  // The optional packages missing, as packageDir reports it (lib/faces/tf.ts); tap mocks a module's
  // own imports, so the server is loaded with a studio.ts that is loaded with that packageDir.
  const tf = { ...(await import('../lib/faces/tf.js')), packageDir: (name: string) => { throw new Error(`${name} is not installed`); } };
  const studio = await t.mockImport('../lib/serve/studio.js', { '../lib/faces/tf.js': tf });
  const { buildServer: build } = await t.mockImport<typeof import('../lib/serve/server.js')>('../lib/serve/server.js', { '../lib/serve/studio.js': studio });
  const queue = new LocalQueue([]);
  const app = await build({ queue, store: new IdentityStore(path.join(dir, 'identities')), limits: { maxSide: 256 }, log: { level: 'silent' } });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => app.close());
  t.match(await (await fetch(`${base}/studio/config`)).json(), { faces: false, encoder: false, mode: 'local' });
  for (const [route, body] of [['/studio/faces', { image: face }], ['/studio/similarity', { reference: face, job: '00000000-0000-4000-8000-000000000000', index: 0 }]] as const) {
    const res = await post(base, route, body);
    t.equal(res.status, 501, route);
    t.match(await res.json(), { error: { code: 'E_NO_FACE_MODELS', message: /no face models/ } }, `${route}: says why`);
  }
});
