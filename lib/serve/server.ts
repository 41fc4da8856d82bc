// `idforge serve`'s HTTP layer (Fastify): validates requests against api.ts's schemas, turns them
// into jobs on a JobQueue, streams progress as Server-Sent Events, serves PNGs and the identity
// store. It never opens a model: engines belong to the queue (in-process) or to workers.
// Routes are registered per area (health, jobs, identities here; the studio page in studio.ts),
// each a function of (app, ctx: context.ts's Ctx), so another area can be added the same way.
import { randomUUID, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { IdforgeError, deadline } from '../errors.js';
import type { EncodeOptions, IdEncoder } from '../dreamidentity/encoder.js';
import type { Identity } from '../identity/identity.js';
import type { Landmarks } from '../identity/face.js';
import { BUNDLED_TOKENIZER_DIR } from '../io/checkpoint.js';
import { duplicateJsonKey } from '../io/files.js';
import type { RawImage } from '../io/image.js';
import { ClipTokenizer } from '../text/tokenizer.js';
import {
  DEFAULT_LIMITS, DEFAULT_TIMEOUTS, SAMPLERS, err4, fromWire, generateBody, idParam, identityBody, imageParam, jobParam, responses, toWire,
  type GenerateJob, type JobResult, type JobState, type JobView, type Limits, type Timeouts,
} from './api.js';
import type { Ctx } from './context.js';
import { ServeError, clientErrorHandler, frameworkError, isServerFault, publicError, validationMessage } from './errors.js';
import { checkPrompt, type PromptModel } from './jobs.js';
import { checkLoras, type LoraLibrary } from './loras.js';
import type { JobEvent, JobQueue } from './queue.js';
import type { PngKind, ResultStore } from './results.js';
import type { IdentityStore } from './store.js';
import { studioRoutes } from './studio.js';
import { Uploads } from './upload.js';

export interface ServerOptions {
  queue: JobQueue;
  store: IdentityStore;
  /** The LoRA files requests may name (`loras: [{ name, scale }]`), listed at GET /loras; absent: none. */
  loras?: LoraLibrary;
  /** Whether the engines send a preview image with each step's progress (--preview-vae): the studio says so. */
  previews?: boolean;
  /** The DreamIdentity encoder for POST /identities (method 'dreamidentity'); absent: 501. */
  encoder?: IdEncoder;
  limits?: Partial<Limits>;
  timeouts?: Partial<Timeouts>;
  /** When set, every route but GET /health needs `Authorization: Bearer <token>`. */
  token?: string;
  /** Finished jobs on disk (`--results DIR`): their views and PNGs outlive the process. */
  results?: ResultStore;
  /**
   * What prompts are checked with at submission: the model's tokenizer and configs (default: SD
   * 1.x's bundled CLIP tokenizer, any text width — a Redis-mode server has no model).
   */
  prompts?: PromptModel;
  /** Fastify's logger (pino, JSON lines): level 'info' logs one line per request, 'error' (default) failures only. */
  log?: { level?: 'info' | 'error' | 'silent'; stream?: NodeJS.WritableStream };
}

/** A job found in the queue or in the results folder. */
interface Found {
  kind: string;
  state: JobState;
  view: Record<string, unknown>;
  png(kind: PngKind, i: number): Buffer | undefined;
}

/** The public view of a job: images and heatmaps as URLs, never their bytes. */
function publicView(v: JobView): Record<string, unknown> {
  const { result, ...rest } = v;
  const out: Record<string, unknown> = { ...rest };
  if (result?.kind === 'generate') {
    out.images = result.images.map((_, i) => `/jobs/${v.id}/images/${i}.png`);
    if (result.attention) out.attention = result.attention.map((a, i) => ({ token: a.token, url: `/jobs/${v.id}/attention/${i}.png` }));
    out.seed = result.seed;
    out.warnings = result.warnings;
  } else if (result?.kind === 'learn') out.identity = result.identityId;
  return out;
}

/** One log line per request, when it is answered (Fastify's default logs two, and the request object whole). */
class RequestLine extends LogController {
  override incomingRequest(): void {}
  override requestCompleted(error: Error | null | undefined, req: FastifyRequest, reply: FastifyReply): void {
    const line = { method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) };
    if (error) reply.log.error({ ...line, err: error }, 'request');
    else reply.log.info(line, 'request');
  }
}

function sameToken(given: string, want: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
}

export async function buildServer(o: ServerOptions): Promise<FastifyInstance> {
  const limits: Limits = { ...DEFAULT_LIMITS, ...o.limits };
  const timeouts: Timeouts = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
  const app = Fastify({
    logger: { level: o.log?.level ?? 'error', ...(o.log?.stream ? { stream: o.log.stream } : {}) },
    logController: new RequestLine(),
    bodyLimit: limits.bodyBytes,
    // Every socket is bounded: a whole request within requestMs, its headers within headersMs
    // (checked every second, not Node's 30 s), idle keep-alive connections closed after keepAliveMs.
    requestTimeout: timeouts.requestMs,
    keepAliveTimeout: timeouts.keepAliveMs,
    http: { headersTimeout: Math.min(timeouts.headersMs, timeouts.requestMs), connectionsCheckingInterval: Math.min(1000, timeouts.requestMs) },
    clientErrorHandler,
    // Requests that arrive while closing get our 503 (setupHttp), not Fastify's own body shape.
    return503OnClosing: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, verbose: true } },
  });
  const ctx: Ctx = {
    limits, timeouts, queue: o.queue, store: o.store, results: o.results, uploads: new Uploads(limits),
    prompts: o.prompts ?? { tokenizer: ClipTokenizer.fromDir(BUNDLED_TOKENIZER_DIR) },
    encode: o.encoder ? serially(o.encoder) : undefined, auth: !!o.token, learning: new Map(), streams: new Set(), loras: o.loras, previews: !!o.previews,
  };
  setupHttp(app, limits, o.token);
  await followJobs(app, ctx);
  healthRoutes(app, ctx);
  jobRoutes(app, ctx);
  loraRoutes(app, ctx);
  identityRoutes(app, ctx);
  await studioRoutes(app, ctx);
  return app;
}

/** JSON only (duplicate keys refused), one error shape, one log line per request, the bearer token. */
function setupHttp(app: FastifyInstance, limits: Limits, token: string | undefined): void {
  app.removeAllContentTypeParsers();
  const json = app.getDefaultJsonParser('error', 'error');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    const text = String(body);
    json(req, text, (err: Error | null, value: unknown) => {
      if (err) return done(new ServeError('E_ARGUMENT', 'the body is not valid JSON'), undefined);
      const dup = duplicateJsonKey(text);
      if (dup !== undefined) return done(new ServeError('E_ARGUMENT', `the key ${JSON.stringify(dup)} appears twice in one object`), undefined);
      done(null, value);
    });
  });

  app.setErrorHandler((err: FastifyError | ServeError, req, reply) => {
    const fe = err as FastifyError;
    let e: ServeError;
    if (err instanceof ServeError) e = err;
    else if (fe.validation) e = new ServeError('E_ARGUMENT', validationMessage(fe.validation, fe.validationContext ?? 'body'));
    else {
      const framework = frameworkError(fe.code, limits.bodyBytes);
      const p = publicError(err);
      e = framework ?? (fe.statusCode && fe.statusCode < 500 && p.code === 'E_INTERNAL' ? new ServeError('E_ARGUMENT', 'bad request') : new ServeError(p.code, p.message, { cause: err }));
    }
    if (e.status >= 500) req.log.error({ err: e.cause ?? err, code: e.code }, e.message);
    return reply.code(e.status).send({ error: { code: e.code, message: e.message } });
  });
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async () => {
    if (closing) throw new ServeError('E_UNAVAILABLE', 'the server is shutting down');
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: { code: 'E_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } }));

  if (token) {
    app.addHook('onRequest', async (req) => {
      if ((req.routeOptions.config as { public?: boolean } | undefined)?.public) return;
      const h = req.headers.authorization ?? '';
      if (!h.startsWith('Bearer ') || !sameToken(h.slice(7), token)) throw new ServeError('E_UNAUTHORIZED', 'a valid bearer token is required');
    });
  }
}

/**
 * What the server does when a job ends: a learned identity lands in the store (and its id's
 * reservation ends), a finished job goes to the results folder, a failure is logged (with its
 * stack when it is the server's fault). Learning jobs already queued keep their ids reserved.
 */
async function followJobs(app: FastifyInstance, ctx: Ctx): Promise<void> {
  const { queue, store } = ctx;
  for (const { job, identity } of await queue.pendingLearns()) {
    try {
      ctx.learning.set(job, store.reserve(identity));
    } catch {
      // already stored: the job's result will not replace it
    }
  }
  queue.onCompleted = (id, result) => {
    keepLearned(app, ctx, id, result);
    if (ctx.results) {
      try {
        const pngs = (list: string[] = []) => list.map((b) => Buffer.from(b, 'base64'));
        const [images, attention] = result.kind === 'generate' ? [pngs(result.images), pngs(result.attention?.map((a) => a.png))] : [[], []];
        ctx.results.save(id, publicView({ id, kind: result.kind, state: 'done', result }), images, attention);
      } catch (err) {
        app.log.error({ err, job: id }, 'could not write the job to --results');
      }
    }
  };
  queue.onFailed = (id, error, cause) => {
    ctx.learning.get(id)?.();
    ctx.learning.delete(id);
    if (isServerFault(error)) app.log.error({ err: cause, job: id, code: error.code }, 'job failed');
    else app.log.info({ job: id, code: error.code, cause: (cause as Error | undefined)?.message }, 'job failed');
  };
  app.addHook('preClose', async () => {
    if (queue.mode === 'redis') for (const end of [...ctx.streams]) end();
  });
}

/**
 * A finished learning job's identity goes to the store, once: only while this server still awaits
 * the job (an identity deleted later must not come back when its job is looked at again).
 */
function keepLearned(app: FastifyInstance, ctx: Ctx, job: string, result: JobResult | undefined): void {
  if (result?.kind !== 'learn' || !ctx.learning.has(job)) return;
  try {
    if (!ctx.store.has(result.identityId)) ctx.store.save(result.identityId, fromWire(result.identity));
  } catch (err) {
    app.log.error({ err, job }, 'could not store a learned identity');
  } finally {
    ctx.learning.get(job)?.();
    ctx.learning.delete(job);
  }
}

function healthRoutes(app: FastifyInstance, ctx: Ctx): void {
  const health = { type: 'object', properties: { ok: { type: 'boolean' }, mode: { type: 'string' }, redis: { type: 'string' }, samplers: { type: 'array', items: { type: 'string' } } } };
  const down = { type: 'object', properties: { ...health.properties, error: responses.error.properties.error } };
  app.get('/health', { config: { public: true }, schema: { response: { 200: health, 503: down } } }, async (req, reply) => {
    const { queue, timeouts } = ctx;
    try {
      const answer = await deadline(queue.health(), timeouts.healthMs, () => new Error(`no answer in ${timeouts.healthMs} ms`));
      return { ok: true, mode: queue.mode, ...answer, samplers: SAMPLERS };
    } catch (err) {
      req.log.warn({ err }, 'health check failed');
      const message = queue.mode === 'redis' ? 'the job queue (Redis) is not answering' : 'the server is shutting down';
      return reply.code(503).send({ ok: false, mode: queue.mode, ...(queue.mode === 'redis' ? { redis: 'unreachable' } : {}), error: { code: 'E_UNAVAILABLE', message } });
    }
  });
}

type GenerateBody = Partial<Omit<GenerateJob, 'kind' | 'identity' | 'identities' | 'loras'>> & {
  prompt: string; identity?: string; identities?: Record<string, string>; loras?: { name: string; scale?: number }[];
};

/** GET /loras: the LoRA files requests may name. */
function loraRoutes(app: FastifyInstance, ctx: Ctx): void {
  app.get('/loras', { schema: { response: { 200: responses.loraList, ...err4 } } }, async () => ({ loras: ctx.loras?.list() ?? [] }));
}

function jobRoutes(app: FastifyInstance, ctx: Ctx): void {
  const { queue, store, limits } = ctx;
  app.post<{ Body: GenerateBody }>('/generate', { schema: { body: generateBody(limits), response: { 202: responses.submitted, ...err4, 429: responses.error } } },
    async (req, reply) => {
      const b = req.body;
      const identity = b.identity !== undefined ? store.load(b.identity) : undefined;
      const identities = b.identities && Object.fromEntries(Object.entries(b.identities).map(([name, id]) => [name, toWire(store.load(id))]));
      const job: GenerateJob = {
        kind: 'generate', prompt: b.prompt, negativePrompt: b.negativePrompt ?? '', width: b.width ?? 512, height: b.height ?? 512,
        steps: b.steps ?? 50, guidanceScale: b.guidanceScale ?? 7.5, sampler: b.sampler ?? 'ddim',
        // A retried job must repeat its image, so the seed is fixed here when the request has none.
        seed: b.seed ?? Math.floor(Math.random() * 2 ** 31),
        ...(identity ? { identity: toWire(identity) } : {}),
        ...(identities ? { identities } : {}),
        ...(b.identityScale !== undefined ? { identityScale: b.identityScale } : {}),
        ...(b.attention ? { attention: true } : {}),
        ...(b.regions !== undefined ? { regions: b.regions } : {}),
        ...(b.loras?.length ? { loras: checkLoras(ctx.loras, b.loras) } : {}),
      };
      try {
        checkPrompt(ctx.prompts, job);
      } catch (e) {
        // The expansion's and the regions' messages restate the request (the prompt, the identity's
        // name, a box): fit for the client.
        if (e instanceof IdforgeError && (e.code === 'E_IDENTITY' || e.code === 'E_ARGUMENT')) throw new ServeError(e.code, e.message);
        throw e;
      }
      const id = await queue.submit(job);
      return reply.code(202).send({ id, state: 'queued' });
    },
  );

  app.get<{ Params: { id: string } }>('/jobs/:id', { schema: { params: jobParam, response: { 200: responses.jobView, ...err4 } } },
    async (req) => (await find(app, ctx, req.params.id)).view);

  // A finished generate job's pictures and, when it asked for them, its heatmaps.
  const pngRoute = (kind: PngKind, route: string, field: 'images' | 'attention', what: string) =>
    app.get<{ Params: { id: string; index: string } }>(route, { schema: { params: imageParam, response: err4 } }, async (req, reply) => {
      const f = await find(app, ctx, req.params.id);
      if (f.state !== 'done' || f.kind !== 'generate') throw new ServeError('E_NOT_FOUND', `job ${req.params.id} has no ${what}s (state ${f.state})`);
      const png = f.png(kind, Number(req.params.index));
      if (!png) throw new ServeError('E_NOT_FOUND', `job ${req.params.id} has ${(f.view[field] as unknown[] | undefined)?.length ?? 0} ${what}(s)`);
      return reply.type('image/png').send(png);
    });
  pngRoute('image', '/jobs/:id/images/:index.png', 'images', 'image');
  pngRoute('attention', '/jobs/:id/attention/:index.png', 'attention', 'heatmap');

  app.get<{ Params: { id: string } }>('/jobs/:id/events', { schema: { params: jobParam, response: err4 } },
    async (req, reply) => sse(reply, ctx, req.params.id, await find(app, ctx, req.params.id)));
}

/** A job by id: in the queue, else in the results folder; E_NOT_FOUND when neither has it. */
async function find(app: FastifyInstance, ctx: Ctx, id: string): Promise<Found> {
  const v = await ctx.queue.get(id);
  if (v) {
    // A learned identity is stored when its job is next looked at, should this server have missed the event.
    if (v.state === 'done') keepLearned(app, ctx, id, v.result);
    const r = v.result?.kind === 'generate' ? v.result : undefined;
    const png = (kind: PngKind, i: number) => {
      const b64 = kind === 'image' ? r?.images[i] : r?.attention?.[i]?.png;
      return b64 === undefined ? undefined : Buffer.from(b64, 'base64');
    };
    return { kind: v.kind, state: v.state, view: publicView(v), png };
  }
  const saved = ctx.results?.view(id);
  if (saved) return { kind: String(saved.kind), state: saved.state as JobState, view: saved, png: (kind, i) => ctx.results!.image(id, i, kind) };
  throw new ServeError('E_NOT_FOUND', `no job ${id}`);
}

type UploadBody = { image: string; method?: 'dreamidentity' | 'sefi-ide'; name?: string; id?: string; landmarks?: number[][]; steps?: number; seed?: number };

function identityRoutes(app: FastifyInstance, ctx: Ctx): void {
  const { store, limits } = ctx;
  const statuses = { 201: responses.identityInfo, 202: responses.submitted, ...err4, 409: responses.error, 413: responses.error, 415: responses.error, 422: responses.error, 501: responses.error };
  app.post<{ Body: UploadBody }>('/identities', { schema: { body: identityBody(limits), response: statuses } }, async (req, reply) => {
    const b = req.body;
    const method = b.method ?? 'dreamidentity';
    if (method === 'dreamidentity' && !ctx.encode) throw new ServeError('E_NO_ENCODER', 'this server has no ID encoder (start it with --encoder DIR)');
    const id = b.id ?? store.newId();
    // The id is taken from here on: a second upload of it gets 409 while this one decodes, encodes or learns.
    const release = store.reserve(id);
    let job: string | undefined;
    try {
      const { image, scale } = await ctx.uploads.decode(b.image);
      const name = b.name !== undefined ? { name: b.name } : {};
      if (method === 'dreamidentity') {
        // Landmarks are in the upload's pixels (centre of pixel i at i); the image may have been scaled.
        const landmarks = b.landmarks?.map(([x, y]) => [(x! + 0.5) * scale - 0.5, (y! + 0.5) * scale - 0.5]) as Landmarks | undefined;
        const identity = await ctx.encode!(image, { ...name, ...(landmarks ? { landmarks } : {}) });
        return reply.code(201).send(store.save(id, identity, { textDim: identity.dim }));
      }
      const png = await ctx.uploads.png(image);
      job = randomUUID();
      ctx.learning.set(job, release);
      await ctx.queue.submit({ kind: 'learn', identityId: id, image: png.toString('base64'), steps: b.steps ?? 1000, seed: b.seed ?? 0, ...name }, job);
      return reply.code(202).send({ id: job, state: 'queued', identity: id });
    } catch (e) {
      if (job) ctx.learning.delete(job);
      throw e;
    } finally {
      // A learning job releases its id when it ends (followJobs); everything else now.
      if (!job || !ctx.learning.has(job)) release();
    }
  });

  app.get('/identities', { schema: { response: { 200: responses.identityList, ...err4 } } }, async () => ({ identities: store.list() }));
  app.get<{ Params: { id: string } }>('/identities/:id', { schema: { params: idParam, response: { 200: responses.identityInfo, ...err4 } } },
    async (req) => store.info(req.params.id));
  app.get<{ Params: { id: string } }>('/identities/:id/file', { schema: { params: idParam, response: err4 } }, async (req, reply) => {
    store.info(req.params.id);
    return reply.type('application/octet-stream').send(await readFile(store.file(req.params.id)));
  });
  app.delete<{ Params: { id: string } }>('/identities/:id', { schema: { params: idParam, response: err4 } }, async (req, reply) => {
    store.remove(req.params.id);
    return reply.code(204).send();
  });
}

/** One encoder runs one image at a time (its compiled program has one arena). */
function serially(encoder: IdEncoder): (image: RawImage, opts: EncodeOptions) => Promise<Identity> {
  let last: Promise<unknown> = Promise.resolve();
  return (image, opts) => {
    const run = last.then(() => encoder.encode(image, opts));
    last = run.catch(() => {});
    return run;
  };
}

/**
 * Server-Sent Events for one job: `progress` per step, then `done` (the public job view) or
 * `failed`. Subscribes before reading the current state, so no step between the two is lost.
 */
function sse(reply: FastifyReply, ctx: Ctx, id: string, first: Found): void {
  const { queue } = ctx;
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  let last = 0;
  let open = true;
  const send = (event: string, data: unknown) => open && res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  const end = () => {
    if (!open) return;
    open = false;
    unsubscribe();
    clearInterval(ping);
    ctx.streams.delete(end);
    res.end();
  };
  const on = (e: JobEvent) => {
    if (e.type === 'progress') {
      if (e.progress.step <= last) return;
      last = e.progress.step;
      send('progress', e.progress);
    } else if (e.type === 'done') {
      send('done', publicView({ id, kind: e.result.kind, state: 'done', result: e.result }));
      end();
    } else {
      send('failed', { id, error: e.error });
      end();
    }
  };
  const unsubscribe = queue.subscribe(id, on);
  const ping = setInterval(() => open && res.write(': ping\n\n'), 15_000);
  ctx.streams.add(end);
  res.on('close', end);
  void queue.get(id).then(
    (v) => {
      if (!v) {
        // Only in the results folder (or pruned since): its view is the whole story.
        if (first.state === 'done') {
          send('done', first.view);
          end();
        } else if (first.state === 'failed') {
          send('failed', { id, error: first.view.error });
          end();
        }
        return;
      }
      if (v.progress) on({ type: 'progress', progress: v.progress });
      if (v.state === 'done' && v.result) on({ type: 'done', result: v.result });
      else if (v.state === 'failed') on({ type: 'failed', error: v.error ?? publicError(undefined) });
    },
    () => end(),
  );
}
