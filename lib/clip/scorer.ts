/**
 * ClipScorer: a Hugging Face CLIPModel folder (config.json, model.safetensors,
 * preprocessor_config.json, the tokenizer in tokenizer/ or beside the weights) run on the
 * engine's own ops, CPU or CUDA. Image and text embeddings, and the CLIP score of an image and a
 * text: 100 · max(cos, 0), the CLIP-T of the identity-customisation papers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IdforgeError } from '../errors.js';
import type { BackendSpec, Program } from '../graph/program.js';
import type { Weights } from '../graph/weights.js';
import { safetensorsRefs } from '../io/checkpoint.js';
import { readJsonFile } from '../io/configs.js';
import { decodeImage, type RawImage } from '../io/image.js';
import { cosine } from '../numeric.js';
import { SafetensorsFile } from '../io/safetensors.js';
import type { DeviceOptions } from '../runtime/runtime.js';
import { ModelRuntime, resolveBackend, toHost } from '../runtime/runtime.js';
import { Tensor } from '../tensor.js';
import { ClipTokenizer, pack } from '../text/tokenizer.js';
import { checkClipWeights, parseClipConfig, parsePreprocessConfig, type ClipConfig } from './config.js';
import { clipPixels } from './preprocess.js';
import { buildImageTower, buildTextTower } from './towers.js';
import { invalid, options, shown, text } from '../validate.js';

/** Device and dtype: the runtime's rule ('auto' takes CUDA when usable; float16 on CUDA, float32 on the CPU). */
export type ClipLoadOptions = DeviceOptions;

export interface ClipScore {
  /** cos(image embedding, text embedding), in [−1, 1]. */
  cosine: number;
  /** 100 · max(cosine, 0). */
  score: number;
}


export { cosine };

/** The CLIP score of a cosine: 100 · max(cos, 0). */
export function clipScore(cos: number): number {
  return 100 * Math.max(cos, 0);
}

/** The scorer's model runtime: its weights (one group), device, stream and programs (per tower and batch size). */
class ClipRuntime extends ModelRuntime {
  readonly weights: Weights;
  constructor(backend: BackendSpec, file: SafetensorsFile) {
    super(backend, 'ClipScorer');
    this.adopt(() => file.close());
    this.weights = this.addWeights('clip', safetensorsRefs(file));
  }
}

export class ClipScorer implements Disposable {
  readonly #rt: ClipRuntime;

  private constructor(
    readonly config: ClipConfig,
    readonly tokenizer: ClipTokenizer,
    rt: ClipRuntime,
    readonly dir: string,
  ) {
    this.#rt = rt;
  }

  /** Device, dtype and (on CUDA) the scorer's own stream. */
  get backend(): BackendSpec {
    return this.#rt.backend;
  }

  /** Opens a CLIPModel folder and checks every weight's name and shape against config.json. */
  static async load(dir: string, opts: ClipLoadOptions = {}): Promise<ClipScorer> {
    options(opts, 'options', 'ClipScorer.load');
    const backend = resolveBackend(opts);
    text(dir, 'CLIP folder', { nonEmpty: true, where: 'ClipScorer.load' });
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new IdforgeError('E_NOT_FOUND', `CLIP folder not found: ${dir}`);
    const cfgFile = path.join(dir, 'config.json');
    const modelFile = path.join(dir, 'model.safetensors');
    if (!fs.existsSync(cfgFile)) throw new IdforgeError('E_NOT_FOUND', `${dir}: no config.json (a CLIP folder holds config.json, model.safetensors, preprocessor_config.json and the tokenizer)`);
    if (!fs.existsSync(modelFile)) {
      const pickle = fs.existsSync(path.join(dir, 'pytorch_model.bin')) ? ' (pytorch_model.bin is a pickle and is not read: convert it to safetensors)' : '';
      throw new IdforgeError('E_NOT_FOUND', `${dir}: no model.safetensors${pickle}`);
    }
    const base = parseClipConfig(readJsonFile(cfgFile), cfgFile);
    const ppFile = path.join(dir, 'preprocessor_config.json');
    const preprocess = parsePreprocessConfig(fs.existsSync(ppFile) ? readJsonFile(ppFile) : undefined, base.vision.imageSize, ppFile);
    const tokDir = fs.existsSync(path.join(dir, 'tokenizer', 'vocab.json')) ? path.join(dir, 'tokenizer') : dir;
    const tokenizer = ClipTokenizer.fromDir(tokDir);
    if (tokenizer.vocabSize > base.text.vocabSize)
      throw new IdforgeError('E_MODEL_FORMAT', `${tokDir}: the tokenizer has ${tokenizer.vocabSize} tokens, the text tower ${base.text.vocabSize}`);
    const st = SafetensorsFile.open(modelFile);
    try {
      const preNorm = checkClipWeights(st, base);
      return new ClipScorer({ ...base, preprocess, preNorm }, tokenizer, new ClipRuntime(backend, st), dir);
    } catch (e) {
      st.close();
      throw e;
    }
  }

  /** Width of the embeddings (projection_dim). */
  get dim(): number {
    return this.config.projectionDim;
  }

  /** Side of the square image the vision tower takes. */
  get imageSize(): number {
    return this.config.vision.imageSize;
  }

  get disposed(): boolean {
    return this.#rt.disposed;
  }

  async #run(p: Program, inputs: Tensor[]): Promise<Tensor> {
    const [out] = await p.run(inputs);
    return toHost(out!);
  }

  /** Projected image embeddings [B, E] (float32, CPU) of pixels [B, 3, S, S] already normalised by preprocess(). */
  async embedImage(pixels: Tensor): Promise<Tensor> {
    const rt = this.#rt;
    rt.assertLive();
    const s = this.imageSize;
    if (!(pixels instanceof Tensor)) throw invalid('pixels', 'a Tensor [B, 3, S, S] (use preprocess() for images)', pixels, { where: 'embedImage' });
    const shape = pixels.shape;
    if (shape.length !== 4 || shape[1] !== 3 || shape[2] !== s || shape[3] !== s || shape[0] === 0)
      throw new IdforgeError('E_SHAPE', `CLIP image input must be [B, 3, ${s}, ${s}], got ${JSON.stringify(shape)}`);
    if (pixels.dtype !== 'float32' && pixels.dtype !== 'float16') throw invalid('CLIP image input', 'float32 or float16', pixels.dtype);
    const b = shape[0]!;
    await rt.weights.preload(undefined, (n) => n.startsWith('vision_model.') || n.startsWith('visual_projection.'));
    const p = rt.program(`image:${b}`, (g) => {
      g.output(buildImageTower(g, rt.weights, this.config.vision, this.config.preNorm, g.input([b, 3, s, s])));
    });
    const own = pixels.device !== this.backend.device || pixels.dtype !== this.backend.dtype;
    const input = own ? rt.upload(pixels) : pixels;
    try {
      return await this.#run(p, [input]);
    } finally {
      if (own) input.dispose();
    }
  }

  /** Token ids (BOS, content, EOS, padding to max_position_embeddings) of a text. */
  tokenize(text: string): Int32Array {
    const n = this.config.text.maxPositionEmbeddings;
    return pack(this.tokenizer.idsFor(text, n - 1), { maxLength: n, bos: this.tokenizer.bos, eos: this.tokenizer.eos }).ids;
  }

  /** Projected text embeddings [B, E] (float32, CPU) of texts or token id rows (each max_position_embeddings long). */
  async embedText(texts: string | readonly (string | Int32Array)[]): Promise<Tensor> {
    const rt = this.#rt;
    rt.assertLive();
    const list = typeof texts === 'string' ? [texts] : texts;
    if (!Array.isArray(list) || list.length === 0) throw invalid('texts', 'a text or a non-empty list of texts / Int32Array token ids', texts, { where: 'embedText' });
    const { maxPositionEmbeddings: n, vocabSize, eosTokenId } = this.config.text;
    const b = list.length;
    const ids = new Int32Array(b * n);
    const rows = new Int32Array(b);
    list.forEach((x, i) => {
      let row: Int32Array;
      if (typeof x === 'string') row = this.tokenize(x);
      else if (x instanceof Int32Array) {
        if (x.length !== n) throw new IdforgeError('E_SHAPE', `token ids must be ${n} long, got ${x.length}`);
        for (const id of x) if (id < 0 || id >= vocabSize) throw invalid('a token id', `inside the vocabulary (0..${vocabSize - 1})`, id);
        row = x;
      } else throw invalid(`texts[${i}]`, 'a string or an Int32Array', x, { where: 'embedText' });
      // HF CLIPTextTransformer pools at the first EOS (the argmax of the ids when eos_token_id is
      // the legacy 2; with CLIP's vocabulary both are the same position).
      const eos = eosTokenId === 2 ? argmax(row) : row.indexOf(eosTokenId);
      if (eos < 0) throw invalid(`texts[${i}]`, `token ids holding the end-of-text token (${eosTokenId})`, shown('none'));
      ids.set(row, i * n);
      rows[i] = i * n + eos;
    });
    await rt.weights.preload(undefined, (name) => name.startsWith('text_model.') || name.startsWith('text_projection.'));
    const p = rt.program(`text:${b}`, (g) => {
      g.output(buildTextTower(g, rt.weights, this.config.text, g.input([b, n], 'int32'), g.input([b], 'int32')));
    });
    using idsT = rt.ints(ids, [b, n]);
    using rowsT = rt.ints(rows, [b]);
    return this.#run(p, [idsT, rowsT]);
  }

  /**
   * The vision tower's input for an image (RawImage, file path or encoded Buffer): bicubic resize
   * of the shortest side, centre crop, preprocessor_config.json's mean/std → [1, 3, S, S] float32 CPU.
   */
  async preprocess(image: RawImage | string | Buffer): Promise<Tensor> {
    this.#rt.assertLive();
    const img = await decodeImage(image, 'image');
    const c = this.config.preprocess;
    return Tensor.from(clipPixels(img, c), [1, 3, c.cropHeight, c.cropWidth]);
  }

  /** CLIP-T of one image and one text: the raw cosine and 100 · max(cos, 0). A Tensor is taken as preprocessed pixels [1, 3, S, S]. */
  async score(image: RawImage | string | Buffer | Tensor, text: string | Int32Array): Promise<ClipScore> {
    const pixels = image instanceof Tensor ? image : await this.preprocess(image);
    try {
      if (pixels.shape[0] !== 1) throw new IdforgeError('E_SHAPE', `score() takes one image, got a batch of ${pixels.shape[0]}`);
      using ie = await this.embedImage(pixels);
      using te = await this.embedText([text]);
      const cos = cosine(ie.toFloat32(), te.toFloat32());
      return { cosine: cos, score: clipScore(cos) };
    } finally {
      if (pixels !== image) pixels.dispose();
    }
  }

  dispose(): void {
    this.#rt.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function argmax(a: Int32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[best]!) best = i;
  return best;
}
