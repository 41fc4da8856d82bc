// `idforge serve`'s HTTP layer (Fastify): validates requests against api.ts's schemas, turns them
// into jobs on a JobQueue, streams progress as Server-Sent Events, serves PNGs and the identity
// store. It never opens a model: engines belong to the queue (in-process) or to workers.
import { timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { IdforgeError } from '../errors.js';
import type { EncodeOptions, IdEncoder } from '../dreamidentity/encoder.js';
import type { Identity } from '../identity/identity.js';
import type { Landmarks } from '../identity/face.js';
import {
  DEFAULT_LIMITS, SAMPLERS, fromWire, generateBody, idParam, identityBody, imageParam, jobParam, responses, toWire,
  type GenerateJob, type JobResult, type JobView, type Limits,
} from './api.js';
import type { JobEvent, JobQueue } from './queue.js';
import type { IdentityStore } from './store.js';

export interface ServerOptions {
  queue: JobQueue;
  store: IdentityStore;
  /** The DreamIdentity encoder for POST /identities (method 'dreamidentity'); absent: 501. */
  encoder?: IdEncoder;
  limits?: Partial<Limits>;
  /** When set, every route but GET /health needs `Authorization: Bearer <token>`. */
  token?: string;
  logger?: boolean;
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

const STATUS: Record<string, number> = {
  E_ARGUMENT: 400, E_SHAPE: 400, E_IDENTITY: 400, E_NO_FACE: 422, E_NUMERIC: 422, E_MODEL_FORMAT: 400, E_NOT_FOUND: 404, E_QUEUE_FULL: 429, E_ABORTED: 503,
};

/** The public view of a job: images as URLs, never their bytes. */
function publicView(v: JobView): Record<string, unknown> {
  const { result, ...rest } = v;
  const out: Record<string, unknown> = { ...rest };
  if (result?.kind === 'generate') {
    out.images = result.images.map((_, i) => `/jobs/${v.id}/images/${i}.png`);
    out.seed = result.seed;
    out.warnings = result.warnings;
  } else if (result?.kind === 'learn') out.identity = result.identityId;
  return out;
}

function sameToken(given: string, want: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
}

export async function buildServer(o: ServerOptions): Promise<FastifyInstance> {
  const limits: Limits = { ...DEFAULT_LIMITS, ...o.limits };
  const { queue, store } = o;
  const app = Fastify({ logger: o.logger ?? false, bodyLimit: limits.bodyBytes, ajv: { customOptions: { removeAdditional: false, coerceTypes: false } } });

  // A learned identity lands in the store as soon as its job completes (and, should this server have
  // missed the event, when the job is next looked at).
  const keepLearned = (result: JobResult | undefined): void => {
    if (result?.kind === 'learn' && !store.has(result.identityId)) store.save(result.identityId, fromWire(result.identity));
  };
  queue.onCompleted = (_id, result) => keepLearned(result);
  const encode = o.encoder ? serially(o.encoder) : undefined;

  app.setErrorHandler((err: FastifyError | HttpError | IdforgeError, _req, reply) => {
    if (err instanceof HttpError) return reply.code(err.status).send({ error: { code: err.code, message: err.message } });
    const fe = err as FastifyError;
    if (fe.validation) return reply.code(400).send({ error: { code: 'E_ARGUMENT', message: fe.message } });
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && STATUS[code]) return reply.code(STATUS[code]).send({ error: { code, message: err.message } });
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500)
      return reply.code(fe.statusCode).send({ error: { code: fe.code ?? 'E_ARGUMENT', message: fe.message } });
    app.log.error(err);
    return reply.code(500).send({ error: { code: typeof code === 'string' ? code : 'E_INTERNAL', message: err.message } });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: { code: 'E_NOT_FOUND', message: `no route ${req.method} ${req.url}` } }));

  if (o.token) {
    const token = o.token;
    app.addHook('onRequest', async (req) => {
      if (req.url === '/health') return;
      const h = req.headers.authorization ?? '';
      if (!h.startsWith('Bearer ') || !sameToken(h.slice(7), token)) throw new HttpError(401, 'E_UNAUTHORIZED', 'a valid bearer token is required');
    });
  }

  const err4 = { 400: responses.error, 401: responses.error, 404: responses.error };

  app.get('/health', { schema: { response: { 200: { type: 'object', properties: { ok: { type: 'boolean' }, mode: { type: 'string' }, samplers: { type: 'array', items: { type: 'string' } } } } } } },
    async () => ({ ok: true, mode: queue.mode, samplers: SAMPLERS }));

  app.post<{ Body: Omit<GenerateJob, 'kind' | 'negativePrompt' | 'width' | 'height' | 'steps' | 'guidanceScale' | 'seed' | 'sampler' | 'identity'> & Partial<GenerateJob> & { identity?: string } }>(
    '/generate',
    { schema: { body: generateBody(limits), response: { 202: responses.submitted, ...err4, 429: responses.error } } },
    async (req, reply) => {
      const b = req.body;
      const job: GenerateJob = {
        kind: 'generate', prompt: b.prompt, negativePrompt: b.negativePrompt ?? '', width: b.width ?? 512, height: b.height ?? 512,
        steps: b.steps ?? 50, guidanceScale: b.guidanceScale ?? 7.5, sampler: b.sampler ?? 'ddim',
        // A retried job must repeat its image, so the seed is fixed here when the request has none.
        seed: b.seed ?? Math.floor(Math.random() * 2 ** 31),
        ...(b.identity !== undefined ? { identity: toWire(store.load(b.identity)) } : {}),
        ...(b.identityScale !== undefined ? { identityScale: b.identityScale } : {}),
      };
      const id = await queue.submit(job);
      return reply.code(202).send({ id, state: 'queued' });
    },
  );

  const view = async (id: string): Promise<JobView> => {
    const v = await queue.get(id);
    if (!v) throw new HttpError(404, 'E_NOT_FOUND', `no job ${id}`);
    keepLearned(v.result);
    return v;
  };

  app.get<{ Params: { id: string } }>('/jobs/:id', { schema: { params: jobParam, response: { 200: responses.jobView, ...err4 } } },
    async (req) => publicView(await view(req.params.id)));

  app.get<{ Params: { id: string; index: string } }>('/jobs/:id/images/:index.png', { schema: { params: imageParam, response: err4 } },
    async (req, reply) => {
      const v = await view(req.params.id);
      if (v.state !== 'done' || v.result?.kind !== 'generate') throw new HttpError(404, 'E_NOT_FOUND', `job ${v.id} has no images (state ${v.state})`);
      const img = v.result.images[Number(req.params.index)];
      if (img === undefined) throw new HttpError(404, 'E_NOT_FOUND', `job ${v.id} has ${v.result.images.length} image(s)`);
      return reply.type('image/png').send(Buffer.from(img, 'base64'));
    });

  app.get<{ Params: { id: string } }>('/jobs/:id/events', { schema: { params: jobParam, response: err4 } },
    async (req, reply) => sse(reply, queue, req.params.id, await view(req.params.id)));

  app.post<{ Body: { image: string; method?: 'dreamidentity' | 'sefi-ide'; name?: string; id?: string; landmarks?: number[][]; steps?: number; seed?: number } }>(
    '/identities',
    { schema: { body: identityBody(limits), response: { 201: responses.identityInfo, 202: responses.submitted, ...err4, 409: responses.error, 413: responses.error, 501: responses.error } } },
    async (req, reply) => {
      const b = req.body;
      const image = Buffer.from(b.image, 'base64');
      await checkUpload(image, limits.maxUploadSide);
      const id = b.id ?? store.newId();
      if (store.has(id)) throw new HttpError(409, 'E_EXISTS', `identity ${id} exists`);
      if ((b.method ?? 'dreamidentity') === 'dreamidentity') {
        if (!o.encoder) throw new HttpError(501, 'E_NO_ENCODER', 'this server has no ID encoder (start it with --encoder DIR)');
        const identity = await encode!(image, { ...(b.name !== undefined ? { name: b.name } : {}), ...(b.landmarks ? { landmarks: b.landmarks as Landmarks } : {}) });
        return reply.code(201).send(store.save(id, identity, { textDim: identity.dim }));
      }
      const job = await queue.submit({
        kind: 'learn', identityId: id, image: b.image, steps: b.steps ?? 1000, seed: b.seed ?? 0, ...(b.name !== undefined ? { name: b.name } : {}),
      });
      return reply.code(202).send({ id: job, state: 'queued', identity: id });
    },
  );

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

  return app;
}

/** Uploads are decoded by sharp: refuse non-images and oversized photos before any pixel work. */
async function checkUpload(image: Buffer, maxSide: number): Promise<void> {
  const { default: sharp } = await import('sharp');
  let meta: { width?: number; height?: number };
  try {
    meta = await sharp(image).metadata();
  } catch (e) {
    throw new HttpError(400, 'E_ARGUMENT', `image is not a decodable picture (${(e as Error).message})`);
  }
  if (!meta.width || !meta.height) throw new HttpError(400, 'E_ARGUMENT', 'image has no size');
  if (meta.width > maxSide || meta.height > maxSide) throw new HttpError(413, 'E_TOO_LARGE', `image is ${meta.width}x${meta.height}; the limit is ${maxSide} px a side`);
}

/** One encoder runs one image at a time (its compiled program has one arena). */
function serially(encoder: IdEncoder): (image: Buffer, opts: EncodeOptions) => Promise<Identity> {
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
function sse(reply: FastifyReply, queue: JobQueue, id: string, first: JobView): void {
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
    res.end();
  };
  const on = (e: JobEvent) => {
    if (e.type === 'progress') {
      if (e.progress.step <= last) return;
      last = e.progress.step;
      send('progress', e.progress);
    } else if (e.type === 'done') {
      send('done', publicView({ id, kind: first.kind, state: 'done', result: e.result }));
      end();
    } else {
      send('failed', { id, error: e.error });
      end();
    }
  };
  const unsubscribe = queue.subscribe(id, on);
  const ping = setInterval(() => open && res.write(': ping\n\n'), 15_000);
  res.on('close', end);
  void queue.get(id).then((v) => {
    const now = v ?? first;
    if (now.progress) on({ type: 'progress', progress: now.progress });
    if (now.state === 'done' && now.result) on({ type: 'done', result: now.result });
    else if (now.state === 'failed') on({ type: 'failed', error: now.error ?? { code: 'E_INTERNAL', message: 'failed' } });
  });
}
