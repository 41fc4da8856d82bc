// Where submitted jobs go. LocalQueue runs them in this process on a pool of engines (one job per
// engine at a time); RedisQueue (redis.ts) hands them to BullMQ workers. The server sees only this
// interface.
import { randomUUID } from 'node:crypto';
import type { Engine } from '../engine.js';
import { IdforgeError } from '../errors.js';
import type { JobData, JobError, JobResult, JobView, Progress } from './api.js';
import { runJob } from './jobs.js';

export type JobEvent =
  | { type: 'progress'; progress: Progress }
  | { type: 'done'; result: JobResult }
  | { type: 'failed'; error: JobError };

export interface JobQueue {
  readonly mode: 'local' | 'redis';
  /** Queues a job; E_QUEUE_FULL (QueueFullError) when maxQueue jobs are waiting. */
  submit(data: JobData): Promise<string>;
  get(id: string): Promise<JobView | undefined>;
  /** Events of one job: the progress so far at once (every step seen), then live; returns the unsubscribe function. */
  subscribe(id: string, fn: (e: JobEvent) => void): () => void;
  /** Called once per finished job (the server stores learned identities from it). */
  onCompleted?: (id: string, result: JobResult) => void;
  close(graceMs?: number): Promise<void>;
}

export class QueueFullError extends Error {
  readonly code = 'E_QUEUE_FULL';
}

export function jobError(e: unknown): JobError {
  const err = e as { code?: unknown; message?: unknown };
  return { code: typeof err?.code === 'string' ? err.code : 'E_INTERNAL', message: typeof err?.message === 'string' ? err.message : String(e) };
}

interface LocalJob {
  view: JobView;
  steps: Progress[];
  data: JobData;
  listeners: Set<(e: JobEvent) => void>;
  abort: AbortController;
  finished: number;
}

/** In-process jobs on a pool of engines. Finished jobs are kept for `keepMs` (results live in memory). */
export class LocalQueue implements JobQueue {
  readonly mode = 'local';
  onCompleted?: (id: string, result: JobResult) => void;
  readonly #jobs = new Map<string, LocalJob>();
  readonly #waiting: string[] = [];
  readonly #free: Engine[];
  readonly #running = new Set<Promise<void>>();
  #closing = false;

  constructor(engines: Engine[], readonly maxQueue: number, readonly keepMs = 3600_000) {
    this.#free = [...engines];
  }

  async submit(data: JobData): Promise<string> {
    if (this.#closing) throw new IdforgeError('E_ABORTED', 'the server is shutting down');
    if (this.#waiting.length >= this.maxQueue) throw new QueueFullError(`the queue is full (${this.maxQueue} jobs waiting)`);
    this.#prune();
    const id = randomUUID();
    this.#jobs.set(id, { view: { id, kind: data.kind, state: 'queued' }, steps: [], data, listeners: new Set(), abort: new AbortController(), finished: 0 });
    this.#waiting.push(id);
    this.#pump();
    return id;
  }

  async get(id: string): Promise<JobView | undefined> {
    return this.#jobs.get(id)?.view;
  }

  subscribe(id: string, fn: (e: JobEvent) => void): () => void {
    const j = this.#jobs.get(id);
    for (const progress of j?.steps ?? []) fn({ type: 'progress', progress });
    j?.listeners.add(fn);
    return () => j?.listeners.delete(fn);
  }

  #emit(j: LocalJob, e: JobEvent): void {
    for (const fn of j.listeners) fn(e);
  }

  #pump(): void {
    while (this.#free.length && this.#waiting.length && !this.#closing) {
      const engine = this.#free.pop()!;
      const j = this.#jobs.get(this.#waiting.shift()!)!;
      const run = this.#run(engine, j).finally(() => {
        this.#running.delete(run);
        this.#free.push(engine);
        this.#pump();
      });
      this.#running.add(run);
    }
  }

  async #run(engine: Engine, j: LocalJob): Promise<void> {
    j.view.state = 'running';
    try {
      const result = await runJob(engine, j.data, (progress) => {
        j.view.progress = progress;
        j.steps.push(progress);
        this.#emit(j, { type: 'progress', progress });
      }, j.abort.signal);
      j.view.state = 'done';
      j.view.result = result;
      this.onCompleted?.(j.view.id, result);
      this.#emit(j, { type: 'done', result });
    } catch (e) {
      j.view.state = 'failed';
      j.view.error = jobError(e);
      this.#emit(j, { type: 'failed', error: j.view.error });
    } finally {
      j.finished = Date.now();
      j.listeners.clear();
    }
  }

  #prune(): void {
    const old = Date.now() - this.keepMs;
    for (const [id, j] of this.#jobs) if (j.finished && j.finished < old) this.#jobs.delete(id);
  }

  /**
   * Stops taking jobs, lets running ones finish (aborting them after graceMs), and fails the
   * waiting ones: an in-process queue has nowhere to keep them (the Redis mode keeps them).
   */
  async close(graceMs = 30_000): Promise<void> {
    this.#closing = true;
    for (const id of this.#waiting.splice(0)) {
      const j = this.#jobs.get(id)!;
      j.view.state = 'failed';
      j.view.error = { code: 'E_ABORTED', message: 'the server shut down before the job started' };
      j.finished = Date.now();
      this.#emit(j, { type: 'failed', error: j.view.error });
    }
    const timer = setTimeout(() => {
      for (const j of this.#jobs.values()) if (j.view.state === 'running') j.abort.abort(new Error('shutdown'));
    }, graceMs);
    await Promise.allSettled([...this.#running]);
    clearTimeout(timer);
  }
}
