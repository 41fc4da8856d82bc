/**
 * FaceAnalyzer: finds faces (BlazeFace + FaceMesh, Apache-2.0) and embeds them (dlib's ResNet,
 * public domain) with pretrained models read from the installed npm packages; nothing is
 * downloaded. See README "Measuring identity" for the models' origins and licences.
 */
import * as path from 'node:path';
import { IdforgeError } from '../errors.js';
import { cosine } from '../numeric.js';
import type { RawImage } from '../io/image.js';
import { checkLandmarks, decodeFace, describeImage } from './align.js';
import { FaceDetector, type DetectOptions, type Face } from './detect.js';
import { FaceEmbedder, faceChip } from './embed.js';
import { loadTf, packageDir, readGraphModel, readWeights } from './tf.js';

export type FaceImage = RawImage | string | Buffer;

export interface FaceAnalyzerOptions {
  /** Folder holding blazeface.json and facemesh.json (default: @vladmandic/human's models/). */
  detectorDir?: string;
  /** Folder holding face_recognition_model-weights_manifest.json (default: @vladmandic/face-api's model/). */
  embedderDir?: string;
}

function checkDetectOptions(o: DetectOptions): Required<DetectOptions> {
  if (o === null || typeof o !== 'object') throw new IdforgeError('E_ARGUMENT', 'detect: options must be an object');
  const minScore = o.minScore ?? 0.5;
  if (typeof minScore !== 'number' || !(minScore >= 0 && minScore <= 1)) throw new IdforgeError('E_ARGUMENT', `detect: minScore must be in [0, 1], got ${String(minScore)}`);
  const maxFaces = o.maxFaces ?? 20;
  if (!Number.isInteger(maxFaces) || maxFaces < 1) throw new IdforgeError('E_ARGUMENT', `detect: maxFaces must be an integer ≥ 1, got ${String(maxFaces)}`);
  const tiles = o.tiles ?? true;
  if (typeof tiles !== 'boolean') throw new IdforgeError('E_ARGUMENT', 'detect: tiles must be a boolean');
  return { minScore, maxFaces, tiles };
}

/** Cosine similarity of two embeddings. */
export function similarity(a: Float32Array, b: Float32Array): number {
  if (!(a instanceof Float32Array) || !(b instanceof Float32Array) || a.length !== b.length || a.length === 0)
    throw new IdforgeError('E_ARGUMENT', `similarity: expected two Float32Array embeddings of one length, got ${a?.length} and ${b?.length}`);
  return cosine(a, b);
}

let shared: Promise<FaceAnalyzer> | null = null;

export class FaceAnalyzer implements Disposable {
  #detector: FaceDetector | null;
  #embedder: FaceEmbedder | null;

  private constructor(detector: FaceDetector, embedder: FaceEmbedder) {
    this.#detector = detector;
    this.#embedder = embedder;
  }

  /** Loads the detector and the embedder (E_BACKEND when the optional packages are not installed). */
  static async load(opts: FaceAnalyzerOptions = {}): Promise<FaceAnalyzer> {
    if (opts === null || typeof opts !== 'object') throw new IdforgeError('E_ARGUMENT', 'FaceAnalyzer.load: options must be an object');
    const detDir = opts.detectorDir ?? path.join(packageDir('@vladmandic/human'), 'models');
    const embDir = opts.embedderDir ?? path.join(packageDir('@vladmandic/face-api'), 'model');
    const { tf } = await loadTf();
    const [blazeface, facemesh] = await Promise.all([readGraphModel(path.join(detDir, 'blazeface.json')), readGraphModel(path.join(detDir, 'facemesh.json'))]);
    const embFile = path.join(embDir, 'face_recognition_model-weights_manifest.json');
    const embedder = new FaceEmbedder(tf, await readWeights(embFile), embFile);
    return new FaceAnalyzer(new FaceDetector(tf, blazeface, facemesh), embedder);
  }

  /** One analyzer with the default models, loaded on first call and kept for the process (prepareFace's default). */
  static async shared(): Promise<FaceAnalyzer> {
    if (shared && (await shared.catch(() => null))?.disposed === false) return shared;
    shared = FaceAnalyzer.load();
    shared.catch(() => { shared = null; });
    return shared;
  }

  #live(): { detector: FaceDetector; embedder: FaceEmbedder } {
    if (!this.#detector || !this.#embedder) throw new IdforgeError('E_DISPOSED', 'FaceAnalyzer used after dispose()');
    return { detector: this.#detector, embedder: this.#embedder };
  }

  /** Faces in the image, the largest first: box, score, 5 ArcFace-order landmarks and the mesh, in input pixels. */
  async detect(image: FaceImage, opts: DetectOptions = {}): Promise<Face[]> {
    const o = checkDetectOptions(opts);
    const { detector } = this.#live();
    return detector.detect(await decodeFace(image), o);
  }

  /**
   * The unit-length 128-d embedding of a face: of `face` (its landmarks) when given, else of the
   * largest face found (E_NO_FACE when there is none).
   */
  async embed(image: FaceImage, face?: Pick<Face, 'landmarks'>): Promise<Float32Array> {
    const { detector, embedder } = this.#live();
    const img = await decodeFace(image);
    let landmarks = face === undefined ? undefined : checkLandmarks(face?.landmarks);
    if (!landmarks) {
      const [largest] = await detector.detect(img, checkDetectOptions({ maxFaces: 1 }));
      if (!largest) throw new IdforgeError('E_NO_FACE', `no face found in ${describeImage(image)}`);
      landmarks = largest.landmarks;
    }
    return embedder.embedChip(faceChip(img, landmarks));
  }

  get disposed(): boolean {
    return !this.#detector;
  }

  dispose(): void {
    this.#embedder?.dispose();
    this.#detector?.dispose();
    this.#embedder = null;
    this.#detector = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
