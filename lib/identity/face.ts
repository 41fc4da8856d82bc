/**
 * Face preparation for the ID encoder and for learning: decode (EXIF orientation applied), then
 * align with 5 landmarks (given, or found by the FaceAnalyzer of lib/faces) onto the ArcFace
 * template, or take a square crop (the photo's centre, or around the detected face for learning).
 *
 * Coordinates are in pixels with the CENTRE of pixel (column i, row j) at (i, j) — the convention of
 * OpenCV's warpAffine and of insightface's norm_crop, so landmarks from the usual detectors (RetinaFace,
 * SCRFD, MTCNN) and the ArcFace template line up without a half-pixel shift.
 */
import { IdforgeError } from '../errors.js';
import { applyTransform, checkLandmarks, decodeFace, describeImage, estimateSimilarity, warpAffine } from '../faces/align.js';
import { FaceAnalyzer } from '../faces/analyzer.js';
import type { Face } from '../faces/detect.js';
import type { RawImage } from '../io/image.js';
import { bool, invalid } from '../validate.js';

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

/** Which detected face to use, and what to do without one. */
export interface FaceChoiceOptions {
  /** Which face, by size: 0 (default) is the largest. Several faces give a warning. */
  faceIndex?: number;
  /** No face found: centre-crop with a warning instead of failing with E_NO_FACE. */
  noFaceFallback?: boolean;
  /** The analyzer to detect with (default: one shared per process, loaded on first use). */
  analyzer?: FaceAnalyzer;
}

export interface PrepareFaceOptions extends FaceChoiceOptions {
  /**
   * 5 points (left eye, right eye, nose, left mouth, right mouth) in input pixels; 'detect' to find
   * them with the FaceAnalyzer; 'centre' or none for a centred square crop.
   */
  landmarks?: Landmarks | readonly (readonly [number, number])[] | 'detect' | 'centre';
  /** Output side in pixels (default 112). */
  size?: number;
}

export interface PreparedFace {
  /** size × size RGB. */
  image: RawImage;
  warnings: string[];
  /** 2×3 row-major similarity [a, −b, tx, b, a, ty] mapping input pixels to output pixels (aligned path only). */
  transform?: number[];
  /** The detected face used (landmarks 'detect'). */
  face?: Face;
}

export const NO_LANDMARKS_WARNING = 'no landmarks: centre crop; pass landmarks for aligned faces';

const where = 'prepareFace';

/** The template scaled to a size×size output. */
export function faceTemplate(size: number): [number, number][] {
  return ARCFACE_TEMPLATE_112.map(([x, y]) => [(x * size) / 112, (y * size) / 112]);
}

/** Decodes, aligns (5 landmarks) or centre-crops, and resizes a face to size×size. */
export async function prepareFace(input: RawImage | string | Buffer, opts: PrepareFaceOptions = {}): Promise<PreparedFace> {
  const size = opts.size ?? 112;
  if (!Number.isSafeInteger(size) || size < 8 || size > 4096) throw invalid('size', 'an integer in [8, 4096]', size, { where });
  const detect = opts.landmarks === 'detect';
  let landmarks = opts.landmarks === undefined || opts.landmarks === 'centre' || detect ? undefined : checkLandmarks(opts.landmarks);
  if (detect) checkChoice(opts);
  const img = await decodeFace(input);
  const warnings: string[] = [];
  const face = detect ? await chooseFace(img, input, opts, warnings) : undefined;
  if (face) landmarks = face.landmarks;
  if (!landmarks) {
    if (!detect) warnings.push(NO_LANDMARKS_WARNING);
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
  return { image: warpAffine(img, m, size), warnings, transform: m, ...(face ? { face } : {}) };
}

function checkChoice(o: FaceChoiceOptions): void {
  if (o.faceIndex !== undefined && !(Number.isSafeInteger(o.faceIndex) && o.faceIndex >= 0))
    throw invalid('faceIndex', 'an integer ≥ 0', o.faceIndex, { where });
  if (o.noFaceFallback !== undefined) bool(o.noFaceFallback, 'noFaceFallback', where);
  if (o.analyzer !== undefined && !(o.analyzer instanceof FaceAnalyzer)) throw invalid('analyzer', 'a FaceAnalyzer', o.analyzer, { where });
}

/**
 * Detects the faces in `img` and returns the one `opts` asks for (the largest by default), with a
 * warning when there are several; none: E_NO_FACE naming the file, or undefined and a warning with
 * noFaceFallback.
 */
export async function chooseFace(img: RawImage, input: RawImage | string | Buffer, opts: FaceChoiceOptions, warnings: string[]): Promise<Face | undefined> {
  checkChoice(opts);
  const analyzer = opts.analyzer ?? (await FaceAnalyzer.shared());
  const faces = await analyzer.detect(img);
  const what = describeImage(input);
  const index = opts.faceIndex ?? 0;
  if (faces.length === 0) {
    if (!opts.noFaceFallback) throw new IdforgeError('E_NO_FACE', `no face found in ${what} (pass noFaceFallback: true to use the photo's centre instead)`);
    warnings.push(`no face found in ${what}: using the photo's centre`);
    return undefined;
  }
  if (index >= faces.length) throw invalid('faceIndex', `at most ${faces.length - 1} (out of range: ${faces.length} face(s) found in ${what})`, index, { where });
  if (faces.length > 1)
    warnings.push(`${faces.length} faces found in ${what}: using face ${index}${index === 0 ? ' (the largest)' : ''}; pass faceIndex (0 = the largest) to pick another`);
  return faces[index];
}

/**
 * A size×size crop of the square around a detected face: the face's box (the mesh's bounds,
 * brow to chin) widened by `margin` × its side on every side, kept inside the photo where it fits.
 */
export async function cropAroundFace(img: RawImage, face: Face, size: number, margin = 0.5): Promise<RawImage> {
  const [x0, y0, x1, y1] = face.box;
  const side = Math.min(Math.round(Math.max(x1 - x0, y1 - y0) * (1 + 2 * margin)), img.width, img.height);
  const clamp = (v: number, hi: number) => Math.min(Math.max(0, Math.round(v)), hi);
  const left = clamp((x0 + x1) / 2 - side / 2, img.width - side);
  const top = clamp((y0 + y1) / 2 - side / 2, img.height - side);
  return squareCrop(img, left, top, side, size);
}

/** The photo's centred square, resized to size×size. */
export async function centreCrop(img: RawImage, size: number): Promise<RawImage> {
  const side = Math.min(img.width, img.height);
  return squareCrop(img, Math.floor((img.width - side) / 2), Math.floor((img.height - side) / 2), side, size);
}

async function squareCrop(img: RawImage, left: number, top: number, side: number, size: number): Promise<RawImage> {
  // Already the crop asked for: nothing to do (and no need for sharp, which loads on demand).
  if (img.width === size && img.height === size && side === size) return { ...img, data: img.data.slice() };
  const { default: sharp } = await import('sharp');
  const { data, info } = await sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), {
    raw: { width: img.width, height: img.height, channels: 3 },
  })
    .extract({ left, top, width: side, height: side })
    .resize(size, size, { kernel: 'lanczos3' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 || info.width !== size || info.height !== size) throw new IdforgeError('E_INTERNAL', 'square crop produced an unexpected image');
  return { width: size, height: size, channels: 3, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}
