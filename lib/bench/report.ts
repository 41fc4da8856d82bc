// The benchmark's options and its report (the JSON `npm run bench -- --json` writes), as types only:
// the harness (index.ts), the CLI's argument parser (args.ts) and the table printer (table.ts) all
// name them without importing one another.
import type { SamplerName } from '../sched/sampler.js';
import type { ModelSource } from '../io/checkpoint.js';
import type { MachineInfo } from './machine.js';
import type { OpInstance, OpRow } from './flops.js';
import type { RandomPreset } from './random-model.js';

export interface BenchOptions {
  /** A diffusers folder or single .safetensors file. */
  model?: string;
  /** Synthetic weights with a real architecture instead of a model on disk. */
  random?: RandomPreset;
  /** An already opened source (taken over and closed). */
  source?: ModelSource;
  device?: 'auto' | 'cpu' | 'cuda';
  dtype?: 'float32' | 'float16';
  /** Image size (default 512×512). */
  width?: number;
  height?: number;
  /** UNet batch: 2 = one image with classifier-free guidance (default), 1 = no guidance. */
  batch?: number;
  /** Timed repetitions per stage after warm-up, and the steps of the timed generate() (default 5). */
  steps?: number;
  /** Untimed runs before timing (default 1; the first run also builds and uploads). */
  warmup?: number;
  /** Time a whole generate() (default true). */
  generate?: boolean;
  /** The sampler of the timed generate() (default 'ddim'). */
  sampler?: SamplerName;
  /** Guidance scale of the timed generate() (default 7.5; 1 with batch 1). */
  guidance?: number;
  /** The engine's VAE: 'tiny' = a random TAESD of the original architecture (with random), or a VAE folder (with model). */
  vae?: string;
  /** How many timed generate() calls (one image each) give the time per image (default 1). */
  images?: number;
  /** Profile one UNet step per op (default true). */
  ops?: boolean;
  /** Also time the UNet step confining N regions (2 tokens each, side-by-side boxes, the conditional rows), alternating with the plain step (default 0: no). */
  regions?: number;
  seed?: number;
  prompt?: string;
  /** Recorded in the result (the CLI passes its command line). */
  command?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface Stats {
  n: number;
  median: number;
  min: number;
  max: number;
  q1: number;
  q3: number;
  mean: number;
  samples: number[];
}

export interface BenchConfig {
  model: string;
  device: 'cpu' | 'cuda';
  /** The compute dtype. */
  dtype: 'float32' | 'float16';
  /** CPU with float16 weights (computing in float32). */
  weights?: 'float16';
  width: number;
  height: number;
  latent: [number, number];
  batch: number;
  steps: number;
  warmup: number;
  seed: number;
  prompt: string;
  /** `git describe --always --dirty` of the package checkout, when it is one. */
  revision?: string;
}

export interface BenchResults {
  /** Opening the model (headers and configs; weights load lazily on first use). */
  loadMs: number;
  textEncoder: { batch: number; firstMs: number; ms: Stats };
  unet: {
    batch: number;
    /** Building the step graph: weights read (or generated) and uploaded, program compiled. */
    buildMs: number;
    firstMs: number;
    ms: Stats;
    gflopPerStep: number;
    gflops: number;
    ofPeak?: number;
    outputFinite: boolean;
    /** CPUs busy on average during the timed steps: this process, and everything else (Linux). */
    cpu: { own: number; others?: number };
    /** --regions: the step confining `count` regions, each run right after a plain one; ratio: per pair, regions / plain. */
    regions?: { count: number; firstMs: number; ms: Stats; ratio: Stats };
  };
  vaeDecode: { batch: number; firstMs: number; ms: Stats };
  /** Time per image: `images` generate() calls of `steps` steps each, after an untimed one-step call compiled its programs. */
  generate: { sampler: SamplerName; steps: number; guidance: number; perImage: Stats; perStepMs: number } | null;
  memory: {
    /** process.resourceUsage().maxRSS, bytes. */
    maxRssBytes: number;
    /** Highest live native tensor bytes seen between stages (idforge memory()). */
    nativePeakBytes: { cpu: number; cuda: number };
    weightsBytes: { unet: number; vae: number; text: number };
  };
  /** clock: 'device' = CUDA events between ops (no host sync), 'host' = each op synchronised and timed. */
  ops: { profiledMs: number; stepMs: number; clock: 'device' | 'host'; rows: OpRow[]; top: OpInstance[] } | null;
}

export interface BenchReport {
  command: string;
  date: string;
  machine: MachineInfo;
  config: BenchConfig;
  results: BenchResults;
}
