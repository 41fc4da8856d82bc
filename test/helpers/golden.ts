/**
 * Minimal, test-only safetensors reader for the golden files (8-byte LE header length, JSON
 * header, raw little-endian data). Supports F32, F16, I32, I64 (as numbers), U8.
 * TODO: replace with lib/io/safetensors.ts once that lands.
 */
import { readFileSync } from 'node:fs';

export interface GoldenTensor {
  dtype: string;
  shape: number[];
  data: Float32Array | Int32Array | Uint8Array;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export class Golden {
  readonly header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  private readonly buf: Buffer;
  private readonly base: number;

  constructor(path: string | URL) {
    this.buf = readFileSync(path);
    const n = Number(this.buf.readBigUInt64LE(0));
    const h = JSON.parse(this.buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
    delete h['__metadata__'];
    this.header = h as Golden['header'];
    this.base = 8 + n;
  }

  names(): string[] {
    return Object.keys(this.header);
  }

  get(name: string): GoldenTensor {
    const m = this.header[name];
    if (!m) throw new Error(`golden tensor ${name} not found`);
    const [a, b] = m.data_offsets;
    const bytes = this.buf.subarray(this.base + a, this.base + b);
    const copy = new Uint8Array(bytes); // aligned copy
    let data: GoldenTensor['data'];
    switch (m.dtype) {
      case 'F32': data = new Float32Array(copy.buffer, 0, copy.length / 4); break;
      case 'I32': data = new Int32Array(copy.buffer, 0, copy.length / 4); break;
      case 'U8': data = copy; break;
      case 'F16': {
        const u16 = new Uint16Array(copy.buffer, 0, copy.length / 2);
        data = Float32Array.from(u16, halfToFloat);
        break;
      }
      case 'I64': {
        const i64 = new BigInt64Array(copy.buffer, 0, copy.length / 8);
        data = Int32Array.from(i64, (v) => Number(v));
        break;
      }
      default: throw new Error(`golden dtype ${m.dtype} not supported`);
    }
    return { dtype: m.dtype, shape: m.shape, data };
  }

  f32(name: string): Float32Array {
    const t = this.get(name);
    return t.data instanceof Float32Array ? t.data : Float32Array.from(t.data);
  }

  i32(name: string): Int32Array {
    const t = this.get(name);
    return t.data instanceof Int32Array ? t.data : Int32Array.from(t.data);
  }
}
