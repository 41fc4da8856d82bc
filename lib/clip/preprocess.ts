/**
 * CLIPImageProcessor's pipeline on a decoded RGB image: resize the shortest side to `shortestEdge`
 * with PIL's bicubic filter, centre crop, x/255, (x − mean)/std, channels first.
 *
 * The resize is PIL's Resample.c for 8-bit images, step for step (transformers hands PIL the
 * image): a Catmull-Rom cubic (a = −0.5) whose support widens by the scale when shrinking
 * (antialiasing), coefficients in 22-bit fixed point, the horizontal pass first, each pass
 * rounded and clamped to 0..255. So the same photo gives the same pixels as the Python stack.
 */
import type { ClipPreprocessConfig } from './config.js';
import type { RawImage } from '../io/image.js';

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 2 ** PRECISION_BITS;

function cubic(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** For each output index: first input index and the fixed-point weights (PIL precompute_coeffs). */
function coefficients(inSize: number, outSize: number): { start: Int32Array; weights: Float64Array[] } {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const start = new Int32Array(outSize);
  const weights: Float64Array[] = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = cubic((x + xmin - center + 0.5) / filterscale);
      ww += k[x]!;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww === 0 ? 0 : k[x]! / ww;
      k[x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    start[xx] = xmin;
    weights.push(k);
  }
  return { start, weights };
}

const clip8 = (ss: number): number => Math.min(255, Math.max(0, Math.floor(ss / ONE)));

/** One separable pass along x (horizontal) or y over interleaved RGB. */
function pass(src: Uint8Array, w: number, h: number, outW: number, outH: number, horizontal: boolean): Uint8Array {
  const out = new Uint8Array(outW * outH * 3);
  const { start, weights } = coefficients(horizontal ? w : h, horizontal ? outW : outH);
  for (let y = 0; y < outH; y++)
    for (let x = 0; x < outW; x++) {
      const i = horizontal ? x : y;
      const k = weights[i]!;
      const s0 = start[i]!;
      for (let c = 0; c < 3; c++) {
        let ss = ONE / 2;
        for (let j = 0; j < k.length; j++) {
          const at = horizontal ? (y * w + s0 + j) * 3 + c : ((s0 + j) * w + x) * 3 + c;
          ss += src[at]! * k[j]!;
        }
        out[(y * outW + x) * 3 + c] = clip8(ss);
      }
    }
  return out;
}

/** PIL `Image.resize((outW, outH), BICUBIC)` of an RGB image. */
export function resizeBicubic(img: RawImage, outW: number, outH: number): RawImage {
  let data = img.data;
  let w = img.width;
  if (outW !== w) {
    data = pass(data, w, img.height, outW, img.height, true);
    w = outW;
  }
  if (outH !== img.height) data = pass(data, w, img.height, outW, outH, false);
  return { width: outW, height: outH, channels: 3, data };
}

/** The processor's output: [3, cropHeight, cropWidth] float32, channels first. */
export function clipPixels(img: RawImage, c: ClipPreprocessConfig): Float32Array {
  // transformers' get_resize_output_image_size: the short side becomes shortestEdge, the long
  // side int(shortestEdge · long / short).
  const portrait = img.width <= img.height;
  const short = portrait ? img.width : img.height;
  const long = portrait ? img.height : img.width;
  const newLong = Math.trunc((c.shortestEdge * long) / short);
  const [w, h] = portrait ? [c.shortestEdge, newLong] : [newLong, c.shortestEdge];
  const r = resizeBicubic(img, w, h);
  // center_crop: top-left at floor((size − crop) / 2); outside the image (a crop larger than it) is 0.
  const top = Math.floor((h - c.cropHeight) / 2);
  const left = Math.floor((w - c.cropWidth) / 2);
  const plane = c.cropHeight * c.cropWidth;
  const out = new Float32Array(3 * plane);
  for (let y = 0; y < c.cropHeight; y++)
    for (let x = 0; x < c.cropWidth; x++) {
      const sy = y + top, sx = x + left;
      const inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
      for (let ch = 0; ch < 3; ch++) {
        const v = inside ? r.data[(sy * w + sx) * 3 + ch]! : 0;
        out[ch * plane + y * c.cropWidth + x] = (v / 255 - c.mean[ch]!) / c.std[ch]!;
      }
    }
  return out;
}
