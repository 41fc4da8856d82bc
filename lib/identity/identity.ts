/**
 * One representation of an identity for both methods (docs/ARCHITECTURE.md "One representation of an
 * identity"): S stages × M words × D dims of key vectors `k` and value vectors `v`.
 * DreamIdentity is S=1 with k = v; SeFi-IDE is S=5, M=1 with separate K and V tokens.
 * Stage i serves timesteps [i·T/S, (i+1)·T/S) of the T training timesteps.
 *
 * File format: safetensors with `k` and `v`, both F32 [S, M, D], and string metadata
 * (format "idforge-identity", version, method, stages, words, dim, text_dim, vocab_hash, created,
 * name, source). Small enough to mail around; loading validates everything before anything is used.
 */
import { IdforgeError } from '../errors.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { invalid, shown } from '../validate.js';

export type IdentityMethod = 'dreamidentity' | 'sefi-ide' | 'custom';

/** Nested [S][M][D] (or [M][D] for S=1) arrays, or flat row-major S·M·D values. */
export type IdentityValues = ArrayLike<ArrayLike<ArrayLike<number>>> | ArrayLike<ArrayLike<number>> | Float32Array | Float64Array | number[];

export interface IdentityInit {
  k: IdentityValues;
  /** Defaults to k (DreamIdentity). */
  v?: IdentityValues;
  stages?: number;
  words?: number;
  dim?: number;
  method: IdentityMethod;
  name?: string;
}

export interface IdentitySaveOptions {
  /** Width of the text model the identity was made for (defaults to dim). */
  textDim?: number;
  /** ClipTokenizer.vocabHash of the model's tokenizer ('' when unknown). */
  vocabHash?: string;
  /** Where the identity came from (e.g. the photo's file name), kept as metadata `source` (≤ 200 characters). */
  source?: string;
}

export interface IdentityExpect {
  /** The model's text width: the identity's dim must equal it. */
  dim?: number;
  /** The model's tokenizer vocabHash: refused when the file records a different one. */
  vocabHash?: string;
}

export const IDENTITY_FORMAT = 'idforge-identity';
export const IDENTITY_VERSION = 1;
const METHODS: readonly IdentityMethod[] = ['dreamidentity', 'sefi-ide', 'custom'];

/** Identity's argument errors: invalid() with the `Identity: ` prefix. */
const badArg = (name: string, expected: string, got?: unknown) => invalid(name, expected, got, { where: 'Identity' });

function isPosInt(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n > 0;
}

function isFlat(x: unknown): x is ArrayLike<number> {
  if (x instanceof Float32Array || x instanceof Float64Array) return true;
  return Array.isArray(x) && (x.length === 0 || typeof x[0] === 'number');
}

/** Flattens nested values, checking that they are rectangular; returns the data and its shape. */
function flattenNested(x: ArrayLike<unknown>, what: string): { data: Float32Array; shape: number[] } {
  const shape: number[] = [];
  let probe: unknown = x;
  while (probe !== null && typeof probe === 'object' && 'length' in (probe as object) && typeof probe !== 'string') {
    const a = probe as ArrayLike<unknown>;
    shape.push(a.length);
    if (a.length === 0) break;
    probe = a[0];
  }
  if (shape.length < 2 || shape.length > 3) throw badArg(what, 'nested [S][M][D] or [M][D] arrays or a flat Float32Array', shown(`${shape.length} levels of nesting`));
  if (shape.some((d) => d === 0)) throw badArg(what, 'without an empty dimension', shown(`shape ${JSON.stringify(shape)}`));
  const full = shape.length === 2 ? [1, ...shape] : shape;
  const [S, M, D] = full as [number, number, number];
  const data = new Float32Array(S * M * D);
  const outer = (shape.length === 2 ? [x] : x) as ArrayLike<ArrayLike<ArrayLike<unknown>>>;
  for (let s = 0; s < S; s++) {
    const rows = outer[s];
    if (!rows || rows.length !== M) throw badArg(`${what}[${s}]`, `${M} words (rectangular)`, shown(`${rows?.length ?? 0} words`));
    for (let m = 0; m < M; m++) {
      const row = rows[m];
      if (!row || row.length !== D) throw badArg(`${what}[${s}][${m}]`, `${D} values (rectangular)`, shown(`${row?.length ?? 0} values`));
      for (let d = 0; d < D; d++) {
        const val = row[d];
        if (typeof val !== 'number') throw badArg(`${what}[${s}][${m}][${d}]`, 'a number', val);
        data[(s * M + m) * D + d] = val;
      }
    }
  }
  return { data, shape: full };
}

function firstNonFinite(a: ArrayLike<number>): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

export class Identity {
  readonly stages: number;
  readonly words: number;
  readonly dim: number;
  readonly method: IdentityMethod;
  readonly name: string | undefined;
  /** Row-major [S, M, D]; treat as read-only. */
  readonly kData: Float32Array;
  /** Row-major [S, M, D]; the same array as kData when the identity shares K and V. */
  readonly vData: Float32Array;

  constructor(init: IdentityInit) {
    if (!init || typeof init !== 'object') throw badArg('init', '{ k, v?, stages?, words?, dim?, method, name? }', init);
    if (!METHODS.includes(init.method)) throw badArg('method', `one of ${METHODS.join(', ')}`, init.method);
    if (init.name !== undefined && typeof init.name !== 'string') throw badArg('name', 'a string', init.name);
    for (const key of ['stages', 'words', 'dim'] as const) {
      const val = init[key];
      if (val !== undefined && !isPosInt(val)) throw badArg(key, 'a positive integer', val);
    }
    const k = this.#values(init.k, 'k', init);
    this.stages = k.shape[0]!;
    this.words = k.shape[1]!;
    this.dim = k.shape[2]!;
    let v = k;
    if (init.v !== undefined && init.v !== init.k) {
      v = this.#values(init.v, 'v', { stages: this.stages, words: this.words, dim: this.dim });
      if (v.shape.some((d, i) => d !== k.shape[i])) throw badArg('v', `of k's shape ${JSON.stringify(k.shape)}`, shown(`shape ${JSON.stringify(v.shape)}`));
    }
    this.kData = k.data;
    this.vData = v.data;
    this.method = init.method;
    this.name = init.name;
  }

  #values(x: IdentityValues, what: string, dims: { stages?: number; words?: number; dim?: number }): { data: Float32Array; shape: number[] } {
    if (x === null || typeof x !== 'object') throw badArg(what, 'given (nested arrays or a flat Float32Array)', x);
    let out: { data: Float32Array; shape: number[] };
    if (isFlat(x)) {
      const n = x.length;
      const { words: M, dim: D } = dims;
      if (!M || !D) throw badArg(`words and dim`, `given with a flat ${what}`);
      const S = dims.stages ?? n / (M * D);
      if (!Number.isInteger(S) || S < 1 || S * M * D !== n)
        throw badArg(`flat ${what}`, `stages·words·dim = ${dims.stages ?? 'S'}·${M}·${D} values`, shown(`${n} values, which is not stages·words·dim`));
      for (let i = 0; i < n; i++) if (typeof x[i] !== 'number') throw badArg(`${what}[${i}]`, 'a number', x[i]);
      out = { data: Float32Array.from(x), shape: [S, M, D] };
    } else {
      out = flattenNested(x as ArrayLike<unknown>, what);
      const names = ['stages', 'words', 'dim'] as const;
      names.forEach((key, i) => {
        const want = dims[key];
        if (want !== undefined && want !== out.shape[i]) throw badArg(what, `of ${key} ${want} (as given)`, shown(`${key} ${out.shape[i]}`));
      });
    }
    const at = firstNonFinite(out.data);
    if (at >= 0) throw badArg(what, 'finite', shown(`a non-finite value (${out.data[at]}) at flat index ${at}`));
    return out;
  }

  /** True when the same vectors serve keys and values (one text-encoder pass per stage suffices). */
  get kvShared(): boolean {
    if (this.kData === this.vData) return true;
    for (let i = 0; i < this.kData.length; i++) if (this.kData[i] !== this.vData[i]) return false;
    return true;
  }

  /** Nested copy [S][M][D] of the key vectors. */
  get k(): number[][][] {
    return this.#nested(this.kData);
  }

  /** Nested copy [S][M][D] of the value vectors. */
  get v(): number[][][] {
    return this.#nested(this.vData);
  }

  #nested(a: Float32Array): number[][][] {
    const { stages: S, words: M, dim: D } = this;
    return Array.from({ length: S }, (_, s) =>
      Array.from({ length: M }, (_, m) => Array.from(a.subarray((s * M + m) * D, (s * M + m + 1) * D))),
    );
  }

  #stage(stage: number): number {
    if (!Number.isInteger(stage) || stage < 0 || stage >= this.stages)
      throw badArg('stage', `an integer in [0, ${this.stages - 1}]`, stage);
    return stage;
  }

  /** The M key vectors of one stage, [M·D] (a view: do not modify). */
  kFlat(stage: number): Float32Array {
    const s = this.#stage(stage);
    const n = this.words * this.dim;
    return this.kData.subarray(s * n, (s + 1) * n);
  }

  /** The M value vectors of one stage, [M·D] (a view: do not modify). */
  vFlat(stage: number): Float32Array {
    const s = this.#stage(stage);
    const n = this.words * this.dim;
    return this.vData.subarray(s * n, (s + 1) * n);
  }

  /** The stage serving timestep t: min(S−1, floor(t·S / numTrainTimesteps)). */
  stageFor(t: number, numTrainTimesteps = 1000): number {
    return stageIndex(t, this.stages, numTrainTimesteps);
  }

  /** Writes the identity as a safetensors file (atomically: temporary name, then rename). */
  save(file: string, opts: IdentitySaveOptions = {}): void {
    const textDim = opts.textDim ?? this.dim;
    if (!isPosInt(textDim)) throw badArg('textDim', 'a positive integer', textDim);
    if (opts.vocabHash !== undefined && typeof opts.vocabHash !== 'string') throw badArg('vocabHash', 'a string', opts.vocabHash);
    if (opts.source !== undefined && (typeof opts.source !== 'string' || opts.source.length > 200)) throw badArg('source', 'a string of at most 200 characters', opts.source);
    const shape = [this.stages, this.words, this.dim];
    const metadata: Record<string, string> = {
      format: IDENTITY_FORMAT,
      version: String(IDENTITY_VERSION),
      method: this.method,
      stages: String(this.stages),
      words: String(this.words),
      dim: String(this.dim),
      text_dim: String(textDim),
      vocab_hash: opts.vocabHash ?? '',
      created: new Date().toISOString(),
    };
    if (this.name !== undefined) metadata.name = this.name;
    if (opts.source) metadata.source = opts.source;
    writeSafetensors(file, { k: { dtype: 'F32', shape, data: this.kData }, v: { dtype: 'F32', shape, data: this.vData } }, metadata);
  }

  /** Reads and validates an identity file; `expect` checks it against the model it will be used with. */
  static load(file: string, expect: IdentityExpect = {}): Identity {
    let st: SafetensorsFile;
    try {
      st = SafetensorsFile.open(file);
    } catch (e) {
      if (e instanceof IdforgeError && e.code === 'E_MODEL_FORMAT' && !e.message.includes(file))
        throw new IdforgeError('E_MODEL_FORMAT', `${file}: ${e.message}`, { cause: e });
      throw e;
    }
    try {
      return readIdentity(st, file, expect);
    } finally {
      st.close();
    }
  }

  toString(): string {
    return `Identity(${this.method}${this.name ? ` "${this.name}"` : ''}, stages ${this.stages}, words ${this.words}, dim ${this.dim})`;
  }
}

/** min(S−1, floor(t·S / numTrainTimesteps)), validated. */
export function stageIndex(t: number, stages: number, numTrainTimesteps = 1000): number {
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0)
    throw invalid('timestep', 'a finite number ≥ 0', t);
  if (!isPosInt(numTrainTimesteps)) throw invalid('numTrainTimesteps', 'a positive integer', numTrainTimesteps);
  return Math.min(stages - 1, Math.floor((t * stages) / numTrainTimesteps));
}

function readIdentity(st: SafetensorsFile, file: string, expect: IdentityExpect): Identity {
  const bad = (msg: string): never => {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: ${msg}`);
  };
  const md = st.metadata;
  if (md.format !== IDENTITY_FORMAT)
    bad(`not an idforge identity file (metadata format is ${md.format === undefined ? 'missing' : JSON.stringify(md.format)}, expected "${IDENTITY_FORMAT}")`);
  const version = Number(md.version);
  if (!Number.isInteger(version) || version < 1) bad(`invalid identity format version ${JSON.stringify(md.version)}`);
  if (version > IDENTITY_VERSION) bad(`identity format version ${version} is newer than this idforge reads (${IDENTITY_VERSION}): upgrade idforge`);
  const method = md.method as IdentityMethod;
  if (!METHODS.includes(method)) bad(`unknown method ${JSON.stringify(md.method)} (expected ${METHODS.join(', ')})`);
  const int = (key: string): number => {
    const raw = md[key];
    const n = raw !== undefined && /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
    if (!isPosInt(n)) bad(`metadata ${key} is ${raw === undefined ? 'missing' : JSON.stringify(raw)}, expected a positive integer`);
    return n;
  };
  const S = int('stages');
  const M = int('words');
  const D = int('dim');
  const want = [S, M, D];
  const arrays: Float32Array[] = [];
  for (const name of ['k', 'v']) {
    if (!st.has(name)) bad(`tensor "${name}" is missing`);
    const info = st.info(name);
    if (info.dtype !== 'F32' && info.dtype !== 'F16' && info.dtype !== 'BF16') bad(`tensor "${name}" is ${info.dtype}, expected F32`);
    if (info.shape.length !== 3 || info.shape.some((d, i) => d !== want[i]))
      bad(`tensor "${name}" has shape ${JSON.stringify(info.shape)} but the metadata says [stages, words, dim] = ${JSON.stringify(want)}`);
    const data = st.readFloat32(name);
    const i = firstNonFinite(data);
    if (i >= 0) bad(`tensor "${name}" holds a non-finite value (${data[i]}) at flat index ${i}`);
    arrays.push(data);
  }
  if (expect.dim !== undefined && D !== expect.dim)
    throw new IdforgeError('E_IDENTITY', `${file}: identity has dim ${D}, the model's text width is ${expect.dim}`);
  const recorded = md.vocab_hash ?? '';
  if (expect.vocabHash && recorded && recorded !== expect.vocabHash)
    throw new IdforgeError('E_IDENTITY', `${file}: identity was made for a different tokenizer vocabulary (vocab_hash ${recorded.slice(0, 12)}…, the model's is ${expect.vocabHash.slice(0, 12)}…)`);
  const [k, v] = arrays as [Float32Array, Float32Array];
  let same = true;
  for (let i = 0; i < k.length && same; i++) same = k[i] === v[i];
  return new Identity({
    k, v: same ? undefined : v, stages: S, words: M, dim: D, method,
    ...(md.name !== undefined && md.name !== '' ? { name: md.name } : {}),
  });
}
