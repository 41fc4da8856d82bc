// Issue 25, against the real server on 127.0.0.1 (in this process, over the tiny model): hostile
// and unlucky requests get a bounded, clean answer at submission, and leave nothing behind.
// Whole-process behaviour (memory, shutdown, flags, restarts) is in serve-process.test.ts; Redis's
// in serve-redis-faults.test.ts.
import sharp from 'sharp';
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Engine } from '../lib/engine.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { loadImage } from '../lib/io/image.js';
import type { JobData } from '../lib/serve/api.js';
import { LocalQueue } from '../lib/serve/queue.js';
import { buildServer, type ServerOptions } from '../lib/serve/server.js';
import { IdentityStore } from '../lib/serve/store.js';
import { TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';
import { SVG_BOMB, lyingPng, post, rawJson, rawRequest, settle } from './helpers/serve.js';

const engine = await Engine.load(TINY_SD, { device: 'cpu' });
const encoder = await IdEncoder.load(TINY_ID);
t.teardown(() => {
  engine.dispose();
  encoder.dispose();
});
const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-hostile-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');
const face = b64(await sharp(fixture('faces/astronaut.jpg')).resize(256, 256).jpeg().toBuffer());
const cat = b64(await sharp(fixture('faces/chelsea.jpg')).resize(256, 192).jpeg().toBuffer());
let stores = 0;

async function start(t: Tap.Test, o: Partial<ServerOptions> & { queue?: LocalQueue } = {}) {
  const queue = o.queue ?? new LocalQueue([engine]);
  const app = await buildServer({
    store: new IdentityStore(path.join(dir, `ids-${stores++}`)), encoder, ...o, queue,
    limits: { maxSteps: 20, maxSide: 256, ...o.limits },
  });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(async () => {
    await queue.close(0);
    await app.close();
  });
  return { base, queue, app };
}

/** A request that must be answered within `ms` (a hung server fails the test instead of hanging it). */
const within = (ms: number) => ({ signal: AbortSignal.timeout(ms) });
const upload = (base: string, body: object, ms = 10_000) =>
  fetch(`${base}/identities`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), ...within(ms) });

async function error(res: Response): Promise<{ code: string; message: string }> {
  const body = await res.json();
  return body.error;
}

t.test('1: hostile uploads are refused before any decoding, and never hold a normal upload', async (t) => {
  const { base } = await start(t);
  let res = await upload(base, { image: b64(SVG_BOMB) }, 5000);
  t.equal(res.status, 415, 'an SVG is refused by its magic bytes, before any rendering');
  t.equal((await error(res)).code, 'E_UNSUPPORTED_MEDIA');
  const gif = await sharp({ create: { width: 64, height: 64, channels: 3, background: 'red' } }).gif().toBuffer();
  t.equal((await upload(base, { image: b64(gif) })).status, 415, 'GIF (a multi-frame format) is refused');

  // Hostile uploads in flight (the SVG, as base64 and as a data: URI, and a PNG header that
  // lies over random data); a normal upload meanwhile is answered within 2 s. The first upload,
  // untimed, loads the face detector; the second times a normal upload alone: on a machine so busy
  // that it alone takes over a second, the bound is twice that (the server took 60 s).
  t.equal((await upload(base, { image: face }, 60_000)).status, 201);
  const a0 = Date.now();
  t.equal((await upload(base, { image: face }, 10_000)).status, 201);
  const alone = Date.now() - a0;
  const bodies = [{ image: b64(SVG_BOMB) }, { image: `data:image/svg+xml;base64,${b64(SVG_BOMB)}` }, { image: b64(lyingPng(4096, 4096, 1 << 20)), method: 'sefi-ide' }, { image: b64(SVG_BOMB) }];
  const hostile = bodies.map((body) => upload(base, body, 30_000));
  await new Promise((r) => setTimeout(r, 20));
  const t0 = Date.now();
  res = await upload(base, { image: face }, 10_000);
  const ms = Date.now() - t0;
  t.equal(res.status, 201, 'the normal upload succeeds');
  const bound = Math.max(2000, 2 * alone);
  t.ok(ms < bound, `a normal upload during hostile ones took ${ms} ms (alone ${alone} ms; bound ${bound} ms)`);
  const answers = await Promise.all(hostile.map(async (p) => [(await p).status, (await error(await p)).code]));
  t.same(answers, [[415, 'E_UNSUPPORTED_MEDIA'], [415, 'E_UNSUPPORTED_MEDIA'], [400, 'E_ARGUMENT'], [415, 'E_UNSUPPORTED_MEDIA']], 'each hostile upload gets its 4xx');
});

t.test('1: the decode budget: pixels by the header and the decoded image, decoding time; big photos scaled for face work', async (t) => {
  const { base } = await start(t, { limits: { maxUploadSide: 512 } });
  const res = await upload(base, { image: b64(lyingPng(20000, 20000, 64)) });
  t.equal(res.status, 413, 'a 20000² header: 413 as the README says');
  t.equal((await error(res)).code, 'E_TOO_LARGE');
  const wide = await sharp({ create: { width: 600, height: 100, channels: 3, background: 'white' } }).png().toBuffer();
  t.equal((await upload(base, { image: b64(wide) })).status, 413, 'a side over --max-upload: 413');
  const tiny = await sharp({ create: { width: 32, height: 32, channels: 3, background: 'white' } }).png().toBuffer();
  t.equal((await upload(base, { image: b64(tiny) })).status, 400, 'under 64 px a side: 400');
  for (const seconds of [0, -1, Number.NaN, 1e9])
    await t.rejects(loadImage(tiny, { seconds }), { code: 'E_ARGUMENT', message: /decode budget: seconds/ }, `a decode budget of ${seconds} s: E_ARGUMENT`);

  // A progressive JPEG of noise: 16 Mpx that libjpeg decodes slowly (all its scans are buffered
  // first, ~0.9-1.6 s on an idle core). With a 0.2 s budget: 413 at 0.2 s, and sharp stops the work at 1 s.
  // (The decode runs on libuv's threads, two uploads at a time: it holds no other request; the
  // latency check is the test above.)
  const slow = await sharp({ create: { width: 4096, height: 4096, channels: 3, background: '#000', noise: { type: 'gaussian', mean: 128, sigma: 80 } } })
    .jpeg({ progressive: true, quality: 100 }).toBuffer();
  const budget = (await start(t, { limits: { bodyBytes: 48 << 20, decodeSeconds: 0.2 } })).base;
  const late = await upload(budget, { image: b64(slow), method: 'sefi-ide' }, 60_000);
  t.equal(late.status, 413, 'a decode over the time budget: 413');
  t.match(await error(late), { code: 'E_TOO_LARGE', message: /more than 0.2 s to decode/ });

  // A 4096² photo is decoded, then scaled to 1024 a side before face detection (whose time grows with the square of the side).
  const blank = b64(await sharp({ create: { width: 4096, height: 4096, channels: 3, background: '#808080' } }).jpeg().toBuffer());
  t.equal((await upload((await start(t)).base, { image: blank }, 30_000)).status, 422, 'a 4096² photo without a face: 422');
});

t.test('2: finished jobs are kept by count and age; a job drops its payload when it ends', async (t) => {
  const queue = new LocalQueue([engine], { keep: { count: 2, ms: 60_000 } });
  const { base } = await start(t, { queue });
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) ids.push((await (await upload(base, { image: cat, method: 'sefi-ide', steps: 1 })).json()).id);
  for (const id of ids.slice(1)) t.match(await settle(base, id), { state: 'failed', error: { code: 'E_NO_FACE' } });
  t.equal((await fetch(`${base}/jobs/${ids[0]}`)).status, 404, 'the oldest finished job is gone (count 2)');

  const aging = new LocalQueue([engine], { keep: { count: 100, ms: 150 } });
  const old = (await start(t, { queue: aging })).base;
  const id = (await (await post(old, '/generate', { prompt: 'a', width: 64, height: 64, steps: 1 })).json()).id;
  t.equal((await settle(old, id)).state, 'done');
  await new Promise((r) => setTimeout(r, 300));
  t.equal((await fetch(`${old}/jobs/${id}`)).status, 404, 'a finished job older than the age is gone');

  // The payload (an upload can be megabytes) is unreachable once its job has failed.
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const payload = (): [WeakRef<object>, JobData] => {
    const data: JobData = { kind: 'learn', identityId: 'weak', image: cat, steps: 1, seed: 0 };
    return [new WeakRef(data), data];
  };
  let [ref, data] = payload();
  const job = await queue.submit(data);
  data = undefined as unknown as JobData;
  t.match(await settle(base, job), { state: 'failed' });
  await new Promise((r) => setTimeout(r, 10));
  gc();
  t.equal(ref.deref(), undefined, 'the failed job no longer holds its payload');
});

t.test('3: an identity id is reserved from submission until its identity is stored or its job fails', async (t) => {
  const { base } = await start(t);
  const first = await upload(base, { image: face, method: 'sefi-ide', id: 'race', steps: 2 });
  const second = await upload(base, { image: face, method: 'sefi-ide', id: 'race', steps: 2 });
  const third = await upload(base, { image: face, id: 'race' });
  t.same([first.status, second.status, third.status], [202, 409, 409], 'only the first upload of an id is taken');
  t.equal((await error(third)).code, 'E_EXISTS');
  const job = (await first.json()).id;
  t.match(await settle(base, job, 120_000), { state: 'done', identity: 'race' });
  t.match(await (await fetch(`${base}/identities/race`)).json(), { id: 'race', method: 'sefi-ide' }, 'the store holds the learned identity');
  t.equal((await upload(base, { image: face, id: 'race' })).status, 409, 'a stored id stays taken');
  t.equal((await fetch(`${base}/identities/race`, { method: 'DELETE' })).status, 204);
  t.equal((await fetch(`${base}/jobs/${job}`)).status, 200);
  t.equal((await fetch(`${base}/identities/race`)).status, 404, 'looking at the job again does not bring a deleted identity back');

  const doomed = await upload(base, { image: cat, method: 'sefi-ide', id: 'doomed', steps: 1 });
  t.match(await settle(base, (await doomed.json()).id), { state: 'failed', error: { code: 'E_NO_FACE' } });
  t.equal((await upload(base, { image: face, id: 'doomed' })).status, 201, 'a failed job releases its id');
});

t.test('4: every request field is used or refused', async (t) => {
  const { base } = await start(t);
  const refused: [string, () => Promise<Response>, RegExp][] = [
    ['landmarks for sefi-ide', () => upload(base, { image: face, method: 'sefi-ide', landmarks: [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]] }), /landmarks.*sefi-ide/],
    ['steps for dreamidentity', () => upload(base, { image: face, method: 'dreamidentity', steps: 5 }), /steps.*dreamidentity/],
    ['seed with the default method', () => upload(base, { image: face, seed: 5 }), /seed.*dreamidentity/],
    ['identityScale without identity', () => post(base, '/generate', { prompt: 'a', identityScale: 2 }), /identityScale.*identity/],
    ['attention without identity', () => post(base, '/generate', { prompt: 'a', attention: true }), /attention.*identity/],
    ['negativePrompt without guidance', () => post(base, '/generate', { prompt: 'a', guidanceScale: 1, negativePrompt: 'b' }), /negativePrompt.*guidanceScale/],
  ];
  for (const [what, req, message] of refused) {
    const res = await req();
    t.equal(res.status, 400, what);
    t.match((await error(res)).message, message, `${what}: says why`);
  }
  // Landmarks are used: the identity is the encoder's for those points, not the detector's.
  const png = fixture('faces/face-a.png');
  const marks = JSON.parse(readFileSync(fixture('faces/landmarks.json'), 'utf8'));
  const res = await upload(base, { image: b64(await sharp(png).toBuffer()), landmarks: marks['face-a'] });
  t.equal(res.status, 201);
  const got = await (await fetch(`${base}/identities/${(await res.json()).id}/file`)).arrayBuffer();
  const want = await encoder.encode(png, { landmarks: marks['face-a'] as [number, number][] });
  const file = path.join(dir, 'lm.safetensors');
  writeFileSync(file, Buffer.from(got));
  const { Identity } = await import('../lib/identity/identity.js');
  t.same(Array.from(Identity.load(file).kData), Array.from(want.kData), 'the given landmarks made the identity');
  // No face: the message names nothing the HTTP API refuses.
  const noFace = await error(await upload(base, { image: cat }));
  t.equal(noFace.code, 'E_NO_FACE');
  t.notMatch(noFace.message, /noFaceFallback/, `E_NO_FACE: ${noFace.message}`);
});

t.test('5: a prompt that does not fit its identity is refused at submission, never queued', async (t) => {
  // No engine: nothing runs, so the queue counts exactly what was accepted (1 waiting, then 429).
  const queue = new LocalQueue([], { maxQueue: 1 });
  const { base } = await start(t, { queue });
  const made = await upload(base, { image: face, id: 'ann', name: 'ann' });
  t.equal(made.status, 201);
  const bad: [string, object][] = [
    ['<id> without identity', { prompt: 'a photo of <id>' }],
    ['identity without <id>', { prompt: 'a photo of a person', identity: 'ann' }],
    ['40 × <id>', { prompt: Array(40).fill('<id>').join(' '), identity: 'ann' }],
    ['unknown <id:bob>', { prompt: 'a photo of <id:bob>', identity: 'ann' }],
  ];
  for (const [what, body] of bad) {
    const res = await post(base, '/generate', body);
    t.equal(res.status, 400, what);
    const e = await error(res);
    t.equal(e.code, 'E_IDENTITY', `${what}: ${e.message}`);
  }
  t.equal((await post(base, '/generate', { prompt: 'a photo of <id:ann>', identity: 'ann' })).status, 202, 'a fitting prompt is queued');
  t.equal((await post(base, '/generate', { prompt: 'a photo of <id>', identity: 'ann' })).status, 429, 'and nothing else was');
});

t.test('6 and 9: slow clients get 408, oversized headers 431, both in the one error shape', async (t) => {
  const { base } = await start(t, { timeouts: { requestMs: 600, headersMs: 600, keepAliveMs: 300 } });
  const t0 = Date.now();
  const half = Array.from({ length: 20 }, () =>
    rawRequest(base, 'POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt":'));
  const noHeaders = rawRequest(base, 'GET /health HTTP/1.1\r\nHost: x\r\n');
  const replies = await Promise.all([...half, noHeaders].map((r) => r.reply));
  const ms = Date.now() - t0;
  t.ok(ms < 3000, `21 slow requests answered in ${ms} ms`);
  for (const r of replies) {
    t.match(r, /^HTTP\/1\.1 408 /);
    t.same(rawJson(r).error.code, 'E_TIMEOUT');
  }
  const big = await rawRequest(base, `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`).reply;
  t.match(big, /^HTTP\/1\.1 431 /);
  t.same(rawJson(big).error, { code: 'E_HEADERS_TOO_LARGE', message: 'the request headers are too large' });
  // An idle keep-alive connection is closed by the server.
  const idle = rawRequest(base, 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n');
  const k0 = Date.now();
  t.match(await idle.reply, /^HTTP\/1\.1 200 /);
  t.ok(Date.now() - k0 < 2000, `an idle keep-alive connection closed after ${Date.now() - k0} ms`);
});

t.test('8: no paths, stacks or library messages in responses; failures are logged with their stack', async (t) => {
  const lines: any[] = [];
  const stream = new PassThrough();
  stream.on('data', (d) => lines.push(...String(d).trim().split('\n').map((l) => JSON.parse(l))));
  const storeDir = path.join(dir, 'damaged');
  mkdirSync(path.join(storeDir, 'adir.safetensors'), { recursive: true });
  writeFileSync(path.join(storeDir, 'junk.safetensors'), 'garbage');
  const { base } = await start(t, { store: new IdentityStore(storeDir), log: { level: 'info', stream } });
  const bodies: string[] = [];
  const call = async (res: Promise<Response>, status: number, what: string) => {
    const r = await res;
    const text = await r.text();
    bodies.push(text);
    t.equal(r.status, status, `${what}: ${text}`);
    t.match(JSON.parse(text), { error: { code: String, message: String } });
  };
  await call(fetch(`${base}/identities/junk`), 500, 'a damaged identity file');
  await call(fetch(`${base}/identities/adir`, { method: 'DELETE' }), 404, 'a folder named like an identity');
  t.same((await (await fetch(`${base}/identities`)).json()).identities, [], 'neither is listed');
  rmSync(storeDir, { recursive: true, force: true });
  await call(fetch(`${base}/identities`), 500, 'a removed store folder (list)');
  await call(upload(base, { image: face, id: 'x' }), 500, 'a removed store folder (upload)');
  for (const b of bodies) t.notMatch(b, /\/|safetensors|ENOENT|EISDIR|scandir|at [A-Za-z.]+ \(/, `clean: ${b}`);

  await new Promise((r) => setTimeout(r, 50));
  const requests = lines.filter((l) => l.msg === 'request');
  t.equal(requests.length, 5, 'one log line per request');
  t.ok(requests.every((l) => l.method && l.url && l.status && typeof l.ms === 'number'));
  const errors = lines.filter((l) => l.level >= 50);
  t.equal(errors.length, 3, 'each 500 is logged');
  t.ok(errors.every((l) => /\n\s+at /.test(l.err?.stack ?? '')), 'with the cause and its stack');
});

t.test('9: health with a query string, duplicate keys, data: URIs', async (t) => {
  const { base } = await start(t, { token: 's3cret' });
  t.equal((await fetch(`${base}/health?x=1`)).status, 200, 'health needs no token, query string or not');
  t.equal((await fetch(`${base}/identities?x=1`)).status, 401, 'other routes still do');
  const auth = { authorization: 'Bearer s3cret', 'content-type': 'application/json' };
  let res = await fetch(`${base}/generate`, { method: 'POST', headers: auth, body: '{"prompt":"a","steps":2,"steps":3}' });
  t.equal(res.status, 400, 'duplicate JSON keys are refused');
  t.match((await error(res)).message, /"steps" appears twice/);
  res = await fetch(`${base}/generate`, { method: 'POST', headers: { ...auth, 'content-type': 'text/plain' }, body: 'a' });
  t.equal(res.status, 415, 'a body that is not JSON');
  res = await fetch(`${base}/identities`, { method: 'POST', headers: auth, body: JSON.stringify({ image: `data:image/jpeg;base64,${face}` }) });
  t.equal(res.status, 201, 'a data: URI image is accepted');
  res = await fetch(`${base}/identities`, { method: 'POST', headers: auth, body: JSON.stringify({ image: `${face.slice(0, 100)}!!${face.slice(100)}` }) });
  t.equal(res.status, 400, 'an image that is not base64');
});

t.test('9: a request that arrives while the server closes gets 503 in the same shape', async (t) => {
  const queue = new LocalQueue([engine]);
  const app = await buildServer({ queue, store: new IdentityStore(path.join(dir, 'closing')), encoder });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  // A slow upload keeps its connection busy (not idle, so close() leaves it open) ...
  const big = b64(await sharp(fixture('faces/astronaut.jpg')).resize(2048, 2048).jpeg().toBuffer());
  const body = JSON.stringify({ image: big });
  const conn = rawRequest(base, `POST /identities HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  await new Promise((r) => setTimeout(r, 100));
  const closed = app.close();
  await new Promise((r) => setTimeout(r, 20));
  // ... and a second request on it arrives during the close.
  conn.socket.write('GET /identities HTTP/1.1\r\nHost: x\r\n\r\n');
  await closed;
  await queue.close(0);
  const reply = await conn.reply;
  const second = reply.slice(reply.indexOf('HTTP/1.1', 10));
  t.match(reply, /^HTTP\/1\.1 201 /, 'the upload in flight finished');
  t.match(second, /^HTTP\/1\.1 503 /);
  t.same(rawJson(second), { error: { code: 'E_UNAVAILABLE', message: 'the server is shutting down' } });
});
