/**
 * Face detection: MediaPipe BlazeFace (the 256² "back camera" model) proposes faces, MediaPipe
 * FaceMesh (468 landmarks + a face-presence score) confirms each one and gives its landmarks.
 * Both are the TF.js graph models that ship in @vladmandic/human (models/blazeface.json,
 * models/facemesh.json; generated from google/mediapipe, Apache-2.0).
 *
 * Large photos are also scanned in overlapping tiles (half, then a quarter of the photo's side,
 * half-tile stride) so that small faces, which shrink below BlazeFace's reach when the whole photo
 * is fitted into 256², are still proposed. Proposals from all passes are merged by non-maximum
 * suppression; the mesh runs twice per face: on the detector's box, then on the box its own first
 * landmarks give (rotated upright by the eye line), and its face score decides what is a face.
 */
import type { RawImage } from '../io/image.js';
import { antialiasSamples, applyTransform, warpAffine } from './align.js';
import type { GraphModel, Tf } from './tf.js';

export type Point = [number, number];

export interface Face {
  /** [x0, y0, x1, y1] in input pixels: the bounds of the 468 mesh points. */
  box: [number, number, number, number];
  /** FaceMesh's face-presence score in [0, 1]. */
  score: number;
  /** 5 points in the ArcFace template's order: eye on the image's left, other eye, nose tip, mouth corner on the image's left, other mouth corner. */
  landmarks: Point[];
  /** The 468 FaceMesh points (x, y) in input pixels. */
  mesh: Point[];
}

export interface DetectOptions {
  /** Minimum FaceMesh face score (default 0.5). */
  minScore?: number;
  /** At most this many faces, the largest first (default 20). */
  maxFaces?: number;
  /** Scan large photos in tiles too (default true). */
  tiles?: boolean;
}

const DET_SIZE = 256;
const MESH_SIZE = 192;
/** BlazeFace proposals below this score are dropped before the mesh looks at them. */
const DET_MIN_SCORE = 0.4;
/** ROI side = this × the face box side (MediaPipe's face-landmark ROI scale). */
const ROI_SCALE = 1.5;
/** A tile level is scanned while its tiles are at least this many pixels wide. */
const MIN_TILE = 512;

/**
 * MediaPipe mesh indices: the contour of the eye on the image's left (the person's right eye), the
 * other eye, the nose tip, the mouth corners. The nose point is the mean of mesh points 1 and 4
 * (just above the nostrils and the tip's highlight): hand-marked nose tips on the test photos lie
 * between the two.
 */
const EYE_L = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246];
const EYE_R = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466];
const NOSE_TIP = [1, 4];
const MOUTH_L = 61;
const MOUTH_R = 291;

interface Proposal {
  box: [number, number, number, number];
  score: number;
  /** BlazeFace's eye keypoints (image-left eye first for an upright face). */
  eyes: [Point, Point];
}

/** BlazeFace anchors for a 256² input: 16×16 cells × 2 then 8×8 × 6, centres in input pixels. */
function anchors(): Point[] {
  const out: Point[] = [];
  for (const [stride, per] of [[16, 2], [32, 6]] as const) {
    const cells = DET_SIZE / stride;
    for (let y = 0; y < cells; y++)
      for (let x = 0; x < cells; x++)
        for (let k = 0; k < per; k++) out.push([(x + 0.5) * stride, (y + 0.5) * stride]);
  }
  return out;
}

function iou(a: readonly number[], b: readonly number[]): number {
  const w = Math.min(a[2]!, b[2]!) - Math.max(a[0]!, b[0]!);
  const h = Math.min(a[3]!, b[3]!) - Math.max(a[1]!, b[1]!);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  return inter / ((a[2]! - a[0]!) * (a[3]! - a[1]!) + (b[2]! - b[0]!) * (b[3]! - b[1]!) - inter);
}

/** Greedy non-maximum suppression: the best-scoring of each overlapping group. */
function nms<T extends { box: readonly number[]; score: number }>(items: T[], threshold: number): T[] {
  const kept: T[] = [];
  for (const it of [...items].sort((a, b) => b.score - a.score))
    if (kept.every((k) => iou(k.box, it.box) < threshold)) kept.push(it);
  return kept;
}

/** RGB bytes of a square crop → [1, N, N, 3] float tensor, (x·mul + add). */
function toInput(tf: Tf, img: RawImage, mul: number, add: number): ReturnType<Tf['tensor4d']> {
  const f = new Float32Array(img.data.length);
  for (let i = 0; i < f.length; i++) f[i] = img.data[i]! * mul + add;
  return tf.tensor4d(f, [1, img.height, img.width, 3]);
}

/**
 * The 2×3 transform input pixels → pixels of an N×N crop of the square of side `side` centred at
 * `c`, rotated by `angle` (radians; the crop's x axis runs along that direction in the input).
 */
function cropTransform(c: Point, side: number, angle: number, n: number): number[] {
  const s = n / side, cos = Math.cos(angle) * s, sin = Math.sin(angle) * s;
  const h = n / 2 - 0.5;
  return [cos, sin, h - (cos * c[0] + sin * c[1]), -sin, cos, h - (-sin * c[0] + cos * c[1])];
}

function invert(m: readonly number[]): number[] {
  const [a, b, c, d, e, f] = m as [number, number, number, number, number, number];
  const det = a * e - b * d;
  return [e / det, -b / det, (b * f - c * e) / det, -d / det, a / det, (c * d - a * f) / det];
}

export class FaceDetector {
  readonly #anchors = anchors();

  constructor(private readonly tf: Tf, private readonly blazeface: GraphModel, private readonly facemesh: GraphModel) {}

  dispose(): void {
    this.blazeface.dispose();
    this.facemesh.dispose();
  }

  /** BlazeFace on the square (x0, y0, side) of the image (edge coordinates; outside is black). */
  async #propose(img: RawImage, x0: number, y0: number, side: number): Promise<Proposal[]> {
    const tf = this.tf;
    // pixel centres: input (x + 0.5 − x0)·k − 0.5 = crop u
    const k = DET_SIZE / side;
    const m = [k, 0, (0.5 - x0) * k - 0.5, 0, k, (0.5 - y0) * k - 0.5];
    const crop = warpAffine(img, m, DET_SIZE, antialiasSamples(m));
    const input = toInput(tf, crop, 1 / 127.5, -1);
    const outs = this.blazeface.execute(input) as ReturnType<Tf['tensor']>[];
    input.dispose();
    try {
      // outputs: scores [1,512,1] + [1,384,1] and regressors [1,512,16] + [1,384,16] (16² cells first)
      const by = (n: number, d: number) => outs.find((t) => t.shape[1] === n && t.shape[2] === d)!;
      const scores = [...(await by(512, 1).data()), ...(await by(384, 1).data())];
      const regs = [...(await by(512, 16).data()), ...(await by(384, 16).data())];
      const back = (p: Point): Point => [x0 + p[0] / k - 0.5, y0 + p[1] / k - 0.5]; // crop edge coords → input pixel centres
      const found: Proposal[] = [];
      scores.forEach((logit, i) => {
        const score = 1 / (1 + Math.exp(-logit));
        if (!(score >= DET_MIN_SCORE)) return;
        const r = regs.slice(i * 16, i * 16 + 16);
        const [ax, ay] = this.#anchors[i]!;
        const cx = ax + r[0]!, cy = ay + r[1]!, w = r[2]!, h = r[3]!;
        const a = back([cx - w / 2, cy - h / 2]), b = back([cx + w / 2, cy + h / 2]);
        found.push({ box: [a[0], a[1], b[0], b[1]], score, eyes: [back([ax + r[4]!, ay + r[5]!]), back([ax + r[6]!, ay + r[7]!])] });
      });
      return nms(found, 0.3);
    } finally {
      for (const t of outs) t.dispose();
    }
  }

  /** FaceMesh on the ROI: face score and the 468 points in input pixels. */
  async #mesh(img: RawImage, centre: Point, side: number, angle: number): Promise<{ score: number; points: Point[] }> {
    const m = cropTransform(centre, side, angle, MESH_SIZE);
    const crop = warpAffine(img, m, MESH_SIZE, antialiasSamples(m));
    const input = toInput(this.tf, crop, 1 / 255, 0);
    const outs = this.facemesh.execute(input) as ReturnType<Tf['tensor']>[];
    input.dispose();
    try {
      const score = (await outs.find((t) => t.shape[t.shape.length - 1] === 1)!.data())[0]!;
      const raw = await outs.find((t) => t.shape[t.shape.length - 1] === 1404)!.data();
      const inv = invert(m);
      const points: Point[] = [];
      // mesh coordinates are continuous over the crop (pixel i spans [i, i+1)): −0.5 for pixel centres
      for (let i = 0; i < 468; i++) points.push(applyTransform(inv, [raw[i * 3]! - 0.5, raw[i * 3 + 1]! - 0.5]));
      return { score, points };
    } finally {
      for (const t of outs) t.dispose();
    }
  }

  /** Faces in the image, the largest first. */
  async detect(img: RawImage, opts: Required<DetectOptions>): Promise<Face[]> {
    const L = Math.max(img.width, img.height);
    // the whole photo, fitted (centred) into one square, then tile levels over that square
    const sx = (img.width - L) / 2, sy = (img.height - L) / 2;
    let proposals = await this.#propose(img, sx, sy, L);
    if (opts.tiles)
      for (let tile = L / 2; tile >= MIN_TILE; tile /= 2) {
        const steps = Math.round((L - tile) / (tile / 2));
        for (let j = 0; j <= steps; j++)
          for (let i = 0; i <= steps; i++) {
            const x0 = sx + (i * tile) / 2, y0 = sy + (j * tile) / 2;
            // skip tiles that lie wholly in the letterbox
            if (x0 + tile <= 0 || y0 + tile <= 0 || x0 >= img.width || y0 >= img.height) continue;
            proposals.push(...(await this.#propose(img, x0, y0, tile)));
          }
      }
    proposals = nms(proposals, 0.3).slice(0, Math.max(opts.maxFaces * 2, 10));

    const faces: Face[] = [];
    for (const p of proposals) {
      const [e0, e1] = p.eyes;
      let angle = Math.atan2(e1[1] - e0[1], e1[0] - e0[0]);
      let centre: Point = [(p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2];
      let side = Math.max(p.box[2] - p.box[0], p.box[3] - p.box[1]) * ROI_SCALE;
      if (!(side > 4)) continue;
      let mesh = await this.#mesh(img, centre, side, angle);
      // second pass on the ROI the mesh itself gives: centred, upright by the eye line
      ({ angle, centre, side } = roiFromMesh(mesh.points));
      mesh = await this.#mesh(img, centre, side, angle);
      if (!(mesh.score >= opts.minScore)) continue;
      faces.push(toFace(mesh.points, mesh.score));
    }
    const area = (f: Face) => (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]);
    // tiles can find one face twice: keep the better-scored copy
    return nms(faces, 0.5).sort((a, b) => area(b) - area(a)).slice(0, opts.maxFaces);
  }
}

function mean(points: Point[], idx: readonly number[]): Point {
  let x = 0, y = 0;
  for (const i of idx) {
    x += points[i]![0]; y += points[i]![1];
  }
  return [x / idx.length, y / idx.length];
}

/** The mesh's 5 ArcFace-order points and bounds. */
function toFace(points: Point[], score: number): Face {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const [x, y] of points) {
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
  }
  return {
    box: [x0, y0, x1, y1], score,
    landmarks: [mean(points, EYE_L), mean(points, EYE_R), mean(points, NOSE_TIP), points[MOUTH_L]!, points[MOUTH_R]!],
    mesh: points,
  };
}

/** MediaPipe's landmarks-to-ROI: rotation from the eye line, the points' bounds in that frame, × 1.5. */
function roiFromMesh(points: Point[]): { angle: number; centre: Point; side: number } {
  const l = mean(points, EYE_L), r = mean(points, EYE_R);
  const angle = Math.atan2(r[1] - l[1], r[0] - l[0]);
  const cos = Math.cos(angle), sin = Math.sin(angle);
  let u0 = Infinity, v0 = Infinity, u1 = -Infinity, v1 = -Infinity;
  for (const [x, y] of points) {
    const u = cos * x + sin * y, v = -sin * x + cos * y;
    u0 = Math.min(u0, u); v0 = Math.min(v0, v); u1 = Math.max(u1, u); v1 = Math.max(v1, v);
  }
  const uc = (u0 + u1) / 2, vc = (v0 + v1) / 2;
  return { angle, centre: [cos * uc - sin * vc, sin * uc + cos * vc], side: Math.max(u1 - u0, v1 - v0) * ROI_SCALE };
}
