// Where submitted jobs go. LocalQueue runs them in this process on a pool of engines (one job per
// engine at a time); RedisQueue (redis.ts) hands them to BullMQ workers. The server sees only this
// interface.
import { randomUUID } from 'node:crypto';
import type { Engine } from '../engine.js';
import { DEFAULT_LIMITS, type JobData, type JobError, type JobResult, type JobView, type Progress } from './api.js';
import { ServeError, publicError } from './errors.js';
import { runJob } from './jobs.js';
import type { LoraLibrary } from './loras.js';
import type { KeepPolicy } from './results.js';

export type JobEvent =
  | { type: 'progress'; progress: Progress }
  | { type: 'done'; result: JobResult }
  | { type: 'failed'; error: JobError };

export interface JobQueue {
  readonly mode: 'local' | 'redis';
  /** Queues a job under `id` (default: a new UUID); E_QUEUE_FULL when maxQueue jobs wait, E_UNAVAILABLE when closing or unreachable. */
  submit(data: JobData, id?: string): Promise<string>;
  get(id: string): Promise<JobView | undefined>;
  /** Events of one job: the progress so far at once (every step seen), then live; returns the unsubscribe function. */
  subscribe(id: string, fn: (e: JobEvent) => void): () => void;
  /** Called once per finished job (the server stores learned identities and results from it). */
  onCompleted?: (id: string, result: JobResult) => void;
  /** Called once per failed job: the public error, and the cause for the log when this process saw it. */
  onFailed?: (id: string, error: JobError, cause?: unknown) => void;
  /** Throws (E_UNAVAILABLE) when the queue cannot take jobs: what /health reports. */
  health(): Promise<Record<string, string>>;
  /** Learning jobs not yet finished: their identity ids stay reserved (e.g. across a server restart). */
  pendingLearns(): Promise<{ job: string; identity: string }[]>;
  close(graceMs?: number): Promise<void>;
}

export const DEFAULT_KEEP: KeepPolicy = { count: DEFAULT_LIMITS.keepJobs, ms: DEFAULT_LIMITS.keepSeconds * 1000 };

interface LocalJob {
  view: JobView;
  steps: Progress[];
  /** The payload, dropped when the job ends (an upload can be megabytes). */
  data: JobData | undefined;
  listeners: Set<(e: JobEvent) => void>;
  abort: AbortController;
  finished: number;
}

/** In-process jobs on a pool of engines. Finished jobs are kept by count and age (results live in memory). */
export class LocalQueue implements JobQueue {
  readonly mode = 'local';
  onCompleted?: (id: string, result: JobResult) => void;
  onFailed?: (id: string, error: JobError, cause?: unknown) => void;
  readonly #jobs = new Map<string, LocalJob>();
  readonly #waiting: string[] = [];
  /** Finished job ids, in the order they finished. */
  readonly #finished: string[] = [];
  readonly #free: Engine[];
  readonly #running = new Set<Promise<void>>();
  readonly maxQueue: number;
  readonly keep: KeepPolicy;
  #closing = false;

  /** The LoRA files jobs may name (--loras). */
  readonly loras: LoraLibrary | undefined;

  constructor(engines: Engine[], opts: { maxQueue?: number; keep?: KeepPolicy; loras?: LoraLibrary } = {}) {
    this.#free = [...engines];
    this.loras = opts.loras;
    this.maxQueue = opts.maxQueue ?? DEFAULT_LIMITS.maxQueue;
    this.keep = opts.keep ?? DEFAULT_KEEP;
  }

  async submit(data: JobData, id: string = randomUUID()): Promise<string> {
    if (this.#closing) throw new ServeError('E_UNAVAILABLE', 'the server is shutting down');
    if (this.#waiting.length >= this.maxQueue) throw new ServeError('E_QUEUE_FULL', `the queue is full (${this.maxQueue} jobs waiting)`);
    this.#prune();
    this.#jobs.set(id, { view: { id, kind: data.kind, state: 'queued' }, steps: [], data, listeners: new Set(), abort: new AbortController(), finished: 0 });
    this.#waiting.push(id);
    this.#pump();
    return id;
  }

  async get(id: string): Promise<JobView | undefined> {
    this.#prune();
    return this.#jobs.get(id)?.view;
  }

  subscribe(id: string, fn: (e: JobEvent) => void): () => void {
    const j = this.#jobs.get(id);
    for (const progress of j?.steps ?? []) fn({ type: 'progress', progress });
    j?.listeners.add(fn);
    return () => j?.listeners.delete(fn);
  }

  async health(): Promise<Record<string, string>> {
    if (this.#closing) throw new ServeError('E_UNAVAILABLE', 'the server is shutting down');
    return {};
  }

  async pendingLearns(): Promise<{ job: string; identity: string }[]> {
    return [...this.#jobs.values()].flatMap((j) => (j.data?.kind === 'learn' ? [{ job: j.view.id, identity: j.data.identityId }] : []));
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
      const result = await runJob(engine, j.data!, (progress) => {
        // A preview goes to the live listeners only: the view and the step history stay small.
        const { preview: _, ...kept } = progress;
        j.view.progress = kept;
        j.steps.push(kept);
        this.#emit(j, { type: 'progress', progress });
      }, j.abort.signal, this.loras);
      this.#finish(j);
      j.view.state = 'done';
      j.view.result = result;
      this.onCompleted?.(j.view.id, result);
      this.#emit(j, { type: 'done', result });
    } catch (e) {
      this.#fail(j, publicError(e), e);
    } finally {
      j.listeners.clear();
    }
  }

  #finish(j: LocalJob): void {
    j.data = undefined;
    j.finished = Date.now();
    this.#finished.push(j.view.id);
    this.#prune();
  }

  #fail(j: LocalJob, error: JobError, cause?: unknown): void {
    this.#finish(j);
    j.view.state = 'failed';
    j.view.error = error;
    this.onFailed?.(j.view.id, error, cause);
    this.#emit(j, { type: 'failed', error });
  }

  /** Drops finished jobs past the count or older than the age (the oldest first). */
  #prune(): void {
    const old = Date.now() - this.keep.ms;
    while (this.#finished.length) {
      const j = this.#jobs.get(this.#finished[0]!);
      if (j && this.#finished.length <= this.keep.count && j.finished >= old) break;
      this.#jobs.delete(this.#finished.shift()!);
    }
  }

  /**
   * Stops taking jobs, lets running ones finish (aborting them after graceMs), and fails the
   * waiting ones: an in-process queue has nowhere to keep them (the Redis mode keeps them).
   */
  async close(graceMs = 30_000): Promise<void> {
    this.#closing = true;
    for (const id of this.#waiting.splice(0)) this.#fail(this.#jobs.get(id)!, { code: 'E_ABORTED', message: 'the server shut down before the job started' });
    const timer = setTimeout(() => {
      for (const j of this.#jobs.values()) if (j.view.state === 'running') j.abort.abort(new Error('shutdown'));
    }, graceMs);
    await Promise.allSettled([...this.#running]);
    clearTimeout(timer);
  }
}
