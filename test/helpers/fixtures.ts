/** Paths of the bundled fixtures and a golden-tensor loader on top of the real safetensors reader. */
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { SafetensorsFile } from '../../lib/io/safetensors.js';
import { Tensor } from '../../lib/tensor.js';

export const fixture = (p: string): string => fileURLToPath(new URL(`../fixtures/${p}`, import.meta.url));
export const TINY_SD = fixture('tiny-sd');
/**
 * The single-file LDM fixture is stored gzipped (float32 copies of float16 weights compress to
 * half), and unpacked once per machine into the temp folder: atomically, since test files run in
 * parallel processes.
 */
export function gunzipFixture(name: string): string {
  const gz = fixture(`${name}.gz`);
  const target = path.join(os.tmpdir(), `idforge-fixture-${statSync(gz).size}-${name}`);
  if (!existsSync(target)) {
    const tmp = `${target}.${process.pid}.tmp`;
    writeFileSync(tmp, gunzipSync(readFileSync(gz)));
    renameSync(tmp, target);
  }
  return target;
}
export const TINY_LDM = gunzipFixture('tiny-sd-ldm.safetensors');
export const TINY_ID = fixture('tiny-id-encoder');

/** Both on-disk layouts of the same tiny model: every golden must pass from each. */
export const MODELS: [string, string][] = [
  ['folder', TINY_SD],
  ['single file', TINY_LDM],
];

export class GoldenFile {
  readonly file: SafetensorsFile;
  constructor(name: string) {
    this.file = SafetensorsFile.open(fixture(`golden/${name}.safetensors`));
  }
  f32(name: string): Float32Array {
    return this.file.readFloat32(name);
  }
  i32(name: string): Int32Array {
    return this.file.readInt32(name);
  }
  shape(name: string): number[] {
    return [...this.file.info(name).shape];
  }
  /** A float32 CPU tensor of a golden entry. */
  tensor(name: string): Tensor {
    return Tensor.from(this.f32(name), this.shape(name));
  }
  close(): void {
    this.file.close();
  }
}
