// The studio page's link to `idforge serve`: JSON calls and downloads with the bearer token in a
// header (asked once, kept in sessionStorage, never put in a URL), and a job's Server-Sent Events
// read through fetch (EventSource cannot send a header).

const TOKEN_KEY = 'idforge.token';

/** An HTTP failure with the server's { error: { code, message } }. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let askToken = async () => null;

/** How the page asks for a token when the server answers 401 (returns the token, or null). */
export function onTokenNeeded(fn) {
  askToken = fn;
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (t) => (t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY)),
};

/** fetch with the token; a 401 asks for a (new) token once and retries. */
export async function request(path, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = new Headers(init.headers);
    const t = token.get();
    if (t) headers.set('authorization', `Bearer ${t}`);
    const res = await fetch(path, { ...init, headers });
    if (res.status !== 401 || attempt > 0) return res;
    const given = await askToken(t ? 'That token was refused: try again.' : '');
    if (!given) return res;
    token.set(given);
  }
}

async function failure(res) {
  let code = `HTTP_${res.status}`;
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body?.error) ({ code, message } = body.error);
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(res.status, code, message);
}

/** A JSON call: the parsed body, or an ApiError. */
export async function api(path, { method = 'GET', body } = {}) {
  const init = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'content-type': 'application/json' };
  }
  const res = await request(path, init);
  if (!res.ok) throw await failure(res);
  return res.status === 204 ? null : res.json();
}

/** A file from the server as a blob: URL (images and downloads carry the token this way). */
export async function blobUrl(path) {
  const res = await request(path);
  if (!res.ok) throw await failure(res);
  return URL.createObjectURL(await res.blob());
}

/**
 * Follows a job's events until it ends: onEvent(name, data) per event; resolves with the `done`
 * data, rejects with an ApiError for `failed`.
 */
export async function followJob(id, onEvent, signal) {
  const res = await request(`/jobs/${id}/events`, { signal, headers: { accept: 'text/event-stream' } });
  if (!res.ok) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trim();
      }
      if (!data) continue; // a comment (keep-alive ping)
      const parsed = JSON.parse(data);
      onEvent(event, parsed);
      if (event === 'done') {
        reader.cancel().catch(() => {});
        return parsed;
      }
      if (event === 'failed') {
        reader.cancel().catch(() => {});
        const e = parsed.error ?? {};
        throw new ApiError(200, e.code ?? 'E_INTERNAL', e.message ?? 'the job failed');
      }
    }
  }
  // The stream ended without an outcome (a restart, a proxy): ask for the job's state once.
  const view = await api(`/jobs/${id}`);
  if (view.state === 'done') return view;
  throw new ApiError(200, view.error?.code ?? 'E_INTERNAL', view.error?.message ?? `the job's event stream ended (state ${view.state})`);
}

/** A File → base64 JPEG/PNG of at most `maxSide` px a side (EXIF orientation applied), with its size. */
export async function photoPayload(file, maxSide = 1024) {
  const bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const dataUrl = canvas.toDataURL('image/jpeg', 0.92);
  return { base64: dataUrl.slice(dataUrl.indexOf(',') + 1), dataUrl, width, height };
}
