/**
 * safetensors reader and writer.
 *
 * Format: u64 little-endian header length N, N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {k: v}}`, then the data area;
 * offsets are relative to the start of the data area. `open` reads and validates only the header;
 * tensors are read on demand with positional reads, so a multi-GB checkpoint costs nothing until a
 * tensor is asked for. Every check that can fail on a hostile or truncated file runs before
 * anything is allocated from a size found in that file.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { constants as bufferConstants } from 'node:buffer';
import { IdforgeError } from '../errors.js';
import { openRegularFile, parseStrictJson } from './files.js';
import { bf16ToF32, f16ToF32 } from './half.js';
import { invalid, shown } from '../validate.js';

export type StDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export interface TensorInfo {
  name: string;
  dtype: StDType;
  shape: number[];
  /** Absolute file offsets of the tensor's bytes. */
  begin: number;
  end: number;
}

/** Bytes per element. */
export const DTYPE_SIZE: Readonly<Record<StDType, number>> = Object.freeze({
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
});

/** Same limit as the reference implementation (safetensors' MAX_HEADER_SIZE). */
export const MAX_HEADER_BYTES = 100_000_000;

const PICKLE_EXTS = new Set(['.ckpt', '.pt', '.pth', '.bin', '.pkl', '.pickle']);

/** True for file names idforge refuses to open because they would need unpickling. */
export function isPickleName(p: string): boolean {
  return PICKLE_EXTS.has(path.extname(p).toLowerCase());
}

export function pickleRefusal(p: string): IdforgeError {
  return new IdforgeError(
    'E_MODEL_FORMAT',
    `${p} is a pickle checkpoint; idforge never unpickles files: convert it to .safetensors ` +
      `(e.g. with diffusers' scripts or safetensors.torch.save_file)`,
  );
}

function isDType(s: unknown): s is StDType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZE, s);
}

function fail(file: string, msg: string, tensor?: string): never {
  const where = tensor === undefined ? file : `${file}: tensor "${tensor}"`;
  throw new IdforgeError('E_MODEL_FORMAT', `${where}: ${msg}`);
}

function checkHostEndianness(): void {
  if (os.endianness() !== 'LE') {
    throw new IdforgeError('E_BACKEND', 'idforge reads safetensors only on little-endian hosts');
  }
}

/** Reads exactly `dst.length` bytes at `pos`, failing (not hanging) if the file got shorter. */
function readFully(fd: number, dst: Uint8Array, pos: number, file: string, tensor?: string): void {
  let done = 0;
  while (done < dst.length) {
    const n = fs.readSync(fd, dst, done, dst.length - done, pos + done);
    if (n <= 0) fail(file, `unexpected end of file at byte ${pos + done} (file truncated while open?)`, tensor);
    done += n;
  }
}

export class SafetensorsFile implements Disposable {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly fileSize: number;
  private fd: number | undefined;
  private readonly tensors: Map<string, TensorInfo>;

  private constructor(p: string, fd: number, size: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.path = p;
    this.fd = fd;
    this.fileSize = size;
    this.tensors = tensors;
    this.metadata = metadata;
  }

  /** Opens a file and validates its header. Never reads tensor data. */
  static open(p: string): SafetensorsFile {
    if (typeof p !== 'string' || p.length === 0) {
      throw invalid('safetensors path', 'a non-empty string', p);
    }
    if (isPickleName(p)) {
      if (!fs.existsSync(p)) throw new IdforgeError('E_NOT_FOUND', `${p}: no such file`);
      throw pickleRefusal(p);
    }
    // Regular files only (a FIFO would hang the read, a device never ends); typed errors for
    // missing files, symlink loops and permissions.
    const { fd, size } = openRegularFile(p, '.safetensors file');
    try {
      const { tensors, metadata } = parseHeader(fd, size, p);
      return new SafetensorsFile(p, fd, size, tensors, metadata);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in header order (excluding `__metadata__`). */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) fail(this.path, 'no such tensor in this file', name);
    return t;
  }

  private handle(): number {
    if (this.fd === undefined) throw new IdforgeError('E_DISPOSED', `${this.path}: safetensors file was closed`);
    return this.fd;
  }

  /** Exactly the tensor's bytes (little-endian, as stored), in a fresh 8-byte-aligned buffer. */
  readBytes(name: string): Buffer {
    const t = this.info(name);
    const len = t.end - t.begin;
    if (len > bufferConstants.MAX_LENGTH) {
      throw new IdforgeError('E_OOM', `${this.path}: tensor "${name}" is ${len} bytes, more than one buffer can hold`);
    }
    let buf: Buffer;
    try {
      buf = Buffer.from(new ArrayBuffer(len));
    } catch (e) {
      throw new IdforgeError('E_OOM', `${this.path}: cannot allocate ${len} bytes for tensor "${name}"`, { cause: e });
    }
    readFully(this.handle(), buf, t.begin, this.path, name);
    return buf;
  }

  /** The tensor as float32: F32 as stored, F16/BF16 exactly, F64 rounded, integers converted. */
  readFloat32(name: string): Float32Array {
    const t = this.info(name);
    checkHostEndianness();
    const n = (t.end - t.begin) / DTYPE_SIZE[t.dtype];
    if (t.dtype === 'F32') {
      const out = new Float32Array(n);
      readFully(this.handle(), new Uint8Array(out.buffer), t.begin, this.path, name);
      return out;
    }
    const b = this.readBytes(name);
    const ab = b.buffer;
    switch (t.dtype) {
      case 'F16': return f16ToF32(new Uint16Array(ab, b.byteOffset, n));
      case 'BF16': return bf16ToF32(new Uint16Array(ab, b.byteOffset, n));
      case 'F64': return Float32Array.from(new Float64Array(ab, b.byteOffset, n));
      case 'I64': {
        const src = new BigInt64Array(ab, b.byteOffset, n);
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = Number(src[i]!);
        return out;
      }
      case 'I32': return Float32Array.from(new Int32Array(ab, b.byteOffset, n));
      case 'I16': return Float32Array.from(new Int16Array(ab, b.byteOffset, n));
      case 'I8': return Float32Array.from(new Int8Array(ab, b.byteOffset, n));
      case 'U8': return Float32Array.from(new Uint8Array(ab, b.byteOffset, n));
      case 'BOOL': {
        const src = new Uint8Array(ab, b.byteOffset, n);
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) out[i] = src[i] ? 1 : 0;
        return out;
      }
    }
    return fail(this.path, `cannot convert dtype ${t.dtype} to float32`, name);
  }

  /** The tensor as int32: I32 as stored, I64 range-checked, smaller integers and BOOL widened. */
  readInt32(name: string): Int32Array {
    const t = this.info(name);
    checkHostEndianness();
    const n = (t.end - t.begin) / DTYPE_SIZE[t.dtype];
    if (t.dtype === 'I32') {
      const out = new Int32Array(n);
      readFully(this.handle(), new Uint8Array(out.buffer), t.begin, this.path, name);
      return out;
    }
    if (t.dtype === 'F32' || t.dtype === 'F16' || t.dtype === 'BF16' || t.dtype === 'F64') {
      fail(this.path, `is ${t.dtype}, not an integer tensor`, name);
    }
    const b = this.readBytes(name);
    const ab = b.buffer;
    switch (t.dtype) {
      case 'I64': {
        const src = new BigInt64Array(ab, b.byteOffset, n);
        const out = new Int32Array(n);
        for (let i = 0; i < n; i++) {
          const v = src[i]!;
          if (v > 2147483647n || v < -2147483648n) fail(this.path, `element ${i} = ${v} does not fit in int32`, name);
          out[i] = Number(v);
        }
        return out;
      }
      case 'I16': return Int32Array.from(new Int16Array(ab, b.byteOffset, n));
      case 'I8': return Int32Array.from(new Int8Array(ab, b.byteOffset, n));
      case 'U8': return Int32Array.from(new Uint8Array(ab, b.byteOffset, n));
      case 'BOOL': {
        const src = new Uint8Array(ab, b.byteOffset, n);
        const out = new Int32Array(n);
        for (let i = 0; i < n; i++) out[i] = src[i] ? 1 : 0;
        return out;
      }
    }
    return fail(this.path, `cannot convert dtype ${t.dtype} to int32`, name);
  }

  get closed(): boolean {
    return this.fd === undefined;
  }

  close(): void {
    if (this.fd !== undefined) {
      const fd = this.fd;
      this.fd = undefined;
      fs.closeSync(fd);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function parseHeader(fd: number, size: number, file: string): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  if (size < 8) fail(file, `file is ${size} bytes, shorter than the 8-byte safetensors header length`);
  const lenBuf = Buffer.alloc(8);
  readFully(fd, lenBuf, 0, file);
  const n64 = lenBuf.readBigUInt64LE(0);
  if (n64 === 0n) fail(file, 'header length is 0');
  if (n64 > BigInt(MAX_HEADER_BYTES)) fail(file, `header length ${n64} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`);
  const n = Number(n64);
  if (8 + n > size) fail(file, `header length ${n} runs past the end of the ${size}-byte file (truncated?)`);

  const raw = new Uint8Array(n);
  readFully(fd, raw, 8, file);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    fail(file, 'header is not valid UTF-8');
  }
  // Duplicate keys are refused: the spec forbids them, and JSON.parse would silently keep one.
  const json = parseStrictJson(text, `${file}: header`);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail(file, 'header is not a JSON object');

  const dataSize = size - 8 - n;
  const dataStart = 8 + n;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(entry, file);
      continue;
    }
    const rel = parseEntry(name, entry, dataSize, file);
    tensors.set(name, { name, dtype: rel.dtype, shape: rel.shape, begin: dataStart + rel.begin, end: dataStart + rel.end });
  }

  // Overlap check: sort by begin; zero-byte tensors occupy nothing and may sit anywhere.
  const spans = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < spans.length; i++) {
    const prev = spans[i - 1]!;
    const cur = spans[i]!;
    if (cur.begin < prev.end) {
      fail(file, `tensors "${prev.name}" and "${cur.name}" overlap (bytes ${prev.begin - dataStart}..${prev.end - dataStart} and ${cur.begin - dataStart}..${cur.end - dataStart} of the data area)`);
    }
  }
  // The spec: "the byte buffer needs to be entirely indexed, and cannot contain holes" (no room
  // for a second payload: polyglot files). Holes and bytes after the last tensor are refused.
  let covered = dataStart;
  for (const t of spans) {
    if (t.begin !== covered) fail(file, `bytes ${covered - dataStart}..${t.begin - dataStart} of the data area belong to no tensor (a hole before "${t.name}"; the safetensors spec forbids holes)`);
    covered = t.end;
  }
  if (covered !== size) fail(file, `${size - covered} byte(s) after the last tensor belong to no tensor (trailing data; the safetensors spec requires the data area to be fully indexed)`);
  return { tensors, metadata };
}

function parseMetadata(entry: unknown, file: string): Record<string, string> {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) fail(file, '__metadata__ is not a JSON object');
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
    if (typeof v !== 'string') fail(file, `__metadata__["${k}"] is ${v === null ? 'null' : typeof v}, not a string`);
    out[k] = v;
  }
  return out;
}

function parseEntry(name: string, entry: unknown, dataSize: number, file: string): { dtype: StDType; shape: number[]; begin: number; end: number } {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) fail(file, 'header entry is not a JSON object', name);
  const e = entry as Record<string, unknown>;
  for (const k of ['dtype', 'shape', 'data_offsets']) {
    if (!(k in e)) fail(file, `header entry has no "${k}"`, name);
  }
  const dtype = e.dtype;
  if (!isDType(dtype)) fail(file, `unknown dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_SIZE).join(', ')})`, name);
  const shape = e.shape;
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
    fail(file, `shape ${JSON.stringify(shape)} is not an array of non-negative integers`, name);
  }
  const offs = e.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)) {
    fail(file, `data_offsets ${JSON.stringify(offs)} is not a [begin, end] pair of non-negative integers`, name);
  }
  const [begin, end] = offs as [number, number];
  if (begin > end) fail(file, `data_offsets [${begin}, ${end}] has begin > end`, name);
  if (end > dataSize) fail(file, `data_offsets [${begin}, ${end}] run past the end of the ${dataSize}-byte data area (truncated file?)`, name);
  // Element count in floating point: a product past 2^53 is already far beyond any span.
  let count = 1;
  for (const d of shape as number[]) count *= d;
  const bytes = count * DTYPE_SIZE[dtype];
  if (bytes !== end - begin) {
    fail(file, `shape ${JSON.stringify(shape)} of ${dtype} needs ${bytes} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`, name);
  }
  return { dtype, shape: [...(shape as number[])], begin, end };
}

export interface TensorToWrite {
  dtype: StDType;
  shape: number[];
  data: ArrayBufferView;
}

/**
 * Writes a safetensors file. The header is padded with spaces to a multiple of 8 bytes (as the
 * reference writer does) so that every tensor in the data area starts 8-byte aligned when tensors
 * are sized in multiples of 8; written to a temporary name and renamed, so readers never see half a file.
 */
export function writeSafetensors(p: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  checkHostEndianness();
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    if (metadata === null || typeof metadata !== 'object') throw invalid('metadata', 'an object of strings', metadata, { where: p });
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw invalid(`metadata["${k}"]`, 'a string', v, { where: p });
    }
    header.__metadata__ = { ...metadata };
  }
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === '__metadata__') throw invalid('a tensor name', 'other than "__metadata__" (reserved for the metadata)', name, { where: p });
    if (!isDType(t.dtype)) throw invalid(`tensor "${name}": dtype`, 'a safetensors dtype (unknown dtype)', t.dtype, { where: p });
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw invalid(`tensor "${name}": shape`, 'an array of non-negative integers', t.shape, { where: p });
    }
    const count = t.shape.reduce((a, b) => a * b, 1);
    const bytes = count * DTYPE_SIZE[t.dtype];
    if (!ArrayBuffer.isView(t.data) || t.data.byteLength !== bytes) {
      throw invalid(`tensor "${name}": data`, `${bytes} bytes (shape ${JSON.stringify(t.shape)} of ${t.dtype} needs ${bytes} bytes)`, shown(ArrayBuffer.isView(t.data) ? `${t.data.byteLength} bytes` : 'none'), { where: p });
    }
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    chunks.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));

  const tmp = `${p}.tmp-${process.pid}-${Date.now()}`;
  let fd: number;
  try {
    fd = fs.openSync(tmp, 'w');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new IdforgeError('E_NOT_FOUND', `${p}: cannot write (${code})`, { cause: e });
    throw invalid('path', `a file that can be written (cannot write: ${code ?? String(e)})`, p, { cause: e });
  }
  try {
    writeAll(fd, len);
    writeAll(fd, json);
    for (const c of chunks) writeAll(fd, c);
    fs.closeSync(fd);
    fs.renameSync(tmp, p);
  } catch (e) {
    try { fs.closeSync(fd); } catch { /* already closed */ }
    try { fs.unlinkSync(tmp); } catch { /* never created */ }
    if (e instanceof IdforgeError) throw e;
    throw invalid('path', `a file that can be written (write failed: ${(e as Error).message})`, p, { cause: e });
  }
}

function writeAll(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done);
}
