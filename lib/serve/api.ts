// The HTTP API's one description: the limits, the JSON schemas of every route, and the job payloads
// that travel from the server to whoever runs them (an in-process engine or a BullMQ worker).
import { SAMPLERS as SAMPLER_NAMES, type SamplerName } from '../sched/sampler.js';
import { Identity, type IdentityMethod } from '../identity/identity.js';
import { REGION_CAPACITY, type Box } from '../regions.js';

/** The samplers a request may name (generate()'s own list). */
export const SAMPLERS: string[] = [...SAMPLER_NAMES];

export interface Limits {
  /** Largest request body in bytes (uploads are base64 inside JSON). */
  bodyBytes: number;
  /** Largest width or height of a generated image. */
  maxSide: number;
  maxSteps: number;
  /** Jobs waiting (not yet running) before submissions get 429. */
  maxQueue: number;
  /** Largest side of an uploaded face photo (header and decoded image; larger: 413). */
  maxUploadSide: number;
  /** Smallest side of an uploaded face photo (learning needs 64 px). */
  minUploadSide: number;
  /** Uploads larger than this a side are scaled down before face work (detection time grows with the square of the side). */
  workSide: number;
  /** Whole seconds one upload may take to decode. */
  decodeSeconds: number;
  maxLearnSteps: number;
  /** Finished jobs kept (in memory, in Redis, in --results): at most this many ... */
  keepJobs: number;
  /** ... for at most this many seconds. */
  keepSeconds: number;
}

export const DEFAULT_LIMITS: Limits = {
  bodyBytes: 8 << 20, maxSide: 1024, maxSteps: 150, maxQueue: 100, maxUploadSide: 4096, minUploadSide: 64, workSide: 1024,
  decodeSeconds: 5, maxLearnSteps: 5000, keepJobs: 200, keepSeconds: 3600,
};

/** Timeouts of the server's sockets and of its dependency (Redis), in milliseconds. */
export interface Timeouts {
  /** Receiving a whole request (headers and body); then 408. */
  requestMs: number;
  /** Receiving a request's headers; then 408. */
  headersMs: number;
  /** An idle keep-alive connection is closed after this (longer than a load balancer's idle timeout, or it reuses closed ones). */
  keepAliveMs: number;
  /** /health waits this long for the queue (Redis) before answering 503. */
  healthMs: number;
}

export const DEFAULT_TIMEOUTS: Timeouts = { requestMs: 30_000, headersMs: 10_000, keepAliveMs: 72_000, healthMs: 2_000 };

/** Every SD 1.x model needs sizes in multiples of 64 (VAE ×8, UNet ×8); the engine checks again. */
export const SIZE_MULTIPLE = 64;

/** Identities one generate request may name (`identities`). */
export const MAX_IDENTITIES = 8;

/** LoRA files one generate request may name (`loras`). */
export const MAX_LORAS = 8;

/** A LoRA's name: its file name in the server's --loras folder without `.safetensors`, never a path. */
export const LORA_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';

/** Identity ids name files in the store: letters, digits, '_' and '-', never a path. */
export const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$';
const UUID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';

/** An identity as it travels inside a job (a worker elsewhere has no identity store). */
export interface WireIdentity {
  method: IdentityMethod;
  name?: string;
  stages: number;
  words: number;
  dim: number;
  /** Row-major float32 [S, M, D], base64. */
  k: string;
  /** Absent when K and V are the same words. */
  v?: string;
}

export interface GenerateJob {
  kind: 'generate';
  prompt: string;
  negativePrompt: string;
  width: number;
  height: number;
  steps: number;
  guidanceScale: number;
  /** Always set (chosen at submission when the request has none): a retried job repeats its image. */
  seed: number;
  /** One of SAMPLERS: the request schema's enum. */
  sampler: SamplerName;
  identity?: WireIdentity;
  /** Several identities, each named in the prompt as `<id:name>` (instead of `identity`). */
  identities?: Record<string, WireIdentity>;
  identityScale?: number;
  /** Return the heatmap of where the identity attends (needs an identity; a bounded capture: jobs.ts). */
  attention?: boolean;
  /** Identity name → box [x0, y0, x1, y1) in fractions of the image (generate()'s `regions`). */
  regions?: Record<string, Box>;
  /** LoRA files by name (the runner's --loras folder), merged before the job runs. */
  loras?: { name: string; scale: number }[];
}

export interface LearnJob {
  kind: 'learn';
  /** The store id the learned identity is saved under. */
  identityId: string;
  name?: string;
  /** The face photo, base64. */
  image: string;
  steps: number;
  seed: number;
}

export type JobData = GenerateJob | LearnJob;

/** A heatmap of where one identity's words attend, over the picture: the placeholder ('<id>', '<id:ann>') and the PNG, base64. */
export interface AttentionPng {
  token: string;
  png: string;
}

export type JobResult =
  | { kind: 'generate'; images: string[]; seed: number; warnings: string[]; attention?: AttentionPng[] }
  | { kind: 'learn'; identityId: string; identity: WireIdentity };

export type JobState = 'queued' | 'running' | 'done' | 'failed';

export interface Progress {
  step: number;
  steps: number;
  /** A learning job's loss at this step. */
  loss?: number;
  /**
   * With a preview VAE (--preview-vae), the step's denoised estimate of the first image as a small
   * JPEG (at most 256 px a side), base64: sent live over SSE, never kept in views or step history.
   */
  preview?: string;
}

export interface JobError {
  code: string;
  message: string;
}

export interface JobView {
  id: string;
  kind: JobData['kind'];
  state: JobState;
  progress?: Progress;
  result?: JobResult;
  error?: JobError;
}

const f32 = (b64: string): Float32Array => {
  const buf = Buffer.from(b64, 'base64');
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
};
const b64 = (a: Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');

export function toWire(id: Identity): WireIdentity {
  return {
    method: id.method, stages: id.stages, words: id.words, dim: id.dim, k: b64(id.kData),
    ...(id.name !== undefined ? { name: id.name } : {}),
    ...(id.kvShared ? {} : { v: b64(id.vData) }),
  };
}

export function fromWire(w: WireIdentity): Identity {
  return new Identity({
    method: w.method, stages: w.stages, words: w.words, dim: w.dim, k: f32(w.k),
    ...(w.v !== undefined ? { v: f32(w.v) } : {}),
    ...(w.name !== undefined ? { name: w.name } : {}),
  });
}

// ---- JSON schemas (Fastify validates every request against these; additional fields are refused)

const error = {
  type: 'object',
  properties: { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } } },
};
export const idParam = {
  type: 'object', required: ['id'], additionalProperties: false,
  properties: { id: { type: 'string', pattern: ID_PATTERN } },
};
export const jobParam = {
  type: 'object', required: ['id'], additionalProperties: false,
  properties: { id: { type: 'string', pattern: UUID_PATTERN } },
};
/** `:index` of a job's PNG (a picture or a heatmap). */
export const imageParam = {
  type: 'object', required: ['id', 'index'], additionalProperties: false,
  properties: { id: { type: 'string', pattern: UUID_PATTERN }, index: { type: 'string', pattern: '^[0-9]{1,2}$' } },
};

/** A field refused in some case; the description is the client's message (errors.ts validationMessage). */
const refused = (description: string) => ({ not: {}, description });

export function generateBody(l: Limits): object {
  return {
    type: 'object', required: ['prompt'], additionalProperties: false,
    properties: {
      prompt: { type: 'string', maxLength: 2000 },
      negativePrompt: { type: 'string', maxLength: 2000 },
      width: { type: 'integer', minimum: SIZE_MULTIPLE, maximum: l.maxSide, multipleOf: SIZE_MULTIPLE },
      height: { type: 'integer', minimum: SIZE_MULTIPLE, maximum: l.maxSide, multipleOf: SIZE_MULTIPLE },
      steps: { type: 'integer', minimum: 1, maximum: l.maxSteps },
      guidanceScale: { type: 'number', minimum: 0, maximum: 50 },
      seed: { type: 'integer', minimum: 0, maximum: 2 ** 31 - 1 },
      sampler: { type: 'string', enum: SAMPLERS },
      identity: { type: 'string', pattern: ID_PATTERN },
      identities: {
        type: 'object', minProperties: 1, maxProperties: MAX_IDENTITIES, propertyNames: { minLength: 1, maxLength: 64, pattern: '^[^<>]+$' },
        additionalProperties: { type: 'string', pattern: ID_PATTERN },
      },
      identityScale: { type: 'number', minimum: 0, maximum: 10 },
      attention: { type: 'boolean' },
      regions: {
        type: 'object', maxProperties: REGION_CAPACITY, propertyNames: { maxLength: 64 },
        additionalProperties: { type: 'array', minItems: 4, maxItems: 4, items: { type: 'number', minimum: 0, maximum: 1 } },
      },
      loras: {
        type: 'array', maxItems: MAX_LORAS,
        items: {
          type: 'object', required: ['name'], additionalProperties: false,
          properties: { name: { type: 'string', pattern: LORA_NAME_PATTERN }, scale: { type: 'number', minimum: -10, maximum: 10 } },
        },
      },
    },
    // Fields the engine would ignore are refused: the identity's scale, heatmap or regions without an
    // identity, a negative prompt without classifier-free guidance (it only steers the guided branch);
    // one identity or several, not both.
    allOf: [
      {
        if: { not: { anyOf: [{ required: ['identity'] }, { required: ['identities'] }] } },
        then: { properties: Object.fromEntries(['identityScale', 'attention', 'regions'].map((f) => [f, refused(`'${f}' needs 'identity' (or 'identities')`)])) },
      },
      { if: { required: ['identity'] }, then: { properties: { identities: refused("give 'identity' (the prompt's <id>) or 'identities' (its <id:name>s), not both") } } },
      {
        if: { required: ['guidanceScale'], properties: { guidanceScale: { type: 'number', maximum: 1 } } },
        then: { properties: { negativePrompt: refused('negativePrompt is only used with guidanceScale > 1 (classifier-free guidance)') } },
      },
    ],
  };
}

/** What each upload method takes: DreamIdentity encodes in one pass (no steps, no seed); SeFi-IDE finds the face itself (no landmarks). */
export const METHOD_FIELDS = {
  dreamidentity: ['image', 'method', 'name', 'id', 'landmarks'],
  'sefi-ide': ['image', 'method', 'name', 'id', 'steps', 'seed'],
} as const;

export function identityBody(l: Limits): object {
  const properties: Record<string, object> = {
    image: { type: 'string', minLength: 16 },
    method: { type: 'string', enum: Object.keys(METHOD_FIELDS) },
    name: { type: 'string', maxLength: 100 },
    id: { type: 'string', pattern: ID_PATTERN },
    landmarks: { type: 'array', minItems: 5, maxItems: 5, items: { type: 'array', minItems: 2, maxItems: 2, items: { type: 'number' } } },
    steps: { type: 'integer', minimum: 1, maximum: l.maxLearnSteps },
    seed: { type: 'integer', minimum: 0, maximum: 2 ** 31 - 1 },
  };
  // One schema per method: the fields of the other method are refused, saying whose they are.
  const only = (method: keyof typeof METHOD_FIELDS) => ({
    properties: Object.fromEntries(Object.keys(properties).filter((f) => !(METHOD_FIELDS[method] as readonly string[]).includes(f))
      .map((f) => [f, refused(`${f} is not a field of method '${method}' (it takes ${METHOD_FIELDS[method].join(', ')})`)])),
  });
  return {
    type: 'object', required: ['image'], additionalProperties: false, properties,
    if: { required: ['method'], properties: { method: { const: 'sefi-ide' } } },
    then: only('sefi-ide'),
    else: only('dreamidentity'),
  };
}

const jobView = {
  type: 'object',
  properties: {
    id: { type: 'string' }, kind: { type: 'string' }, state: { type: 'string' },
    progress: { type: 'object', properties: { step: { type: 'integer' }, steps: { type: 'integer' }, loss: { type: 'number' } } },
    images: { type: 'array', items: { type: 'string' } },
    attention: { type: 'array', items: { type: 'object', properties: { token: { type: 'string' }, url: { type: 'string' } } } },
    seed: { type: 'integer' },
    warnings: { type: 'array', items: { type: 'string' } },
    identity: { type: 'string' },
    error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' } } },
  },
};
export const identityInfo = {
  type: 'object',
  properties: {
    id: { type: 'string' }, name: { type: 'string' }, method: { type: 'string' }, stages: { type: 'integer' },
    words: { type: 'integer' }, dim: { type: 'integer' }, created: { type: 'string' },
  },
};
/** The errors every route can answer with: a bad request, no token, not found, shutting down (or Redis not answering). */
export const err4 = { 400: error, 401: error, 404: error, 503: error };
export const responses = {
  error,
  submitted: { type: 'object', properties: { id: { type: 'string' }, state: { type: 'string' }, identity: { type: 'string' } } },
  jobView,
  identityInfo,
  identityList: { type: 'object', properties: { identities: { type: 'array', items: identityInfo } } },
  loraList: { type: 'object', properties: { loras: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, bytes: { type: 'integer' } } } } } },
};
