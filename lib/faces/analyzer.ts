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
import { bool, describe, integer, invalid, numberIn, shown } from '../validate.js';

export type FaceImage = RawImage | string | Buffer;

export interface FaceAnalyzerOptions {
  /** Folder holding blazeface.json and facemesh.json (default: @vladmandic/human's models/). */
  detectorDir?: string;
  /** Folder holding face_recognition_model-weights_manifest.json (default: @vladmandic/face-api's model/). */
  embedderDir?: string;
}

function checkDetectOptions(o: DetectOptions): Required<DetectOptions> {
  const where = 'detect';
  if (o === null || typeof o !== 'object') throw invalid('options', 'an object', o, { where });
  const minScore = numberIn(o.minScore ?? 0.5, 'minScore', 0, 1, { where });
  const maxFaces = integer(o.maxFaces ?? 20, 'maxFaces', 1, Number.MAX_SAFE_INTEGER, where);
  const tiles = bool(o.tiles ?? true, 'tiles', where);
  return { minScore, maxFaces, tiles };
}

/** Cosine similarity of two embeddings. */
export function similarity(a: Float32Array, b: Float32Array): number {
  if (!(a instanceof Float32Array) || !(b instanceof Float32Array) || a.length !== b.length || a.length === 0)
    throw invalid('a and b', 'two Float32Array embeddings of one length', shown(`${describe(a)} and ${describe(b)}`), { where: 'similarity' });
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
    if (opts === null || typeof opts !== 'object') throw invalid('options', 'an object', opts, { where: 'FaceAnalyzer.load' });
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
