/**
 * TensorFlow.js for the face models, loaded on first use only: importing idforge never loads it.
 *
 * tfjs-core + tfjs-converter run the graph models on the WebAssembly backend (its .wasm files ship
 * in @tensorflow/tfjs-backend-wasm; tfjs-node would download libtensorflow at install time). The
 * model files are read from the installed npm packages here, since tfjs-core has no file:// loader.
 * All of these are optionalDependencies: when one is missing, loading fails with E_BACKEND.
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import type * as TfCore from '@tensorflow/tfjs-core';
import type { GraphModel } from '@tensorflow/tfjs-converter';
import { IdforgeError } from '../errors.js';

export type Tf = typeof TfCore;
export type { GraphModel };

const require = createRequire(import.meta.url);

/** The optional packages the face models need. */
export const FACE_PACKAGES = ['@tensorflow/tfjs-core', '@tensorflow/tfjs-converter', '@tensorflow/tfjs-backend-wasm', '@vladmandic/human', '@vladmandic/face-api'] as const;
const INSTALL = `npm install ${FACE_PACKAGES.join(' ')}`;

function missing(what: string, cause?: unknown): IdforgeError {
  return new IdforgeError('E_BACKEND', `face models need ${what}, which is not installed (it is an optional dependency of idforge: ${INSTALL})`, { cause });
}

/** The folder of an installed package (found through node's module search paths, without importing it). */
export function packageDir(name: string): string {
  for (const dir of require.resolve.paths(name) ?? []) {
    const p = path.join(dir, name);
    if (fs.existsSync(path.join(p, 'package.json'))) return p;
  }
  throw missing(name);
}

let loading: Promise<{ tf: Tf; loadGraphModel: typeof import('@tensorflow/tfjs-converter').loadGraphModel }> | null = null;

/** tfjs-core with the wasm backend active, and the converter's graph-model loader. */
export function loadTf(): Promise<{ tf: Tf; loadGraphModel: typeof import('@tensorflow/tfjs-converter').loadGraphModel }> {
  loading ??= (async () => {
    const imp = async <T>(name: string): Promise<T> => {
      try {
        return (await import(name)) as T;
      } catch (e) {
        throw missing(name, e);
      }
    };
    const tf = await imp<Tf>('@tensorflow/tfjs-core');
    const wasm = await imp<typeof import('@tensorflow/tfjs-backend-wasm')>('@tensorflow/tfjs-backend-wasm');
    const converter = await imp<typeof import('@tensorflow/tfjs-converter')>('@tensorflow/tfjs-converter');
    wasm.setWasmPaths(path.join(packageDir('@tensorflow/tfjs-backend-wasm'), 'dist') + path.sep);
    try {
      if (!(await tf.setBackend('wasm'))) throw new Error('tf.setBackend("wasm") returned false');
      await tf.ready();
    } catch (e) {
      throw new IdforgeError('E_BACKEND', `the TensorFlow.js WebAssembly backend failed to start: ${(e as Error).message}`, { cause: e });
    }
    return { tf, loadGraphModel: converter.loadGraphModel };
  })();
  loading.catch(() => { loading = null; });
  return loading;
}

interface Manifest {
  format?: string;
  modelTopology?: unknown;
  weightsManifest: { paths: string[]; weights: TfCore.io.WeightsManifestEntry[] }[];
}

function readManifest(file: string, weightsManifest = false): { json: Manifest; specs: TfCore.io.WeightsManifestEntry[]; data: ArrayBuffer } {
  if (!fs.existsSync(file)) throw new IdforgeError('E_NOT_FOUND', `face model file not found: ${file}`);
  let json: Manifest;
  try {
    const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
    json = (weightsManifest ? { weightsManifest: parsed } : parsed) as Manifest;
    if (!Array.isArray(json.weightsManifest)) throw new Error('no weightsManifest');
  } catch (e) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: not a TensorFlow.js model manifest (${(e as Error).message})`, { cause: e });
  }
  const specs: TfCore.io.WeightsManifestEntry[] = [];
  const parts: Buffer[] = [];
  for (const group of json.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) {
      const bin = path.join(path.dirname(file), p);
      if (!fs.existsSync(bin)) throw new IdforgeError('E_NOT_FOUND', `${file}: weights file ${p} not found`);
      parts.push(fs.readFileSync(bin));
    }
  }
  const all = Buffer.concat(parts);
  return { json, specs, data: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength) as ArrayBuffer };
}

/** A TF.js graph model (model.json + its .bin shards) from disk. */
export async function readGraphModel(file: string): Promise<GraphModel> {
  const { tf, loadGraphModel } = await loadTf();
  const { json, specs, data } = readManifest(file);
  try {
    return await loadGraphModel(tf.io.fromMemory({ modelTopology: json.modelTopology as object, weightSpecs: specs, weightData: data, format: json.format ?? 'graph-model' }));
  } catch (e) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: could not load the graph model (${(e as Error).message})`, { cause: e });
  }
}

/** The named (dequantised) tensors of a TF.js weights manifest (face-api's "*-weights_manifest.json"). */
export async function readWeights(file: string): Promise<TfCore.NamedTensorMap> {
  const { tf } = await loadTf();
  const { specs, data } = readManifest(file, true);
  try {
    return tf.io.decodeWeights(data, specs);
  } catch (e) {
    throw new IdforgeError('E_MODEL_FORMAT', `${file}: could not decode the weights (${(e as Error).message})`, { cause: e });
  }
}
