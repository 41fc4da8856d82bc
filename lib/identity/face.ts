/**
 * Face preparation for the ID encoder: decode (EXIF orientation applied), then either align with 5
 * landmarks onto the ArcFace template or, without landmarks, take a centred square crop.
 *
 * Coordinates are in pixels with the CENTRE of pixel (column i, row j) at (i, j) — the convention of
 * OpenCV's warpAffine and of insightface's norm_crop, so landmarks from the usual detectors (RetinaFace,
 * SCRFD, MTCNN) and the ArcFace template line up without a half-pixel shift.
 */
import { existsSync } from 'node:fs';
import { IdforgeError } from '../errors.js';
import { loadImage, type RawImage } from '../io/image.js';

/** ArcFace 5-point template for 112×112: left eye, right eye, nose tip, left mouth corner, right mouth corner. */
export const ARCFACE_TEMPLATE_112: readonly (readonly [number, number])[] = Object.freeze([
  [38.2946, 51.6963],
  [73.5318, 51.5014],
  [56.0252, 71.7366],
  [41.5493, 92.3655],
  [70.7299, 92.2041],
] as const);

export type Landmarks = [number, number][];

export interface PrepareFaceOptions {
  /** 5 points (left eye, right eye, nose, left mouth, right mouth) in input pixels; 'detect' is reserved. */
  landmarks?: Landmarks | readonly (readonly [number, number])[] | 'detect';
  /** Output side in pixels (default 112). */
  size?: number;
}

export interface PreparedFace {
  /** size × size RGB. */
  image: RawImage;
  warnings: string[];
  /** 2×3 row-major similarity [a, −b, tx, b, a, ty] mapping input pixels to output pixels (aligned path only). */
  transform?: number[];
}

export const NO_LANDMARKS_WARNING = 'no landmarks: centre crop; pass landmarks for aligned faces';

function arg(msg: string): IdforgeError {
  return new IdforgeError('E_ARGUMENT', `prepareFace: ${msg}`);
}

function isRawImage(x: unknown): x is RawImage {
  return typeof x === 'object' && x !== null && !Buffer.isBuffer(x) && 'data' in x && 'width' in x;
}

function checkRaw(img: RawImage): RawImage {
  if (!Number.isInteger(img.width) || !Number.isInteger(img.height) || img.width <= 0 || img.height <= 0 || img.channels !== 3 ||
      !(img.data instanceof Uint8Array) || img.data.length !== img.width * img.height * 3)
    throw arg('expected a RawImage { width, height, channels: 3, data: Uint8Array of width·height·3 }');
  return img;
}

/** Decodes a file path, an encoded Buffer or a RawImage into RGB pixels (EXIF orientation applied). */
export async function decodeFace(input: RawImage | string | Buffer | Uint8Array): Promise<RawImage> {
  if (typeof input === 'string') {
    if (!input) throw arg('empty image path');
    if (!existsSync(input)) throw new IdforgeError('E_NOT_FOUND', `face image not found: ${input}`);
    return loadImage(input);
  }
  if (Buffer.isBuffer(input) || (input instanceof Uint8Array && !isRawImage(input))) {
    if (input.length === 0) throw arg('empty image buffer');
    return loadImage(input);
  }
  if (isRawImage(input)) return checkRaw(input);
  throw arg('the face must be a RawImage, a file path or an encoded image Buffer');
}

function checkLandmarks(l: unknown): [number, number][] {
  if (!Array.isArray(l) || l.length !== 5)
    throw arg(`landmarks must be 5 [x, y] points (left eye, right eye, nose, left mouth, right mouth), got ${Array.isArray(l) ? `${l.length} points` : typeof l}`);
  return l.map((p, i) => {
    if (!Array.isArray(p) || p.length !== 2 || !p.every((c) => typeof c === 'number' && Number.isFinite(c)))
      throw arg(`landmark ${i} must be [x, y] with finite numbers, got ${JSON.stringify(p)}`);
    return [p[0], p[1]] as [number, number];
  });
}

/**
 * Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping `src` onto
 * `dst`: returns [a, −b, tx, b, a, ty] with x' = a·x − b·y + tx, y' = b·x + a·y + ty. For 2-D points
 * this closed form is Umeyama's estimate with the reflection excluded (det R = +1).
 */
export function estimateSimilarity(src: readonly (readonly [number, number])[], dst: readonly (readonly [number, number])[]): number[] {
  const n = src.length;
  if (n < 2 || dst.length !== n) throw arg(`need matching point sets of at least 2 points, got ${n} and ${dst.length}`);
  let sx = 0, sy = 0, dx = 0, dy = 0;
  for (let i = 0; i < n; i++) {
    sx += src[i]![0]; sy += src[i]![1]; dx += dst[i]![0]; dy += dst[i]![1];
  }
  sx /= n; sy /= n; dx /= n; dy /= n;
  let varS = 0, p = 0, q = 0;
  for (let i = 0; i < n; i++) {
    const x = src[i]![0] - sx, y = src[i]![1] - sy;
    const u = dst[i]![0] - dx, v = dst[i]![1] - dy;
    varS += x * x + y * y;
    p += x * u + y * v;
    q += x * v - y * u;
  }
  if (!(varS > 1e-12)) throw arg('the landmarks all coincide: cannot estimate an alignment');
  const a = p / varS, b = q / varS;
  return [a, -b, dx - (a * sx - b * sy), b, a, dy - (b * sx + a * sy)];
}

/** Applies a 2×3 affine transform to a point. */
export function applyTransform(m: readonly number[], pt: readonly [number, number]): [number, number] {
  return [m[0]! * pt[0] + m[1]! * pt[1] + m[2]!, m[3]! * pt[0] + m[4]! * pt[1] + m[5]!];
}

/**
 * Warps `img` by the 2×3 transform (input → output pixels) into a size×size image: each output pixel
 * centre is mapped back through the inverse and sampled bilinearly; taps outside the input are black
 * (zero fill, like OpenCV's BORDER_CONSTANT that insightface uses).
 */
export function warpAffine(img: RawImage, m: readonly number[], size: number): RawImage {
  const [a, b, c, d, e, f] = m as [number, number, number, number, number, number];
  const det = a * e - b * d;
  if (!(Math.abs(det) > 1e-12)) throw arg('the alignment transform is singular');
  // inverse of [[a b],[d e]]
  const ia = e / det, ib = -b / det, id = -d / det, ie = a / det;
  const { width: W, height: H, data: src } = img;
  const out = new Uint8Array(size * size * 3);
  const px = [0, 0, 0];
  for (let v = 0; v < size; v++) {
    for (let u = 0; u < size; u++) {
      const x = ia * (u - c) + ib * (v - f);
      const y = id * (u - c) + ie * (v - f);
      const x0 = Math.floor(x), y0 = Math.floor(y);
      const fx = x - x0, fy = y - y0;
      px[0] = px[1] = px[2] = 0;
      for (let j = 0; j < 2; j++) {
        const yy = y0 + j;
        if (yy < 0 || yy >= H) continue;
        const wy = j ? fy : 1 - fy;
        for (let i = 0; i < 2; i++) {
          const xx = x0 + i;
          if (xx < 0 || xx >= W) continue;
          const w = wy * (i ? fx : 1 - fx);
          if (w === 0) continue;
          const o = (yy * W + xx) * 3;
          px[0] += w * src[o]!; px[1] += w * src[o + 1]!; px[2] += w * src[o + 2]!;
        }
      }
      const o = (v * size + u) * 3;
      out[o] = Math.min(255, Math.max(0, Math.round(px[0]!)));
      out[o + 1] = Math.min(255, Math.max(0, Math.round(px[1]!)));
      out[o + 2] = Math.min(255, Math.max(0, Math.round(px[2]!)));
    }
  }
  return { width: size, height: size, channels: 3, data: out };
}

/** The template scaled to a size×size output. */
export function faceTemplate(size: number): [number, number][] {
  return ARCFACE_TEMPLATE_112.map(([x, y]) => [(x * size) / 112, (y * size) / 112]);
}

/** Decodes, aligns (5 landmarks) or centre-crops, and resizes a face to size×size. */
export async function prepareFace(input: RawImage | string | Buffer, opts: PrepareFaceOptions = {}): Promise<PreparedFace> {
  const size = opts.size ?? 112;
  if (!Number.isSafeInteger(size) || size < 8 || size > 4096) throw arg(`size must be an integer in 8..4096, got ${String(size)}`);
  if (opts.landmarks === 'detect')
    throw arg('no face detector is bundled yet: pass 5 landmarks [[x, y] × 5] (left eye, right eye, nose, left mouth, right mouth), or none for a centre crop');
  const landmarks = opts.landmarks === undefined ? undefined : checkLandmarks(opts.landmarks);
  const img = await decodeFace(input);
  const warnings: string[] = [];
  if (!landmarks) {
    warnings.push(NO_LANDMARKS_WARNING);
    return { image: await centreCrop(img, size), warnings };
  }
  const dst = faceTemplate(size);
  const m = estimateSimilarity(landmarks, dst);
  const scale = Math.hypot(m[0]!, m[3]!);
  let resid = 0;
  for (let i = 0; i < 5; i++) {
    const [x, y] = applyTransform(m, landmarks[i]!);
    resid += Math.hypot(x - dst[i]![0], y - dst[i]![1]);
  }
  resid /= 5;
  if (resid > 0.08 * size)
    warnings.push(`landmarks fit the face template poorly (mean error ${resid.toFixed(1)} px of ${size}): check their order (left eye, right eye, nose, left mouth, right mouth)`);
  if (scale > 2)
    warnings.push(`the face is small in the image: aligning upscales it ${scale.toFixed(1)}×, identity detail may be lost`);
  for (const [x, y] of landmarks)
    if (x < 0 || y < 0 || x > img.width - 1 || y > img.height - 1) {
      warnings.push('some landmarks lie outside the image');
      break;
    }
  return { image: warpAffine(img, m, size), warnings, transform: m };
}

async function centreCrop(img: RawImage, size: number): Promise<RawImage> {
  // Already the crop asked for: nothing to do (and no need for sharp, which loads on demand).
  if (img.width === size && img.height === size) return { ...img, data: img.data.slice() };
  const { default: sharp } = await import('sharp');
  const side = Math.min(img.width, img.height);
  const left = Math.floor((img.width - side) / 2);
  const top = Math.floor((img.height - side) / 2);
  const { data, info } = await sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), {
    raw: { width: img.width, height: img.height, channels: 3 },
  })
    .extract({ left, top, width: side, height: side })
    .resize(size, size, { kernel: 'lanczos3' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 || info.width !== size || info.height !== size) throw new IdforgeError('E_INTERNAL', 'centre crop produced an unexpected image');
  return { width: size, height: size, channels: 3, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}
