// `idforge serve` and `idforge worker`: flags → a server over a JobQueue, or a BullMQ worker.
import { parseArgs } from 'node:util';
import { Engine, type LoadOptions } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { validateDevice } from '../validate.js';
import { DEFAULT_LIMITS, type Limits } from './api.js';
import type { JobQueue } from './queue.js';

export const SERVE_USAGE = `usage: idforge serve --model DIR [options]         (engines in this process)
       idforge serve --redis URL [options]         (enqueue only; run \`idforge worker\`s)
  --host H --port N     listen address (127.0.0.1:8080; --port 0 picks a free port)
  --engines N           engines in this process (1), each runs one job at a time
  --device D --dtype T  as for generate (auto; float16 on CUDA, float32 on the CPU)
  --identities DIR      identity store (./identities)
  --encoder DIR         ID encoder for DreamIdentity uploads (POST /identities)
  --token T             require "Authorization: Bearer T" (or IDFORGE_TOKEN)
  --queue NAME          BullMQ queue name (idforge)
  --max-steps N --max-size PX --max-queue N --body-limit BYTES --max-upload PX
  --grace S             on SIGTERM/SIGINT, seconds to let running jobs finish (30)`;

export const WORKER_USAGE = `usage: idforge worker --redis URL --model DIR [--device auto|cpu|cuda] [--dtype float32|float16]
                     [--queue NAME] [--lock-ms 30000] [--stalled-ms 30000]
  one engine per worker: start one per GPU (CUDA_VISIBLE_DEVICES=i) or machine`;

function int(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new IdforgeError('E_ARGUMENT', `--${name} must be a non-negative integer, got '${v}'`);
  return n;
}

function loadOptions(v: { device?: string | undefined; dtype?: string | undefined }): LoadOptions {
  const { device, dtype } = validateDevice(v as LoadOptions);
  return { device, ...(dtype ? { dtype } : {}) };
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

const s = { type: 'string' } as const;

export async function serve(argv: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args: argv,
    options: {
      model: s, redis: s, host: s, port: s, engines: s, device: s, dtype: s, identities: s, encoder: s, token: s, queue: s,
      'max-steps': s, 'max-size': s, 'max-queue': s, 'body-limit': s, 'max-upload': s, grace: s, help: { type: 'boolean' },
    },
  });
  if (v.help || (!v.model && !v.redis)) {
    process.stderr.write(`${SERVE_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  const limits: Limits = {
    ...DEFAULT_LIMITS,
    ...(v['max-steps'] ? { maxSteps: int(v['max-steps'], 'max-steps')! } : {}),
    ...(v['max-size'] ? { maxSide: int(v['max-size'], 'max-size')! } : {}),
    ...(v['max-queue'] ? { maxQueue: int(v['max-queue'], 'max-queue')! } : {}),
    ...(v['body-limit'] ? { bodyBytes: int(v['body-limit'], 'body-limit')! } : {}),
    ...(v['max-upload'] ? { maxUploadSide: int(v['max-upload'], 'max-upload')! } : {}),
  };
  const { IdentityStore } = await import('./store.js');
  const { buildServer } = await import('./server.js');
  const engines: Engine[] = [];
  let queue: JobQueue;
  if (v.redis) {
    const { RedisQueue } = await import('./redis.js');
    queue = await RedisQueue.open(v.redis, { maxQueue: limits.maxQueue, ...(v.queue ? { name: v.queue } : {}) });
  } else {
    const n = int(v.engines, 'engines') ?? 1;
    for (let i = 0; i < Math.max(1, n); i++) engines.push(await Engine.load(v.model!, loadOptions(v)));
    const { LocalQueue } = await import('./queue.js');
    queue = new LocalQueue(engines, limits.maxQueue);
  }
  let encoder;
  if (v.encoder) {
    const { IdEncoder } = await import('../dreamidentity/encoder.js');
    encoder = await IdEncoder.load(v.encoder);
  }
  const token = v.token ?? process.env.IDFORGE_TOKEN;
  const app = await buildServer({
    queue, store: new IdentityStore(v.identities ?? 'identities'), limits,
    ...(encoder ? { encoder } : {}), ...(token ? { token } : {}),
  });
  const address = await app.listen({ host: v.host ?? '127.0.0.1', port: int(v.port, 'port') ?? 8080 });
  process.stdout.write(`idforge serve listening on ${address} (${queue.mode}${v.redis ? '' : `, ${engines.length} engine(s)`})\n`);
  const graceMs = (int(v.grace, 'grace') ?? 30) * 1000;
  const sig = await shutdownSignal(() => process.exit(1));
  process.stdout.write(`${sig}: finishing running jobs (up to ${graceMs / 1000} s)\n`);
  await queue.close(graceMs);
  await app.close();
  encoder?.dispose();
  for (const e of engines) e.dispose();
  process.stdout.write('idforge serve stopped\n');
  return 0;
}

export async function worker(argv: string[]): Promise<number> {
  const { values: v } = parseArgs({
    args: argv,
    options: { model: s, redis: s, device: s, dtype: s, queue: s, 'lock-ms': s, 'stalled-ms': s, help: { type: 'boolean' } },
  });
  if (v.help || !v.model || !v.redis) {
    process.stderr.write(`${WORKER_USAGE}\n`);
    return v.help ? 0 : 2;
  }
  const { startWorker } = await import('./redis.js');
  const lockMs = int(v['lock-ms'], 'lock-ms');
  const stalledMs = int(v['stalled-ms'], 'stalled-ms');
  const w = await startWorker({
    redis: v.redis, model: v.model, load: loadOptions(v), log: (l) => process.stdout.write(`${l}\n`),
    ...(v.queue ? { queue: v.queue } : {}), ...(lockMs ? { lockMs } : {}), ...(stalledMs ? { stalledCheckMs: stalledMs } : {}),
  });
  process.stdout.write(`idforge worker ready (${w.engine.backend.device} ${w.engine.backend.dtype}, pid ${process.pid})\n`);
  // First signal: finish the job in hand. Second: leave it; its lock expires and another worker retries it.
  const sig = await shutdownSignal(() => void w.close(true).then(() => process.exit(1)));
  process.stdout.write(`${sig}: finishing the job in hand\n`);
  await w.close();
  process.stdout.write('idforge worker stopped\n');
  return 0;
}
