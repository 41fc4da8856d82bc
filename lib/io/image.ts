// Images in and out, through sharp.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IdforgeError, deadline } from '../errors.js';
import { invalid, shown, text } from '../validate.js';

/** 8-bit interleaved pixels, row-major. */
export interface RawImage {
  width: number;
  height: number;
  channels: 3;
  data: Uint8Array;
}

const RAW_SHAPE = 'a RawImage { width, height, channels: 3, data: Uint8Array of width·height·3 }';

function isRawImage(x: unknown): x is RawImage {
  return typeof x === 'object' && x !== null && !Buffer.isBuffer(x) && 'data' in x && 'width' in x;
}

function check(img: RawImage, name = 'image'): void {
  if (!img || !Number.isInteger(img.width) || !Number.isInteger(img.height) || img.width <= 0 || img.height <= 0 || img.channels !== 3 || !(img.data instanceof Uint8Array) || img.data.length !== img.width * img.height * 3)
    throw invalid(name, RAW_SHAPE, img);
}

/** Output formats by extension (what sharp writes). */
export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp', '.avif', '.tif', '.tiff', '.gif'] as const;

/**
 * Throws (E_ARGUMENT) unless `file` can be written as an image: a known extension, an existing
 * writable folder, and no folder or unwritable file at that name. Cheap; call it before working.
 */
export function checkImageOutput(file: string): void {
  text(file, 'the output image path', { nonEmpty: true });
  const ext = path.extname(file).toLowerCase();
  if (!(IMAGE_EXTENSIONS as readonly string[]).includes(ext))
    throw invalid('the output image path', `a known image format (${IMAGE_EXTENSIONS.join(', ')}); unknown image format '${ext || '(no extension)'}'`, file);
  checkWritable(file);
}

/** Throws unless `file` can be written: an existing writable folder, and no folder or unwritable file at that name. */
export function checkWritable(file: string): void {
  const dir = path.dirname(path.resolve(file));
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new IdforgeError('E_NOT_FOUND', `${file}: the folder ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw invalid('the output path', `in a folder (${dir} is not one)`, file);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    throw invalid('the output path', `in a writable folder (${dir} is not writable)`, file);
  }
  let target: fs.Stats | undefined;
  try {
    target = fs.statSync(file);
  } catch {
    return; // a new file in a writable folder
  }
  if (!target.isFile()) throw invalid('the output path', 'a new or regular file (it exists and is not a regular file)', file);
  try {
    fs.accessSync(file, fs.constants.W_OK);
  } catch {
    throw invalid('the output path', 'a new or writable file (it exists and is not writable)', file);
  }
}

/** Writes a RawImage; the format follows the extension (.png, .jpg, .webp, ...). */
export async function saveImage(img: RawImage, file: string): Promise<void> {
  check(img);
  checkImageOutput(file);
  try {
    await (await sharpOf(img)).toFile(file);
  } catch (e) {
    // libvips messages are multi-line and name its internals: keep the first line, minus "vips_…: ".
    const first = ((e as Error).message ?? '').split('\n')[0]!.replace(/^vips[_\w]*:\s*/, '');
    throw invalid('the output image path', `a file the image can be written to (could not write it: ${first})`, file, { cause: e });
  }
}

/** The PNG bytes of an image (what the server returns). */
export async function encodePng(img: RawImage): Promise<Buffer> {
  check(img);
  return (await sharpOf(img)).png().toBuffer();
}

/** The JPEG bytes of an image: the server's step previews, a tenth of a PNG's size (each step's goes over SSE and, with Redis, through its event stream). */
export async function encodeJpeg(img: RawImage, quality = 80): Promise<Buffer> {
  check(img);
  return (await sharpOf(img)).jpeg({ quality }).toBuffer();
}

/** A sharp pipeline over the RGB pixels (sharp loads on demand). */
async function sharpOf(img: RawImage) {
  const { default: sharp } = await import('sharp');
  return sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), {
    raw: { width: img.width, height: img.height, channels: 3 },
  });
}

/** Raster formats told apart by their first bytes (what an untrusted upload may be). */
export type RasterFormat = 'jpeg' | 'png' | 'webp';

/** The raster format of encoded bytes by their magic number, or undefined (SVG, GIF, TIFF, PDF, ...). */
export function sniffRaster(b: Uint8Array): RasterFormat | undefined {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 && b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a) return 'png';
  const ascii = (at: number, s: string) => [...s].every((c, i) => b[at + i] === c.charCodeAt(0));
  if (b.length >= 12 && ascii(0, 'RIFF') && ascii(8, 'WEBP')) return 'webp';
  return undefined;
}

/**
 * Limits on decoding an image from an untrusted source (a server's upload): without them sharp
 * renders SVG filters for a minute, or allocates what a header claims.
 */
export interface DecodeBudget {
  /** Formats accepted, by magic bytes; anything else (vector, multi-page, unknown) is refused. */
  formats?: readonly RasterFormat[];
  /** Largest width·height: from the header before decoding, and enforced by the decoder. */
  maxPixels?: number;
  /** Largest width or height, of the header and of the decoded (EXIF-rotated) image. */
  maxSide?: number;
  /**
   * Seconds the decode may take (> 0): the refusal comes at this time, and sharp's own timeout stops
   * libvips' work at the next whole second (it counts whole seconds only).
   */
  seconds?: number;
}

/** Why a budgeted decode refused an image; `code` stays E_ARGUMENT like any undecodable image. */
export type DecodeRefusal = 'format' | 'size' | 'time' | 'corrupt';

export class ImageDecodeError extends IdforgeError {
  constructor(readonly reason: DecodeRefusal, message: string, options?: { cause?: unknown }) {
    super('E_ARGUMENT', message, options);
  }
}

/** Decodes any image sharp reads (EXIF orientation applied) into RGB RawImage, within `budget` when given. */
export async function loadImage(input: string | Buffer | Uint8Array, budget?: DecodeBudget): Promise<RawImage> {
  // sharp loads on demand: engines that never touch image files (servers fed tensors, the GPU check) do without it.
  const { default: sharp } = await import('sharp');
  const what = typeof input === 'string' ? input : 'image buffer';
  if (budget) await checkBudget(sharp, input, budget, what);
  try {
    const s = budget ? sharp(input, { limitInputPixels: budget.maxPixels ?? true, pages: 1 }).timeout({ seconds: Math.ceil(budget.seconds ?? 0) }) : sharp(input);
    const decode = s.rotate().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    const { data, info } = await (budget?.seconds === undefined ? decode
      : deadline(decode, budget.seconds * 1000, () => new Error('timeout: the decode budget ran out')));
    if (info.channels !== 3) throw new Error(`decoded ${info.channels} channels`);
    if (budget?.maxSide !== undefined && Math.max(info.width, info.height) > budget.maxSide)
      throw new ImageDecodeError('size', `${what} is ${info.width}x${info.height}; the limit is ${budget.maxSide} px a side`);
    return { width: info.width, height: info.height, channels: 3, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  } catch (e) {
    if (e instanceof ImageDecodeError) throw e;
    const msg = (e as Error).message;
    if (budget && /^timeout/.test(msg)) throw new ImageDecodeError('time', `${what} took more than ${budget.seconds} s to decode`, { cause: e });
    if (budget && /pixel limit/.test(msg)) throw new ImageDecodeError('size', `${what} has more than ${budget.maxPixels} pixels`, { cause: e });
    if (budget) throw new ImageDecodeError('corrupt', `could not decode ${what}: ${msg}`, { cause: e });
    if (typeof input === 'string' && msg.includes('missing')) throw new IdforgeError('E_NOT_FOUND', `could not decode ${input}: ${msg}`, { cause: e });
    throw invalid('image', `an image sharp can decode (could not decode it: ${msg})`, typeof input === 'string' ? input : shown(`a buffer of ${input.length} bytes`), { cause: e });
  }
}

const FORMAT_NAMES: Record<RasterFormat, string> = { jpeg: 'JPEG', png: 'PNG', webp: 'WebP' };

/** The budget's checks that need no decoding: the magic bytes and the header's size and page count. */
async function checkBudget(sharp: typeof import('sharp'), input: string | Buffer | Uint8Array, b: DecodeBudget, what: string): Promise<void> {
  if (b.seconds !== undefined && !(typeof b.seconds === 'number' && b.seconds >= 0.01 && b.seconds <= 3600))
    throw invalid('decode budget: seconds', 'a number of seconds in [0.01, 3600]', b.seconds);
  if (b.formats) {
    const head = typeof input === 'string' ? readHead(input) : input;
    const f = sniffRaster(head);
    if (!f || !b.formats.includes(f))
      throw new ImageDecodeError('format', `${what} is not ${b.formats.map((x) => FORMAT_NAMES[x]).join(', ').replace(/, ([^,]*)$/, ' or $1')}`);
  }
  let meta: { width?: number; height?: number; pages?: number };
  try {
    meta = await sharp(input, { limitInputPixels: false }).metadata();
  } catch (e) {
    throw new ImageDecodeError('corrupt', `could not decode ${what}: ${(e as Error).message}`, { cause: e });
  }
  const { width = 0, height = 0 } = meta;
  if (b.formats && (meta.pages ?? 1) > 1) throw new ImageDecodeError('format', `${what} has ${meta.pages} pages or frames; one still image is accepted`);
  if (!width || !height) throw new ImageDecodeError('corrupt', `${what} has no size`);
  if ((b.maxSide !== undefined && Math.max(width, height) > b.maxSide) || (b.maxPixels !== undefined && width * height > b.maxPixels))
    throw new ImageDecodeError('size', `${what} is ${width}x${height}; the limit is ${b.maxSide ?? '-'} px a side, ${b.maxPixels ?? '-'} pixels`);
}

/** The first bytes of a file (enough for sniffRaster). */
function readHead(file: string): Uint8Array {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new IdforgeError('E_NOT_FOUND', `could not read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
  }
  try {
    const b = Buffer.alloc(16);
    return b.subarray(0, fs.readSync(fd, b, 0, 16, 0));
  } finally {
    fs.closeSync(fd);
  }
}

/** Width and height of an image file as displayed (EXIF orientation applied), from its header only. */
export async function imageSize(file: string): Promise<{ width: number; height: number }> {
  if (!fs.existsSync(file)) throw new IdforgeError('E_NOT_FOUND', `image not found: ${file}`);
  const { default: sharp } = await import('sharp');
  try {
    const m = await sharp(file).metadata();
    if (!m.width || !m.height) throw new Error('no size in its header');
    const turned = (m.orientation ?? 1) >= 5;
    return turned ? { width: m.height, height: m.width } : { width: m.width, height: m.height };
  } catch (e) {
    throw invalid('image', `an image sharp can decode (could not decode it: ${(e as Error).message.split('\n')[0]})`, file, { cause: e });
  }
}

/** An image file decoded and resized to cover width × height (scaled to fill, the overflow cropped evenly). */
export async function loadImageCover(file: string, width: number, height: number): Promise<RawImage> {
  const img = await loadImage(file);
  if (img.width === width && img.height === height) return img;
  const { data } = await (await sharpOf(img)).resize(width, height, { fit: 'cover' }).raw().toBuffer({ resolveWithObject: true });
  return { width, height, channels: 3, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/**
 * An image argument → RawImage: a file path or an encoded Buffer (decoded, EXIF orientation
 * applied) or a RawImage (checked). Typed errors name `what` (e.g. 'face', 'image').
 */
export async function decodeImage(input: unknown, what: string): Promise<RawImage> {
  if (typeof input === 'string') {
    if (!input) throw invalid(what, 'a non-empty image path', input);
    if (!fs.existsSync(input)) throw new IdforgeError('E_NOT_FOUND', `${what} image not found: ${input}`);
    return loadImage(input);
  }
  if (Buffer.isBuffer(input) || (input instanceof Uint8Array && !isRawImage(input))) {
    if (input.length === 0) throw invalid(what, 'a non-empty image buffer', shown('an empty buffer'));
    return loadImage(input);
  }
  if (isRawImage(input)) {
    check(input, what);
    return input;
  }
  throw invalid(what, 'a RawImage, a file path or an encoded image Buffer', input);
}

/** 8-bit HWC → [3, H, W] in [−1, 1], (x/255)·2 − 1: the VAE encoder's input range. */
export function toSignedCHW(img: RawImage): Float32Array {
  const plane = img.width * img.height;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < plane; i++) out[c * plane + i] = (img.data[i * 3 + c]! / 255) * 2 - 1;
  return out;
}

/** [1, 3, H, W] in [0, 1] → 8-bit HWC, round(x·255). */
export function toRawImage(px: Float32Array, width: number, height: number): RawImage {
  const data = new Uint8Array(width * height * 3);
  const plane = width * height;
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < plane; i++) data[i * 3 + c] = Math.round(px[c * plane + i]! * 255);
  return { width, height, channels: 3, data };
}
