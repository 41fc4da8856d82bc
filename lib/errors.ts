/** Error codes every failure of idforge carries (`err.code`). */
export type ErrorCode =
  | 'E_MODEL_FORMAT' // a model / identity / tensor file is malformed, truncated or of a refused kind
  | 'E_NOT_FOUND' // a file or folder that should exist does not
  | 'E_SHAPE' // tensor shapes or image sizes that cannot work together
  | 'E_ARGUMENT' // an option out of range, NaN, of the wrong type
  | 'E_DISPOSED' // a tensor / engine / program used after dispose()
  | 'E_OOM' // an allocation the host or device refused
  | 'E_ABORTED' // an AbortSignal fired
  | 'E_NUMERIC' // NaN or Inf in weights or latents (a broken model, or settings that overflow)
  | 'E_BACKEND' // a backend (CUDA driver, cuBLAS, ...) is missing or failed
  | 'E_IDENTITY' // an identity that does not fit the prompt or the model
  | 'E_NO_FACE' // no face found in a photo where one is needed
  | 'E_INTERNAL'; // a bug in idforge: please report it

/** The one error type idforge throws or rejects with. */
export class IdforgeError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'IdforgeError';
    this.code = code;
  }
}

const CODES = new Set<string>([
  'E_MODEL_FORMAT', 'E_NOT_FOUND', 'E_SHAPE', 'E_ARGUMENT', 'E_DISPOSED', 'E_OOM', 'E_ABORTED',
  'E_NUMERIC', 'E_BACKEND', 'E_IDENTITY', 'E_NO_FACE', 'E_INTERNAL',
]);

/** Turns an error thrown by the native addon (an Error with a string `code`) into an IdforgeError. */
export function fromNative(e: unknown): IdforgeError {
  if (e instanceof IdforgeError) return e;
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === 'string' && CODES.has(err.code) ? (err.code as ErrorCode) : 'E_INTERNAL';
  const message = typeof err?.message === 'string' ? err.message : String(e);
  return new IdforgeError(code, message, { cause: e });
}

/** Throws E_ABORTED when the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined, what = 'operation'): void {
  if (signal?.aborted) throw new IdforgeError('E_ABORTED', `${what} was aborted`, { cause: signal.reason });
}

/**
 * `work`'s outcome, or a rejection with `late()` once `ms` have passed; the timer is cleared either
 * way, and work that settles after the deadline is dropped (its rejection included).
 */
export function deadline<T>(work: Promise<T>, ms: number, late: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(late()), ms); });
  work.catch(() => {});
  return Promise.race([work, expired]).finally(() => clearTimeout(timer));
}
