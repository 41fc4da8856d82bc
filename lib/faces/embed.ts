/**
 * Face embedding: dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1, 29 conv
 * layers, 128-d; Davis King released it into the public domain), as the uint8-quantised TF.js
 * weights that ship in @vladmandic/face-api (model/face_recognition_model*). The forward pass is
 * written here in tfjs-core ops after face-api's FaceRecognitionNet (conv + per-channel scale,
 * residual blocks; MIT).
 *
 * Alignment follows dlib's own convention (get_face_chip_details(shape, 150, 0.25)): a similarity
 * maps the face's landmarks onto dlib's mean face shape, padded by 0.25 on each side, in a 150×150
 * chip; the chip is normalised as dlib's input_rgb_image does ((x − mean RGB) / 256).
 */
import type { NamedTensorMap, Tensor, Tensor4D } from '@tensorflow/tfjs-core';
import { IdforgeError } from '../errors.js';
import type { RawImage } from '../io/image.js';
import { antialiasSamples, estimateSimilarity, warpAffine } from './align.js';
import type { Point } from './detect.js';
import type { Tf } from './tf.js';

export const CHIP_SIZE = 150;
const CHIP_PADDING = 0.25;
const MEAN_RGB = [122.782, 117.001, 104.298];

/**
 * dlib's mean face (image_transforms/interpolation.h, points 17..67 of the 68-point iBUG layout, in
 * [0, 1]) reduced to the ArcFace order: the centres of the eye contours 36–41 and 42–47, the nose
 * tip 30, the mouth corners 48 and 54.
 */
const DLIB_MEAN_FACE_5: readonly Point[] = (() => {
  const x = [0.121737, 0.187122, 0.265825, 0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335];
  const y = [0.216423, 0.178758, 0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099];
  const eye = (o: number): Point => [x.slice(o, o + 6).reduce((s, v) => s + v) / 6, y.slice(o, o + 6).reduce((s, v) => s + v) / 6];
  return [eye(0), eye(6), [0.490127, 0.515625], [0.254149, 0.780233], [0.726104, 0.780233]];
})();

/** The 5 template points in chip pixels. */
export const CHIP_TEMPLATE: readonly Point[] = DLIB_MEAN_FACE_5.map(([x, y]) => [
  ((CHIP_PADDING + x) / (2 * CHIP_PADDING + 1)) * CHIP_SIZE,
  ((CHIP_PADDING + y) / (2 * CHIP_PADDING + 1)) * CHIP_SIZE,
]);

/** The aligned 150×150 chip dlib's network expects, from 5 ArcFace-order landmarks. */
export function faceChip(img: RawImage, landmarks: readonly Point[]): RawImage {
  const m = estimateSimilarity(landmarks, CHIP_TEMPLATE);
  return warpAffine(img, m, CHIP_SIZE, antialiasSamples(m));
}

interface ConvParams { filters: Tensor; bias: Tensor; scale: Tensor; shift: Tensor }

const BLOCKS = [
  'conv32_1', 'conv32_2', 'conv32_3', 'conv64_down', 'conv64_1', 'conv64_2', 'conv64_3',
  'conv128_down', 'conv128_1', 'conv128_2', 'conv256_down', 'conv256_1', 'conv256_2', 'conv256_down_out',
];

export class FaceEmbedder {
  readonly #conv = new Map<string, ConvParams>();
  readonly #fc: Tensor;

  constructor(private readonly tf: Tf, weights: NamedTensorMap, file: string) {
    const get = (name: string, rank: number): Tensor => {
      const t = weights[name];
      if (!t || t.rank !== rank) throw new IdforgeError('E_MODEL_FORMAT', `${file}: weight ${name} is missing or not of rank ${rank}`);
      return t;
    };
    const conv = (p: string) => this.#conv.set(p, {
      filters: get(`${p}/conv/filters`, 4), bias: get(`${p}/conv/bias`, 1), scale: get(`${p}/scale/weights`, 1), shift: get(`${p}/scale/biases`, 1),
    });
    conv('conv32_down');
    for (const b of BLOCKS) {
      conv(`${b}/conv1`);
      conv(`${b}/conv2`);
    }
    this.#fc = get('fc', 2);
    if (this.#fc.shape[1] !== 128) throw new IdforgeError('E_MODEL_FORMAT', `${file}: fc is ${JSON.stringify(this.#fc.shape)}, expected [256, 128]`);
  }

  #layer(x: Tensor4D, name: string, stride: 1 | 2, relu: boolean): Tensor4D {
    const tf = this.tf;
    const p = this.#conv.get(name)!;
    const y = tf.add(tf.mul(tf.add(tf.conv2d(x, p.filters as Tensor4D, stride, stride === 2 ? 'valid' : 'same'), p.bias), p.scale), p.shift) as Tensor4D;
    return relu ? tf.relu(y) : y;
  }

  /** A residual block; "_down" blocks halve the resolution and pad the skip path's channels with zeros. */
  #block(x: Tensor4D, name: string): Tensor4D {
    const tf = this.tf;
    const down = name.includes('_down');
    let out = this.#layer(this.#layer(x, `${name}/conv1`, down ? 2 : 1, true), `${name}/conv2`, 1, false);
    let skip = x;
    if (down) {
      skip = tf.avgPool(x, 2, 2, 'valid');
      // the strided 'valid' conv can come out one row/column short of the pooled skip path
      if (out.shape[1] !== skip.shape[1] || out.shape[2] !== skip.shape[2])
        out = tf.pad(out, [[0, 0], [0, skip.shape[1] - out.shape[1]], [0, skip.shape[2] - out.shape[2]], [0, 0]]);
      if (skip.shape[3] !== out.shape[3]) skip = tf.pad<Tensor4D>(skip, [[0, 0], [0, 0], [0, 0], [0, out.shape[3] - skip.shape[3]]]);
    }
    return tf.relu(tf.add(out, skip)) as Tensor4D;
  }

  /** The unit-length 128-d descriptor of an aligned 150×150 chip. */
  async embedChip(chip: RawImage): Promise<Float32Array> {
    const tf = this.tf;
    const f = new Float32Array(CHIP_SIZE * CHIP_SIZE * 3);
    for (let i = 0; i < f.length; i++) f[i] = (chip.data[i]! - MEAN_RGB[i % 3]!) / 256;
    const out = tf.tidy(() => {
      let x = this.#layer(tf.tensor4d(f, [1, CHIP_SIZE, CHIP_SIZE, 3]), 'conv32_down', 2, true);
      x = tf.maxPool(x, 3, 2, 'valid');
      for (const b of BLOCKS) x = this.#block(x, b);
      return tf.matMul(tf.mean(x, [1, 2]), this.#fc);
    });
    const v = new Float32Array(await out.data());
    out.dispose();
    let n = 0;
    for (const a of v) n += a * a;
    n = Math.sqrt(n);
    if (!(n > 0)) throw new IdforgeError('E_INTERNAL', 'the face embedding is zero');
    for (let i = 0; i < v.length; i++) v[i]! /= n;
    return v;
  }

  dispose(): void {
    for (const p of this.#conv.values()) for (const t of Object.values(p)) t.dispose();
    this.#conv.clear();
    this.#fc.dispose();
  }
}
