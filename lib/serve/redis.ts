// Scale-out over BullMQ on Redis: the server's RedisQueue only enqueues and listens; workers
// (startWorker, one engine each) take jobs, report per-step progress with job.updateProgress, and
// return the result. A worker that dies mid-job stops renewing the job's lock; BullMQ's stalled-job
// check moves the job back to the wait list and another worker runs it again from its payload
// (the seed is in the payload, so the image is the same).
import { randomUUID } from 'node:crypto';
import { Queue, QueueEvents, Worker, type Job } from 'bullmq';
import { Engine, type LoadOptions } from '../engine.js';
import { deadline } from '../errors.js';
import type { JobData, JobError, JobResult, JobState, JobView, Progress } from './api.js';
import { ServeError, publicError } from './errors.js';
import { DEFAULT_KEEP, type JobEvent, type JobQueue } from './queue.js';
import { runJob } from './jobs.js';
import { LoraLibrary } from './loras.js';
import type { KeepPolicy } from './results.js';

export const DEFAULT_QUEUE = 'idforge';
/** How long the server waits for one Redis command before answering 503. */
export const DEFAULT_REDIS_MS = 5_000;

/** Workers and the server's event stream block on Redis by design: no command timeout there. */
const blocking = (url: string) => ({ url, maxRetriesPerRequest: null });
/** The server's own commands fail after `commandMs` (a frozen Redis must not hang a request). */
const bounded = (url: string, commandMs: number) => ({ url, maxRetriesPerRequest: 1, commandTimeout: commandMs });
/** How long the server waits for Redis when it starts. */
const CONNECT_MS = 10_000;

function state(s: string): JobState {
  if (s === 'active') return 'running';
  if (s === 'completed') return 'done';
  if (s === 'failed') return 'failed';
  return 'queued';
}

/** A job's progress as a worker reported it (BullMQ keeps any JSON), or undefined. */
function progressOf(p: unknown): Progress | undefined {
  const q = p as Progress | null;
  if (typeof q !== 'object' || q === null || typeof q.step !== 'number' || typeof q.steps !== 'number') return undefined;
  return { step: q.step, steps: q.steps, ...(typeof q.loss === 'number' ? { loss: q.loss } : {}), ...(typeof q.preview === 'string' ? { preview: q.preview } : {}) };
}

export interface RedisQueueOptions {
  name?: string;
  maxQueue: number;
  keep?: KeepPolicy;
  /** Per-command timeout of the server's Redis connection (ms). */
  commandMs?: number;
}

export class RedisQueue implements JobQueue {
  readonly mode = 'redis';
  onCompleted?: (id: string, result: JobResult) => void;
  onFailed?: (id: string, error: JobError, cause?: unknown) => void;
  readonly #queue: Queue<JobData, JobResult>;
  readonly #events: QueueEvents;
  readonly #listeners = new Map<string, Set<(e: JobEvent) => void>>();
  /** Every step this server has seen per running job, so that a late SSE client still gets each one. */
  readonly #steps = new Map<string, Progress[]>();

  private constructor(queue: Queue<JobData, JobResult>, events: QueueEvents, readonly maxQueue: number, readonly keep: KeepPolicy) {
    this.#queue = queue;
    this.#events = events;
    events.on('progress', ({ jobId, data }) => {
      const progress = progressOf(data);
      if (!progress) return;
      let seen = this.#steps.get(jobId);
      if (!seen || progress.step <= (seen.at(-1)?.step ?? 0)) this.#steps.set(jobId, (seen = [])); // new or retried run
      const { preview: _, ...kept } = progress; // the preview goes to live listeners only
      seen.push(kept);
      this.#emit(jobId, { type: 'progress', progress });
    });
    events.on('completed', ({ jobId, returnvalue }) => {
      const result = (typeof returnvalue === 'string' ? JSON.parse(returnvalue) : returnvalue) as JobResult;
      this.onCompleted?.(jobId, result);
      this.#emit(jobId, { type: 'done', result });
      this.#forget(jobId);
    });
    events.on('failed', ({ jobId, failedReason }) => {
      const error = parseReason(failedReason);
      this.onFailed?.(jobId, error);
      this.#emit(jobId, { type: 'failed', error });
      this.#forget(jobId);
    });
    // The event stream reconnects by itself; its errors must not crash the server.
    events.on('error', () => {});
  }

  static async open(url: string, opts: RedisQueueOptions): Promise<RedisQueue> {
    const name = opts.name ?? DEFAULT_QUEUE;
    const queue = new Queue<JobData, JobResult>(name, { connection: bounded(url, opts.commandMs ?? DEFAULT_REDIS_MS) });
    const events = new QueueEvents(name, { connection: blocking(url) });
    queue.on('error', () => {});
    try {
      await within(Promise.all([queue.waitUntilReady(), events.waitUntilReady()]), CONNECT_MS);
    } catch (e) {
      await Promise.allSettled([queue.close(), events.close()]);
      throw e;
    }
    return new RedisQueue(queue, events, opts.maxQueue, opts.keep ?? DEFAULT_KEEP);
  }

  /** A Redis call whose failure (timeout, connection) is a clean 503. */
  async #redis<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (e) {
      throw new ServeError('E_UNAVAILABLE', 'the job queue (Redis) is not answering', { cause: e });
    }
  }

  async submit(data: JobData, id: string = randomUUID()): Promise<string> {
    const c = await this.#redis(this.#queue.getJobCounts('wait', 'prioritized', 'delayed'));
    const waiting = Object.values(c).reduce((a, b) => a + b, 0);
    if (waiting >= this.maxQueue) throw new ServeError('E_QUEUE_FULL', `the queue is full (${this.maxQueue} jobs waiting)`);
    const keep = { age: Math.ceil(this.keep.ms / 1000), count: this.keep.count };
    // No stack traces in Redis (they name server paths): a failed job keeps its public reason only.
    await this.#redis(this.#queue.add(data.kind, data, { jobId: id, attempts: 1, removeOnComplete: keep, removeOnFail: keep, stackTraceLimit: 0 }));
    return id;
  }

  async health(): Promise<Record<string, string>> {
    await this.#redis(this.#queue.getJobCounts('wait'));
    return { redis: 'ok' };
  }

  async pendingLearns(): Promise<{ job: string; identity: string }[]> {
    const jobs = await this.#redis(this.#queue.getJobs(['wait', 'active', 'delayed', 'prioritized']));
    return jobs.flatMap((j) => (j?.data?.kind === 'learn' && j.id ? [{ job: j.id, identity: j.data.identityId }] : []));
  }

  async get(id: string): Promise<JobView | undefined> {
    // The state first: a job read before it finished and a state read after would show a failed
    // job without its reason (BullMQ writes the reason and moves the job in one script).
    const raw = await this.#redis(this.#queue.getJobState(id));
    if (raw === 'unknown') return undefined;
    const job = await this.#redis(this.#queue.getJob(id));
    if (!job) return undefined;
    const s = state(raw);
    const view: JobView = { id, kind: job.data.kind, state: s };
    const progress = progressOf(job.progress);
    if (progress) {
      const { preview: _, ...kept } = progress; // a view carries no preview
      view.progress = kept;
    }
    if (s === 'done') view.result = job.returnvalue;
    if (s === 'failed') view.error = parseReason(job.failedReason);
    return view;
  }

  #forget(id: string): void {
    setTimeout(() => this.#steps.delete(id), 60_000).unref();
  }

  subscribe(id: string, fn: (e: JobEvent) => void): () => void {
    for (const progress of this.#steps.get(id) ?? []) fn({ type: 'progress', progress });
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, (set = new Set()));
    set.add(fn);
    return () => {
      set.delete(fn);
      if (!set.size) this.#listeners.delete(id);
    };
  }

  #emit(id: string, e: JobEvent): void {
    for (const fn of this.#listeners.get(id) ?? []) fn(e);
  }

  /** The jobs stay in Redis: waiting ones wait for a worker, running ones finish on theirs. */
  async close(): Promise<void> {
    await Promise.allSettled([this.#events.close(), this.#queue.close()]);
  }
}

/** Rejects with E_UNAVAILABLE when `p` takes longer than `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  return deadline(p, ms, () => new ServeError('E_UNAVAILABLE', `Redis did not answer within ${ms} ms`));
}

/** Workers store errors as "CODE: public message" (BullMQ keeps only the message). */
function parseReason(reason: string | undefined): JobError {
  const m = /^(E_[A-Z_]+): ([\s\S]*)$/.exec(reason ?? '');
  return m ? { code: m[1]!, message: m[2]! } : publicError(undefined);
}

/** The Error a worker fails a job with: the public code and message only, and no stack (BullMQ stores err.stack). */
function jobFailure(err: JobError): Error {
  const e = new Error(`${err.code}: ${err.message}`);
  e.stack = e.message;
  return e;
}

/**
 * A finished learning job keeps its record in Redis (by count and age), not its photo: the image is
 * dropped from its data while the job is still this worker's. (A job whose worker dies keeps it,
 * so that another worker can run it again.)
 */
async function dropPayload(job: Job<JobData, JobResult>): Promise<void> {
  if (job.data.kind === 'learn') await job.updateData({ ...job.data, image: '' }).catch(() => {});
}

export interface WorkerOptions {
  redis: string;
  model: string;
  load?: LoadOptions;
  queue?: string;
  /** How long a job's lock lives without renewal: a dead worker's job is retried after about this. */
  lockMs?: number;
  /** How often workers look for stalled jobs. */
  stalledCheckMs?: number;
  log?: (line: string) => void;
  /** The folder of LoRA files jobs may name (the worker's --loras): checked against its model at start. */
  loras?: string;
}

export interface RunningWorker {
  engine: Engine;
  worker: Worker<JobData, JobResult>;
  /** Waits for the job in hand (force: abandon it; its lock expires and another worker retries it). */
  close(force?: boolean): Promise<void>;
}

export async function startWorker(o: WorkerOptions): Promise<RunningWorker> {
  const engine = await Engine.load(o.model, o.load ?? {});
  const log = o.log ?? (() => {});
  let loras: LoraLibrary | undefined;
  try {
    loras = o.loras === undefined ? undefined : LoraLibrary.open(o.loras, engine);
  } catch (e) {
    engine.dispose();
    throw e;
  }
  for (const u of loras?.unfit ?? []) log(`--loras: not offering ${u.file}: ${u.reason}`);
  const worker = new Worker<JobData, JobResult>(
    o.queue ?? DEFAULT_QUEUE,
    async (job: Job<JobData, JobResult>) => {
      log(`job ${job.id} ${job.data.kind} started`);
      // Progress updates are sent in order and all delivered before the job completes.
      let sent: Promise<unknown> = Promise.resolve();
      try {
        const result = await runJob(engine, job.data, (p) => {
          sent = sent.then(() => job.updateProgress(p)).catch(() => {});
        }, undefined, loras);
        await sent;
        await dropPayload(job);
        log(`job ${job.id} done`);
        return result;
      } catch (e) {
        const err = publicError(e);
        // The worker's log has the whole story (the library's message, its stack); Redis only the public part.
        const cause = (e as Error)?.cause;
        log(`job ${job.id} failed: ${err.code}: ${err.message}\n${(e as Error)?.stack ?? String(e)}${cause ? `\ncause: ${(cause as Error).message ?? String(cause)}` : ''}`);
        await dropPayload(job);
        throw jobFailure(err);
      }
    },
    {
      connection: blocking(o.redis), concurrency: 1, autorun: true,
      lockDuration: o.lockMs ?? 30_000, stalledInterval: o.stalledCheckMs ?? 30_000, maxStalledCount: 3,
    },
  );
  await worker.waitUntilReady();
  return {
    engine,
    worker,
    async close(force = false) {
      await worker.close(force);
      engine.dispose();
    },
  };
}
