// Scale-out over BullMQ on Redis: the server's RedisQueue only enqueues and listens; workers
// (startWorker, one engine each) take jobs, report per-step progress with job.updateProgress, and
// return the result. A worker that dies mid-job stops renewing the job's lock; BullMQ's stalled-job
// check moves the job back to the wait list and another worker runs it again from its payload
// (the seed is in the payload, so the image is the same).
import { randomUUID } from 'node:crypto';
import { Queue, QueueEvents, Worker, type Job } from 'bullmq';
import { Engine, type LoadOptions } from '../engine.js';
import type { JobData, JobResult, JobState, JobView, Progress } from './api.js';
import { QueueFullError, jobError, type JobEvent, type JobQueue } from './queue.js';
import { runJob } from './jobs.js';

export const DEFAULT_QUEUE = 'idforge';

const connection = (url: string) => ({ url, maxRetriesPerRequest: null });

function state(s: string): JobState {
  if (s === 'active') return 'running';
  if (s === 'completed') return 'done';
  if (s === 'failed') return 'failed';
  return 'queued';
}

const isProgress = (p: unknown): p is Progress =>
  typeof p === 'object' && p !== null && typeof (p as Progress).step === 'number' && typeof (p as Progress).steps === 'number';

export class RedisQueue implements JobQueue {
  readonly mode = 'redis';
  onCompleted?: (id: string, result: JobResult) => void;
  readonly #queue: Queue<JobData, JobResult>;
  readonly #events: QueueEvents;
  readonly #listeners = new Map<string, Set<(e: JobEvent) => void>>();
  /** Every step this server has seen per running job, so that a late SSE client still gets each one. */
  readonly #steps = new Map<string, Progress[]>();

  private constructor(queue: Queue<JobData, JobResult>, events: QueueEvents, readonly maxQueue: number) {
    this.#queue = queue;
    this.#events = events;
    events.on('progress', ({ jobId, data }) => {
      if (!isProgress(data)) return;
      const progress = { step: data.step, steps: data.steps };
      let seen = this.#steps.get(jobId);
      if (!seen || progress.step <= (seen.at(-1)?.step ?? 0)) this.#steps.set(jobId, (seen = [])); // new or retried run
      seen.push(progress);
      this.#emit(jobId, { type: 'progress', progress });
    });
    events.on('completed', ({ jobId, returnvalue }) => {
      const result = (typeof returnvalue === 'string' ? JSON.parse(returnvalue) : returnvalue) as JobResult;
      this.onCompleted?.(jobId, result);
      this.#emit(jobId, { type: 'done', result });
      this.#forget(jobId);
    });
    events.on('failed', ({ jobId, failedReason }) => {
      void this.#queue.getJob(jobId).then((job) => {
        const error = parseReason(failedReason ?? job?.failedReason);
        this.#emit(jobId, { type: 'failed', error });
        this.#forget(jobId);
      });
    });
  }

  static async open(url: string, opts: { name?: string; maxQueue: number }): Promise<RedisQueue> {
    const name = opts.name ?? DEFAULT_QUEUE;
    const queue = new Queue<JobData, JobResult>(name, { connection: connection(url) });
    const events = new QueueEvents(name, { connection: connection(url) });
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
    return new RedisQueue(queue, events, opts.maxQueue);
  }

  async submit(data: JobData): Promise<string> {
    const c = await this.#queue.getJobCounts('wait', 'prioritized', 'delayed');
    const waiting = Object.values(c).reduce((a, b) => a + b, 0);
    if (waiting >= this.maxQueue) throw new QueueFullError(`the queue is full (${this.maxQueue} jobs waiting)`);
    const id = randomUUID();
    await this.#queue.add(data.kind, data, {
      jobId: id, attempts: 1, removeOnComplete: { age: 24 * 3600, count: 10_000 }, removeOnFail: { age: 24 * 3600 },
    });
    return id;
  }

  async get(id: string): Promise<JobView | undefined> {
    const job = await this.#queue.getJob(id);
    if (!job) return undefined;
    const s = state(await job.getState());
    const view: JobView = { id, kind: job.data.kind, state: s };
    if (isProgress(job.progress)) view.progress = { step: job.progress.step, steps: job.progress.steps };
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
    await this.#events.close();
    await this.#queue.close();
  }
}

/** Workers store errors as "CODE: message" (BullMQ keeps only the message). */
function parseReason(reason: string | undefined): { code: string; message: string } {
  const m = /^(E_[A-Z_]+): ([\s\S]*)$/.exec(reason ?? '');
  return m ? { code: m[1]!, message: m[2]! } : { code: 'E_INTERNAL', message: reason ?? 'the job failed' };
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
  const worker = new Worker<JobData, JobResult>(
    o.queue ?? DEFAULT_QUEUE,
    async (job: Job<JobData, JobResult>) => {
      log(`job ${job.id} ${job.data.kind} started`);
      // Progress updates are sent in order and all delivered before the job completes.
      let sent: Promise<unknown> = Promise.resolve();
      try {
        const result = await runJob(engine, job.data, (p) => {
          sent = sent.then(() => job.updateProgress(p)).catch(() => {});
        });
        await sent;
        log(`job ${job.id} done`);
        return result;
      } catch (e) {
        const err = jobError(e);
        log(`job ${job.id} failed: ${err.code}: ${err.message}`);
        throw new Error(`${err.code}: ${err.message}`);
      }
    },
    {
      connection: connection(o.redis), concurrency: 1, autorun: true,
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
