// `idforge serve` and `idforge worker`: flags → a server over a JobQueue, or a BullMQ worker.
// Every flag is checked (and the listen address tried) before a model loads: a bad flag must not
// cost a model load, nor start listening and then exit.
import fs from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { Engine, type LoadOptions } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { validateDevice } from '../validate.js';
import { DEFAULT_LIMITS, DEFAULT_TIMEOUTS, SIZE_MULTIPLE, type Limits, type Timeouts } from './api.js';
import { LoraLibrary } from './loras.js';
import type { JobQueue } from './queue.js';

export const SERVE_USAGE = `usage: idforge serve --model DIR [options]         (engines in this process)
       idforge serve --redis URL [options]         (enqueue only; run \`idforge worker\`s)
  --host H --port N     listen address (127.0.0.1:8080; --port 0 picks a free port)
  --engines N           engines in this process (1), each runs one job at a time
  --device D --dtype T  as for generate (auto; float16 on CUDA, float32 on the CPU)
  --identities DIR      identity store (./identities)
  --encoder DIR         ID encoder for DreamIdentity uploads (POST /identities)
  --results DIR         keep finished jobs (views, PNGs) on disk: their URLs survive a restart
  --loras DIR           offer the folder's .safetensors LoRAs by name (GET /loras; loras: [{ name, scale }])
  --preview-vae DIR     a VAE (e.g. TAESD) for live previews: each step's progress event carries a small PNG
  --token T             require "Authorization: Bearer T" (or IDFORGE_TOKEN)
  --queue NAME          BullMQ queue name (idforge; with --redis)
  --max-steps N --max-size PX --max-queue N --body-limit BYTES --max-upload PX
  --keep-jobs N --keep-age S  finished jobs kept: at most N (200), none older than S seconds (3600)
  --request-timeout S   a request must arrive whole within S seconds (30), else 408
  --redis-timeout S     a Redis command must answer within S seconds (5), else 503 (with --redis)
  --log                 one JSON line per request (pino); failures are logged always
  --grace S             on SIGTERM/SIGINT, seconds to let running jobs finish (30); the process exits by then`;

export const WORKER_USAGE = `usage: idforge worker --redis URL --model DIR [--device auto|cpu|cuda] [--dtype float32|float16]
                     [--queue NAME] [--lock-ms 30000] [--stalled-ms 30000] [--loras DIR] [--preview-vae DIR]
  one engine per worker: start one per GPU (CUDA_VISIBLE_DEVICES=i) or machine`;

const bad = (msg: string) => new IdforgeError('E_ARGUMENT', msg);

function int(v: string | undefined, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!v.trim() || !Number.isSafeInteger(n) || n < min || n > max)
    throw bad(`--${name} must be an integer ${max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`}, got '${v}'`);
  return n;
}

function seconds(v: string | undefined, name: string, min: number, max = 86_400): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!v.trim() || !Number.isFinite(n) || n < min || n > max) throw bad(`--${name} must be a number of seconds in [${min}, ${max}], got '${v}'`);
  return n;
}

function loadOptions(v: { device?: string | undefined; dtype?: string | undefined }): LoadOptions {
  const { device, dtype } = validateDevice(v as LoadOptions);
  return { device, ...(dtype ? { dtype } : {}) };
}

function existingDir(p: string, name: string): string {
  if (!fs.existsSync(p)) throw new IdforgeError('E_NOT_FOUND', `--${name}: ${p} does not exist`);
  return p;
}

function redisUrl(v: string): string {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw bad(`--redis must be a URL like redis://host:6379, got '${v}'`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw bad(`--redis must be a redis:// or rediss:// URL, got '${v}'`);
  return v;
}

function queueName(v: string | undefined): string | undefined {
  if (v !== undefined && !/^[A-Za-z0-9_.-]{1,64}$/.test(v)) throw bad(`--queue must be 1-64 letters, digits, '_', '.' or '-', got '${v}'`);
  return v;
}

/** Resolves on the first SIGTERM / SIGINT; a second one calls `force`. */
function shutdownSignal(force: () => void): Promise<string> {
  return new Promise((resolve) => {
    let n = 0;
    const on = (sig: string) => (n++ === 0 ? resolve(sig) : force());
    process.on('SIGTERM', () => on('SIGTERM'));
    process.on('SIGINT', () => on('SIGINT'));
  });
}

/** Fails now (E_ARGUMENT) when the address cannot be listened on, rather than after the model loaded. */
async function tryListen(host: string, port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen({ host, port }, () => s.close(() => resolve()));
  }).catch((e: NodeJS.ErrnoException) => {
    throw bad(`cannot listen on ${host}:${port} (${e.code ?? e.message})`);
  });
}

const s = { type: 'string' } as const;

export const SERVE_OPTIONS = {
  model: s, redis: s, host: s, port: s, engines: s, device: s, dtype: s, identities: s, encoder: s, results: s, token: s, queue: s, loras: s, 'preview-vae': s,
  'max-steps': s, 'max-size': s, 'max-queue': s, 'body-limit': s, 'max-upload': s, 'keep-jobs': s, 'keep-age': s,
  'request-timeout': s, 'redis-timeout': s, grace: s, log: { type: 'boolean' }, help: { type: 'boolean' },
} as const;

type ServeValues = ReturnType<typeof parseArgs<{ options: typeof SERVE_OPTIONS }>>['values'];

export interface ServeConfig {
  mode: 'local' | 'redis';
  model?: string;
  redis?: string;
  host: string;
  port: number;
  engines: number;
  load: LoadOptions;
  identities: string;
  encoder?: string;
  results?: string;
  /** The LoRA folder requests may name files of; with --redis, the workers need the same files (their own --loras). */
  loras?: string;
  previewVae?: string;
  token?: string;
  queue?: string;
  limits: Limits;
  timeouts: Timeouts;
  redisMs?: number;
  log: boolean;
  graceMs: number;
}

/** Every flag of `idforge serve`, checked (E_ARGUMENT naming the flag) before anything loads. */
export function serveConfig(v: ServeValues): ServeConfig {
  if (v.model && v.redis) throw bad('--model and --redis exclude each other: the server runs engines itself, or enqueues for workers');
  const mode = v.redis ? 'redis' : 'local';
  const only = (flags: (keyof ServeValues)[], where: string) => {
    for (const f of flags) if (v[f] !== undefined) throw bad(`--${f} applies ${where} only`);
  };
  if (mode === 'redis') only(['engines', 'device', 'dtype', 'preview-vae'], 'to engines in this process (--model)');
  else only(['queue', 'redis-timeout'], 'with --redis');
  if (v.token !== undefined && !v.token) throw bad('--token must not be empty');
  queueName(v.queue);
  if (v.host !== undefined && !v.host.trim()) throw bad('--host must not be empty');
  const keepJobs = int(v['keep-jobs'], 'keep-jobs', 1);
  const keepAge = seconds(v['keep-age'], 'keep-age', 1, 365 * 86_400);
  const limits: Limits = {
    ...DEFAULT_LIMITS,
    ...optional('maxSteps', int(v['max-steps'], 'max-steps', 1, 10_000)),
    ...optional('maxSide', int(v['max-size'], 'max-size', SIZE_MULTIPLE, 16_384)),
    ...optional('maxQueue', int(v['max-queue'], 'max-queue', 1)),
    ...optional('bodyBytes', int(v['body-limit'], 'body-limit', 1024, 1 << 30)),
    ...optional('maxUploadSide', int(v['max-upload'], 'max-upload', DEFAULT_LIMITS.minUploadSide, 16_384)),
    ...optional('keepJobs', keepJobs),
    ...optional('keepSeconds', keepAge),
  };
  if (limits.maxSide % SIZE_MULTIPLE) throw bad(`--max-size must be a multiple of ${SIZE_MULTIPLE}, got '${v['max-size']}'`);
  const requestS = seconds(v['request-timeout'], 'request-timeout', 0.1, 3600);
  const timeouts: Timeouts = requestS === undefined ? DEFAULT_TIMEOUTS
    : { ...DEFAULT_TIMEOUTS, requestMs: requestS * 1000, headersMs: Math.min(DEFAULT_TIMEOUTS.headersMs, requestS * 1000) };
  const redisS = seconds(v['redis-timeout'], 'redis-timeout', 0.05, 600);
  return {
    mode,
    ...(v.model ? { model: existingDir(v.model, 'model') } : {}),
    ...(v.redis ? { redis: redisUrl(v.redis) } : {}),
    host: v.host ?? '127.0.0.1',
    port: int(v.port, 'port', 0, 65535) ?? 8080,
    engines: int(v.engines, 'engines', 1, 64) ?? 1,
    load: loadOptions(v),
    identities: v.identities ?? 'identities',
    ...(v.encoder ? { encoder: existingDir(v.encoder, 'encoder') } : {}),
    ...(v.results ? { results: v.results } : {}),
    ...(v.loras ? { loras: existingDir(v.loras, 'loras') } : {}),
    ...(v['preview-vae'] ? { previewVae: existingDir(v['preview-vae'], 'preview-vae') } : {}),
    ...(v.token ?? process.env.IDFORGE_TOKEN ? { token: v.token ?? process.env.IDFORGE_TOKEN } : {}),
    ...(v.queue ? { queue: v.queue } : {}),
    limits,
    timeouts,
    ...(redisS !== undefined ? { redisMs: Math.round(redisS * 1000) } : {}),
    log: v.log ?? false,
    graceMs: (seconds(v.grace, 'grace', 0, 86_400) ?? 30) * 1000,
  };
}

const optional = <K extends string>(k: K, v: number | undefined): Partial<Record<K, number>> => (v === undefined ? {} : ({ [k]: v } as Record<K, number>));

export async function serve(argv: string[]): Promise<number> {
  const { values: v } = parseArgs({ args: argv, options: SERVE_OPTIONS });
  if (v.help || (!v.model && !v.redis)) {
    process.stderr.write(`${SERVE_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  const c = serveConfig(v);
  // Cheap things that can fail, before the model: the folders, the listen address.
  const { IdentityStore } = await import('./store.js');
  const { ResultStore } = await import('./results.js');
  const keep = { count: c.limits.keepJobs, ms: c.limits.keepSeconds * 1000 };
  const store = new IdentityStore(c.identities);
  const results = c.results ? new ResultStore(c.results, keep) : undefined;
  await tryListen(c.host, c.port);

  const { buildServer } = await import('./server.js');
  const engines: Engine[] = [];
  let queue: JobQueue;
  // LoRAs are checked against the model where there is one here (workers check their own folder);
  // what is not offered goes to stderr (the reasons name paths: never sent to clients).
  const openLoras = (engine?: Engine) => {
    const lib = c.loras ? LoraLibrary.open(c.loras, engine) : undefined;
    for (const u of lib?.unfit ?? []) process.stderr.write(`idforge serve: --loras: not offering ${u.file}: ${u.reason}\n`);
    return lib;
  };
  let loras: LoraLibrary | undefined;
  if (c.redis) {
    loras = openLoras();
    const { RedisQueue } = await import('./redis.js');
    queue = await RedisQueue.open(c.redis, { maxQueue: c.limits.maxQueue, keep, ...optional('commandMs', c.redisMs), ...(c.queue ? { name: c.queue } : {}) })
      .catch((e: Error) => {
        throw bad(`--redis: no Redis answers at ${c.redis} (${e.message})`);
      });
  } else {
    for (let i = 0; i < c.engines; i++) engines.push(await Engine.load(c.model!, { ...c.load, ...(c.previewVae ? { previewVae: c.previewVae } : {}) }));
    loras = openLoras(engines[0]);
    const { LocalQueue } = await import('./queue.js');
    queue = new LocalQueue(engines, { maxQueue: c.limits.maxQueue, keep, ...(loras ? { loras } : {}) });
  }
  let encoder;
  if (c.encoder) {
    const { IdEncoder } = await import('../dreamidentity/encoder.js');
    encoder = await IdEncoder.load(c.encoder);
  }
  const app = await buildServer({
    queue, store, limits: c.limits, timeouts: c.timeouts, log: { level: c.log ? 'info' : 'error' },
    ...(engines[0] ? { prompts: { tokenizer: engines[0].tokenizer, configs: engines[0].configs } } : {}),
    ...(encoder ? { encoder } : {}), ...(c.token ? { token: c.token } : {}), ...(results ? { results } : {}), ...(loras ? { loras } : {}),
    previews: !!c.previewVae,
  });
  const address = await app.listen({ host: c.host, port: c.port }).catch((e: NodeJS.ErrnoException) => {
    throw bad(`cannot listen on ${c.host}:${c.port} (${e.code ?? e.message})`);
  });
  process.stdout.write(`idforge serve listening on ${address} (${queue.mode}${c.redis ? '' : `, ${engines.length} engine(s)`})\n`);
  const sig = await shutdownSignal(() => process.exit(1));
  process.stdout.write(`${sig}: finishing running jobs (up to ${c.graceMs / 1000} s)\n`);
  // Bounded whatever clients or Redis do: running jobs get the grace (then they are aborted),
  // requests in flight too; connections still open then are cut, and a second later the process
  // exits whatever is left.
  const t0 = Date.now();
  setTimeout(() => {
    process.stderr.write('idforge serve: shutdown took longer than --grace; exiting\n');
    process.exit(1);
  }, c.graceMs + 1000).unref();
  const cut = setTimeout(() => app.server.closeAllConnections(), c.graceMs + 500);
  const closed = app.close();
  await queue.close(c.graceMs);
  await Promise.race([closed, new Promise((r) => setTimeout(r, Math.max(0, t0 + c.graceMs - Date.now())))]);
  app.server.closeAllConnections();
  await closed;
  clearTimeout(cut);
  encoder?.dispose();
  for (const e of engines) e.dispose();
  process.stdout.write('idforge serve stopped\n');
  return 0;
}

export async function worker(argv: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args: argv,
    options: { model: s, redis: s, device: s, dtype: s, queue: s, 'lock-ms': s, 'stalled-ms': s, loras: s, 'preview-vae': s, help: { type: 'boolean' } },
  });
  if (v.help || !v.model || !v.redis) {
    process.stderr.write(`${WORKER_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  const { startWorker } = await import('./redis.js');
  // Every flag before the model loads.
  const lockMs = int(v['lock-ms'], 'lock-ms', 100);
  const stalledMs = int(v['stalled-ms'], 'stalled-ms', 100);
  const queue = queueName(v.queue);
  const load = { ...loadOptions(v), ...(v['preview-vae'] ? { previewVae: existingDir(v['preview-vae'], 'preview-vae') } : {}) };
  const opts = { redis: redisUrl(v.redis), model: existingDir(v.model, 'model'), load };
  const w = await startWorker({
    ...opts, log: (l) => process.stdout.write(`${l}\n`), ...(v.loras ? { loras: existingDir(v.loras, 'loras') } : {}),
    ...(queue ? { queue } : {}), ...(lockMs ? { lockMs } : {}), ...(stalledMs ? { stalledCheckMs: stalledMs } : {}),
  });
  process.stdout.write(`idforge worker ready (${w.engine.backend.device} ${w.engine.backend.dtype}, pid ${process.pid})\n`);
  // First signal: finish the job in hand. Second: leave it; its lock expires and another worker retries it.
  const sig = await shutdownSignal(() => void w.close(true).then(() => process.exit(1)));
  process.stdout.write(`${sig}: finishing the job in hand\n`);
  await w.close();
  process.stdout.write('idforge worker stopped\n');
  return 0;
}
