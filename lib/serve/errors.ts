// What a client sees of a failure: one shape, { error: { code, message } }, for every status, with
// messages this layer wrote. Library and framework messages can name server paths, files and
// internals: they go to the log (with their stack), never into a response or a stored job.
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyBaseLogger } from 'fastify';
import type { JobError } from './api.js';

/** The HTTP status of every code a response can carry (README's table lists them). */
export const STATUS: Record<string, number> = {
  E_ARGUMENT: 400, E_IDENTITY: 400, E_UNAUTHORIZED: 401, E_NOT_FOUND: 404, E_TIMEOUT: 408, E_EXISTS: 409,
  E_TOO_LARGE: 413, E_UNSUPPORTED_MEDIA: 415, E_NO_FACE: 422, E_QUEUE_FULL: 429, E_HEADERS_TOO_LARGE: 431,
  E_INTERNAL: 500, E_NO_ENCODER: 501, E_NO_FACE_MODELS: 501, E_UNAVAILABLE: 503,
};

/** An error whose code and message are fit for a client (this layer wrote them); `cause` is for the log. */
export class ServeError extends Error {
  readonly status: number;
  constructor(readonly code: keyof typeof STATUS & string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.status = STATUS[code] ?? 500;
  }
}

/** Clean messages for the library's codes (its own messages can hold paths and option names of the JS API). */
const LIBRARY: Record<string, [code: string, message: string]> = {
  E_NO_FACE: ['E_NO_FACE', 'no face found in the photo: send one with a clear, frontal face (method dreamidentity also takes its five landmarks)'],
  E_ABORTED: ['E_ABORTED', 'the job was stopped: the server shut down'],
  E_NUMERIC: ['E_NUMERIC', 'the run produced non-finite values (NaN or Inf)'],
  E_OOM: ['E_OOM', 'the server ran out of memory for this job'],
  E_IDENTITY: ['E_IDENTITY', 'the identity does not fit the prompt or the model'],
};

/** The public code and message of any failure; anything unknown is E_INTERNAL with no detail. */
export function publicError(e: unknown): JobError {
  if (e instanceof ServeError) return { code: e.code, message: e.message };
  const code = (e as { code?: unknown })?.code;
  const known = typeof code === 'string' ? LIBRARY[code] : undefined;
  if (known) return { code: known[0], message: known[1] };
  return { code: 'E_INTERNAL', message: 'internal error (the server log has the details)' };
}

/** Whether a failure is the server's fault (logged as an error, with its stack) rather than the request's. */
export function isServerFault(err: JobError): boolean {
  return (STATUS[err.code] ?? 500) >= 500 && err.code !== 'E_UNAVAILABLE';
}

interface AjvError {
  keyword: string;
  instancePath: string;
  message?: string;
  params: Record<string, unknown>;
  parentSchema?: { description?: string };
}

/**
 * One sentence for a failed schema check, naming the field. A schema that refuses a field in some
 * case (`{ not: {}, description }`) says why in its description.
 */
export function validationMessage(errors: readonly AjvError[], context: string): string {
  const e = errors.find((x) => x.keyword !== 'if') ?? errors[0];
  if (!e) return `${context} is invalid`;
  const field = e.instancePath.replace(/^\//, '').replace(/\//g, '.');
  const at = (name: unknown) => [field, name].filter((x) => x !== '' && x !== undefined).join('.');
  switch (e.keyword) {
    case 'additionalProperties':
      return `unknown field '${at(e.params.additionalProperty)}'`;
    case 'required':
      return `'${at(e.params.missingProperty)}' is required`;
    case 'dependencies':
      return `'${at(e.params.property)}' needs '${at(e.params.missingProperty)}'`;
    case 'not':
      if (e.parentSchema?.description) return e.parentSchema.description;
  }
  return `${field ? `'${field}'` : context} ${e.message ?? 'is invalid'}`;
}

/** Fastify's own 4xx errors (body parsing) → our codes and messages. */
export function frameworkError(code: string | undefined, bodyLimit: number): ServeError | undefined {
  switch (code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ServeError('E_TOO_LARGE', `the body is larger than ${bodyLimit} bytes`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ServeError('E_UNSUPPORTED_MEDIA', 'send JSON (content-type: application/json)');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ServeError('E_ARGUMENT', 'the body is not valid JSON');
  }
  return undefined;
}

/**
 * Node's HTTP parser errors (request timeouts, oversized headers, malformed requests) are answered
 * on the raw socket, before any route: in the same JSON shape as every other error.
 */
export function clientErrorHandler(this: { log: FastifyBaseLogger }, err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, code, message] =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'E_TIMEOUT', 'the request was not received in time']
      : err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'E_HEADERS_TOO_LARGE', 'the request headers are too large']
        : [400, 'E_ARGUMENT', 'malformed HTTP request'];
  this.log.info({ status, clientError: err.code, remote: socket.remoteAddress }, 'client error');
  const body = JSON.stringify({ error: { code, message } });
  if (socket.writable)
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  socket.destroy();
}
