/**
 * Image geometry shared by face detection, embedding and the ID encoder's face preparation:
 * decoding (EXIF orientation applied), the least-squares similarity between point sets, and an
 * affine warp.
 *
 * Coordinates are in pixels with the CENTRE of pixel (column i, row j) at (i, j) — the convention of
 * OpenCV's warpAffine, insightface's norm_crop and dlib's extract_image_chip.
 */
import { decodeImage, type RawImage } from '../io/image.js';
import { invalid, shown } from '../validate.js';

const where = 'face';

/** 5 finite [x, y] points in the ArcFace order, copied; E_ARGUMENT otherwise. */
export function checkLandmarks(l: unknown): [number, number][] {
  if (!Array.isArray(l) || l.length !== 5)
    throw invalid('landmarks', '5 [x, y] points (left eye, right eye, nose, left mouth, right mouth)', Array.isArray(l) ? shown(`${l.length} points`) : l, { where });
  return l.map((p, i) => {
    if (!Array.isArray(p) || p.length !== 2 || !p.every((c) => typeof c === 'number' && Number.isFinite(c)))
      throw invalid(`landmark ${i}`, '[x, y] with finite numbers', p, { where });
    return [p[0], p[1]] as [number, number];
  });
}

/** How messages name an image input: its path, else what it is. */
export function describeImage(input: RawImage | string | Buffer): string {
  return typeof input === 'string' ? input : Buffer.isBuffer(input) ? 'the image buffer' : 'the image';
}

/** Decodes a file path, an encoded Buffer or a RawImage into RGB pixels (EXIF orientation applied). */
export function decodeFace(input: RawImage | string | Buffer | Uint8Array): Promise<RawImage> {
  return decodeImage(input, 'face');
}

/**
 * Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping `src` onto
 * `dst`: returns [a, −b, tx, b, a, ty] with x' = a·x − b·y + tx, y' = b·x + a·y + ty. For 2-D points
 * this closed form is Umeyama's estimate with the reflection excluded (det R = +1).
 */
export function estimateSimilarity(src: readonly (readonly [number, number])[], dst: readonly (readonly [number, number])[]): number[] {
  const n = src.length;
  if (n < 2 || dst.length !== n) throw invalid('src and dst', 'matching point sets of at least 2 points', shown(`${n} and ${dst.length}`), { where });
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
  if (!(varS > 1e-12)) throw invalid('the landmarks', 'distinct points (they all coincide: cannot estimate an alignment)', undefined, { where });
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
 * (zero fill, like OpenCV's BORDER_CONSTANT that insightface uses). `samples` > 1 averages a
 * samples×samples grid of bilinear taps per output pixel: an antialiasing filter for strong
 * downscales (see antialiasSamples).
 */
export function warpAffine(img: RawImage, m: readonly number[], size: number, samples = 1): RawImage {
  const [a, b, c, d, e, f] = m as [number, number, number, number, number, number];
  const det = a * e - b * d;
  if (!(Math.abs(det) > 1e-12)) throw invalid('the alignment transform', 'invertible', shown('a singular one'), { where });
  // inverse of [[a b],[d e]]
  const ia = e / det, ib = -b / det, id = -d / det, ie = a / det;
  const { width: W, height: H, data: src } = img;
  const out = new Uint8Array(size * size * 3);
  const px = [0, 0, 0];
  // Adds w × the bilinear sample at input point (x, y) to px.
  const tap = (x: number, y: number, w: number): void => {
    const x0 = Math.floor(x), y0 = Math.floor(y);
    const fx = x - x0, fy = y - y0;
    for (let j = 0; j < 2; j++) {
      const yy = y0 + j;
      if (yy < 0 || yy >= H) continue;
      const wy = (j ? fy : 1 - fy) * w;
      for (let i = 0; i < 2; i++) {
        const xx = x0 + i;
        if (xx < 0 || xx >= W) continue;
        const wt = wy * (i ? fx : 1 - fx);
        if (wt === 0) continue;
        const o = (yy * W + xx) * 3;
        px[0] += wt * src[o]!; px[1] += wt * src[o + 1]!; px[2] += wt * src[o + 2]!;
      }
    }
  };
  const n = Math.max(1, Math.floor(samples));
  for (let v = 0; v < size; v++) {
    for (let u = 0; u < size; u++) {
      px[0] = px[1] = px[2] = 0;
      // sub-sample centres spread evenly over the output pixel (just its centre when n = 1)
      for (let sv = 0; sv < n; sv++) {
        const vv = v + (sv + 0.5) / n - 0.5 - f;
        for (let su = 0; su < n; su++) {
          const uu = u + (su + 0.5) / n - 0.5 - c;
          tap(ia * uu + ib * vv, id * uu + ie * vv, 1 / (n * n));
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

/** Samples per axis that warpAffine needs to average away aliasing when `m` shrinks the image. */
export function antialiasSamples(m: readonly number[]): number {
  const scale = Math.hypot(m[0]!, m[3]!); // output pixels per input pixel
  return scale >= 1 ? 1 : Math.min(16, Math.ceil(1 / scale));
}

/** Halves an image: each pixel the mean of a 2×2 block (an odd last row or column is dropped). */
function halve(img: RawImage): RawImage {
  const w = Math.max(1, img.width >> 1), h = Math.max(1, img.height >> 1);
  const W = img.width, src = img.data, out = new Uint8Array(w * h * 3);
  const x1 = Math.min(1, img.width - 1), y1 = Math.min(1, img.height - 1) * W; // 1-pixel images average with themselves
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const o = (2 * y * W + 2 * x) * 3;
      for (let c = 0; c < 3; c++)
        out[(y * w + x) * 3 + c] = (src[o + c]! + src[o + x1 * 3 + c]! + src[o + y1 * 3 + c]! + src[o + (y1 + x1) * 3 + c]! + 2) >> 2;
    }
  return { width: w, height: h, channels: 3, data: out };
}

/**
 * An image with its successive 2× box-filtered halvings, built on demand: warps that shrink a lot
 * (the detector's passes over a large photo) sample the level just above the output resolution,
 * which costs a few taps per output pixel where supersampling the full image costs dozens.
 */
export class ImagePyramid {
  readonly #levels: RawImage[];

  constructor(readonly image: RawImage) {
    this.#levels = [image];
  }

  #level(j: number): RawImage {
    while (this.#levels.length <= j) this.#levels.push(halve(this.#levels[this.#levels.length - 1]!));
    return this.#levels[j]!;
  }

  /** warpAffine(image, m, size) with antialiasing, from the coarsest level that still has ≥ 1 pixel per output pixel. */
  warp(m: readonly number[], size: number): RawImage {
    const s = Math.hypot(m[0]!, m[3]!);
    let j = s < 1 ? Math.floor(Math.log2(1 / s)) : 0;
    while (j > 0 && Math.min(this.image.width, this.image.height) >> j < 2) j--;
    // level-j pixel centre x_j is level-0 point 2^j·x_j + (2^j − 1)/2
    const k = 2 ** j, off = (k - 1) / 2;
    const mj = [m[0]! * k, m[1]! * k, (m[0]! + m[1]!) * off + m[2]!, m[3]! * k, m[4]! * k, (m[3]! + m[4]!) * off + m[5]!];
    return warpAffine(this.#level(j), mj, size, antialiasSamples(mj));
  }
}
