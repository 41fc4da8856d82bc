// The server's few-step add-ons over real HTTP on 127.0.0.1, with the in-process queue and with a
// real Redis (queue and worker in this process): LoRA files offered by name (--loras DIR: GET
// /loras, `loras: [{ name, scale }]`, never a path; a file that does not fit the model is not
// offered), the LCM sampler, and live previews over SSE from a preview VAE (--preview-vae).
// Images must equal the engine's own, and a job's LoRAs must not outlive it.
import t from 'tap';
import { randomUUID } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { loadImage, sniffRaster } from '../lib/io/image.js';
import { writeSafetensors } from '../lib/io/safetensors.js';
import { LoraLibrary } from '../lib/serve/loras.js';
import { LocalQueue, type JobQueue } from '../lib/serve/queue.js';
import { RedisQueue, startWorker } from '../lib/serve/redis.js';
import { buildServer } from '../lib/serve/server.js';
import { IdentityStore } from '../lib/serve/store.js';
import { TINY_SD, fixture } from './helpers/fixtures.js';
import { events, hasRedis, pixels, post, redis, settle } from './helpers/serve.js';

const TAESD = fixture('tiny-taesd');
const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-serve-fewstep-'));
const loraDir = path.join(dir, 'loras');
mkdirSync(loraDir);
cpSync(fixture('tiny-lora/kohya.safetensors'), path.join(loraDir, 'style.safetensors'));
cpSync(fixture('tiny-lora/peft.safetensors'), path.join(loraDir, 'lcm-tiny.v1.safetensors'));
writeFileSync(path.join(loraDir, 'notes.txt'), 'not a LoRA');
writeFileSync(path.join(loraDir, 'has space.safetensors'), 'never read: the name does not fit');
// A LoRA for another base model: a module this one does not have.
writeSafetensors(path.join(loraDir, 'other-model.safetensors'), {
  'lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight': { dtype: 'F32', shape: [2, 8], data: new Float32Array(16).fill(0.5) },
  'lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight': { dtype: 'F32', shape: [8, 2], data: new Float32Array(16).fill(0.5) },
});
const engine = await Engine.load(TINY_SD, { device: 'cpu', previewVae: TAESD });
const ref = await Engine.load(TINY_SD, { device: 'cpu' });
t.teardown(() => {
  engine.dispose();
  ref.dispose();
  rmSync(dir, { recursive: true, force: true });
});

const ARGS = { prompt: 'a photo of the face of person', sampler: 'lcm', steps: 3, guidanceScale: 1, width: 64, height: 64, seed: 5 } as const;
const LORAS = [{ name: 'style', scale: 0.8 }, { name: 'lcm-tiny.v1', scale: -0.5 }];

// The engine's own images, with those LoRAs and without: each served image must equal one.
await ref.setLoras([{ path: fixture('tiny-lora/kohya.safetensors'), scale: 0.8 }, { path: fixture('tiny-lora/peft.safetensors'), scale: -0.5 }]);
const withLoras = await ref.generate(ARGS);
await ref.setLoras([]);
const plain = await ref.generate(ARGS);
for (const r of [withLoras, plain]) {
  r.latents.dispose();
  r.pixels.dispose();
}

async function serve(t: Tap.Test, queue: JobQueue, loras?: LoraLibrary): Promise<string> {
  const app = await buildServer({ queue, store: new IdentityStore(path.join(dir, 'identities')), limits: { maxSteps: 20, maxSide: 256 }, ...(loras ? { loras } : {}) });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(async () => {
    await app.close();
    await queue.close(0);
  });
  return base;
}

/**
 * A job with LoRAs whose events are read live from before it starts (a first job keeps the
 * engine busy: previews are never replayed from history), then one without: both images the
 * engine's, a preview PNG per step, none in the job's view.
 */
async function lorasThenPlain(t: Tap.Test, base: string): Promise<void> {
  const busy = await (await post(base, '/generate', { ...ARGS, steps: 6 })).json();
  const res = await post(base, '/generate', { ...ARGS, loras: LORAS });
  t.equal(res.status, 202);
  const { id } = await res.json();
  const evs = await events(base, id);
  t.equal((await settle(base, busy.id)).state, 'done');
  const v = await settle(base, id);
  t.equal(v.state, 'done', JSON.stringify(v.error));
  t.same(await pixels(base, id), withLoras.images[0]!.data, "the served image is the engine's with those LoRAs");
  const progress = evs.filter((e) => e.event === 'progress');
  t.same(progress.map((e) => e.data.step), [1, 2, 3]);
  for (const e of progress) {
    const jpeg = Buffer.from(e.data.preview, 'base64');
    const img = await loadImage(jpeg);
    t.ok(sniffRaster(jpeg) === 'jpeg' && img.width > 0 && img.width <= 64 && img.width === img.height, `step ${e.data.step}: a preview JPEG (${img.width}x${img.height}, ${jpeg.length} bytes)`);
  }
  const view = await (await fetch(`${base}/jobs/${id}`)).json();
  t.notOk('preview' in (view.progress ?? {}), 'job views carry no preview');

  const next = await (await post(base, '/generate', ARGS)).json();
  t.equal((await settle(base, next.id)).state, 'done');
  t.same(await pixels(base, next.id), plain.images[0]!.data, 'LoRAs do not outlive their job');
}

t.test('the LoRA folder: .safetensors files by name; with an engine, only those that fit its model', async (t) => {
  const names = LoraLibrary.open(loraDir);
  t.same(names.list().map((l) => l.name), ['lcm-tiny.v1', 'other-model', 'style'], 'without a model: by name');
  t.same(names.skipped, ['notes.txt']);
  t.same(names.unfit.map((u) => u.file), ['has space.safetensors']);
  const lib = LoraLibrary.open(loraDir, engine);
  t.same(lib.list().map((l) => l.name), ['lcm-tiny.v1', 'style']);
  t.same(lib.unfit.map((u) => u.file), ['has space.safetensors', 'other-model.safetensors']);
  t.match(lib.unfit[1]!.reason, /lora_unet_down_blocks_7_attentions_0_proj_in" names no module of this model's UNet/);
  t.throws(() => lib.resolve([{ name: 'nope', scale: 1 }]), { code: 'E_ARGUMENT', message: "loras: no LoRA named 'nope'; offered: lcm-tiny.v1, style (GET /loras)" });
  t.throws(() => LoraLibrary.open(path.join(dir, 'missing')), { code: 'E_NOT_FOUND' });
});

t.test('in-process: loras by name, LCM and live previews through HTTP equal the engine', async (t) => {
  const loras = LoraLibrary.open(loraDir, engine);
  const base = await serve(t, new LocalQueue([engine], { maxQueue: 10, loras }), loras);
  const list = await (await fetch(`${base}/loras`)).json();
  t.same(list.loras.map((l: { name: string }) => l.name), ['lcm-tiny.v1', 'style']);
  t.ok(list.loras.every((l: { bytes: number }) => l.bytes > 1000), 'with their sizes');
  await lorasThenPlain(t, base);
  t.same(engine.loras, []);

  // Names only, offered ones only.
  for (const [body, msg] of [
    [[{ name: 'nope' }], /no LoRA named 'nope'; offered: lcm-tiny.v1, style/],
    [[{ name: 'other-model' }], /'other-model' does not fit this model/],
    [[{ name: '../style' }], /loras/],
    [[{ name: 'style', scale: 50 }], /scale/],
    [[{ path: '/etc/passwd' }], /loras/],
  ] as const) {
    const r = await post(base, '/generate', { ...ARGS, loras: body });
    t.equal(r.status, 400, JSON.stringify(body));
    t.match((await r.json()).error, { code: 'E_ARGUMENT', message: msg });
  }
});

t.test('a server without --loras refuses loras and lists none', async (t) => {
  const base = await serve(t, new LocalQueue([engine], { maxQueue: 10 }));
  t.same(await (await fetch(`${base}/loras`)).json(), { loras: [] });
  const r = await post(base, '/generate', { ...ARGS, loras: [{ name: 'style' }] });
  t.equal(r.status, 400);
  t.match((await r.json()).error, { code: 'E_ARGUMENT', message: /--loras/ });
});

t.test('Redis: the worker merges its own folder\'s files, previews reach SSE', { skip: hasRedis ? false : 'redis-server not installed (.ci/run installs it)' }, async (t) => {
  const r = await redis();
  t.teardown(() => r.stop());
  const name = `fewstep-${randomUUID().slice(0, 8)}`;
  const logs: string[] = [];
  const w = await startWorker({ redis: r.url, model: TINY_SD, load: { device: 'cpu', previewVae: TAESD }, queue: name, loras: loraDir, log: (l) => logs.push(l) });
  t.teardown(() => w.close(true));
  t.match(logs.join('\n'), /--loras: not offering other-model\.safetensors: .*names no module/, 'the worker says which file it does not offer');
  // The server has no model to check against: it offers the folder by name, the worker decides.
  const base = await serve(t, await RedisQueue.open(r.url, { name, maxQueue: 10 }), LoraLibrary.open(loraDir));
  await lorasThenPlain(t, base);
  const bad = await (await post(base, '/generate', { ...ARGS, loras: [{ name: 'other-model' }] })).json();
  t.match((await settle(base, bad.id)).error, { code: 'E_ARGUMENT', message: /'other-model' does not fit this model/ });
  t.same(w.engine.loras, []);
});
