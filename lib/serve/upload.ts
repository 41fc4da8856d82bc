// Face photos from clients, decoded once at submission within a budget: raster formats only (by
// their magic bytes), the size from the header and from the decoded image, a decode-time limit, a
// few decodes at a time (a decoded 4096² photo is 50 MB). What reaches face detection and the
// learning job is at most `workSide` a side, so no upload can hold the encoder (or the event loop,
// where detection runs) for long.
import { ImageDecodeError, encodePng, loadImage, type RasterFormat, type RawImage } from '../io/image.js';
import type { Limits } from './api.js';
import { ServeError } from './errors.js';

const RASTER: readonly RasterFormat[] = ['jpeg', 'png', 'webp'];
const DATA_URI = /^data:([^;,]*)(;base64)?,/i;

/** At most `n` tasks at once; the others wait in order. */
export class Slots {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await task();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

/** The bytes of an `image` field: base64, optionally as a `data:image/…;base64,` URI. */
export function uploadBytes(field: string): Buffer {
  let b64 = field;
  const m = DATA_URI.exec(field);
  if (m) {
    if (!m[2]) throw new ServeError('E_ARGUMENT', 'a data: URI image must be base64 (data:image/png;base64,…)');
    if (!/^image\/(png|jpeg|jpg|webp)$/i.test(m[1]!)) throw new ServeError('E_UNSUPPORTED_MEDIA', `image must be a JPEG, PNG or WebP photo, not ${m[1] || 'untyped data'}`);
    b64 = field.slice(m[0].length);
  }
  // Node's decoder skips what is not base64: fewer bytes than the text's length implies means there was some.
  const bytes = Buffer.from(b64, 'base64');
  const pad = b64.endsWith('==') ? 2 : b64.endsWith('=') ? 1 : 0;
  if (b64.length % 4 === 1 || bytes.length !== Math.floor(((b64.length - pad) * 3) / 4))
    throw new ServeError('E_ARGUMENT', 'image must be base64 (or a data:image/…;base64, URI)');
  return bytes;
}

export class Uploads {
  readonly #slots = new Slots(2);
  constructor(readonly limits: Limits) {}

  /**
   * Decodes an upload within the budget and scales it to at most workSide a side (`scale`: new
   * size / decoded size, for landmarks given in the upload's pixels); refusals are 4xx ServeErrors.
   */
  async decode(field: string): Promise<{ image: RawImage; scale: number }> {
    const l = this.limits;
    const bytes = uploadBytes(field);
    const img = await this.#slots.run(async () => {
      try {
        return await loadImage(bytes, { formats: RASTER, maxSide: l.maxUploadSide, maxPixels: l.maxUploadSide ** 2, seconds: l.decodeSeconds });
      } catch (e) {
        throw refusal(e, l);
      }
    });
    if (Math.min(img.width, img.height) < l.minUploadSide)
      throw new ServeError('E_ARGUMENT', `image is ${img.width}x${img.height}; it needs at least ${l.minUploadSide} px a side`);
    if (Math.max(img.width, img.height) <= l.workSide) return { image: img, scale: 1 };
    const image = await this.#slots.run(() => fit(img, l.workSide));
    return { image, scale: image.width / img.width };
  }

  /** A decoded upload as the PNG a learning job carries (workers never see the client's bytes). */
  png(img: RawImage): Promise<Buffer> {
    return this.#slots.run(() => encodePng(img));
  }
}

function refusal(e: unknown, l: Limits): unknown {
  if (!(e instanceof ImageDecodeError)) return e;
  switch (e.reason) {
    case 'format':
      return new ServeError('E_UNSUPPORTED_MEDIA', 'image must be one still JPEG, PNG or WebP photo (vector, animated and multi-page formats are refused)', { cause: e });
    case 'size':
      return new ServeError('E_TOO_LARGE', `image is larger than ${l.maxUploadSide} px a side`, { cause: e });
    case 'time':
      return new ServeError('E_TOO_LARGE', `image took more than ${l.decodeSeconds} s to decode`, { cause: e });
    default:
      return new ServeError('E_ARGUMENT', 'image could not be decoded (corrupt or truncated)', { cause: e });
  }
}

/** Scales an image down to fit side×side (aspect kept). */
async function fit(img: RawImage, side: number): Promise<RawImage> {
  const { default: sharp } = await import('sharp');
  const { data, info } = await sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), { raw: { width: img.width, height: img.height, channels: 3 } })
    .resize({ width: side, height: side, fit: 'inside' }).raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, channels: 3, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}
