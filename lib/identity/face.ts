/**
 * Face preparation for the ID encoder: decode (EXIF orientation applied), then either align with 5
 * landmarks onto the ArcFace template or, without landmarks, take a centred square crop.
 *
 * Coordinates are in pixels with the CENTRE of pixel (column i, row j) at (i, j) — the convention of
 * OpenCV's warpAffine and of insightface's norm_crop, so landmarks from the usual detectors (RetinaFace,
 * SCRFD, MTCNN) and the ArcFace template line up without a half-pixel shift.
 */
import { IdforgeError } from '../errors.js';
import { applyTransform, decodeFace, estimateSimilarity, warpAffine } from '../faces/align.js';
import type { RawImage } from '../io/image.js';

export { applyTransform, decodeFace, estimateSimilarity, warpAffine };

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

function checkLandmarks(l: unknown): [number, number][] {
  if (!Array.isArray(l) || l.length !== 5)
    throw arg(`landmarks must be 5 [x, y] points (left eye, right eye, nose, left mouth, right mouth), got ${Array.isArray(l) ? `${l.length} points` : typeof l}`);
  return l.map((p, i) => {
    if (!Array.isArray(p) || p.length !== 2 || !p.every((c) => typeof c === 'number' && Number.isFinite(c)))
      throw arg(`landmark ${i} must be [x, y] with finite numbers, got ${JSON.stringify(p)}`);
    return [p[0], p[1]] as [number, number];
  });
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
