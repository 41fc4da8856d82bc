/**
 * Work per graph op from its input/output shapes (Program.opShapes): floating-point operations
 * and bytes touched, so a profiled run can be read as GFLOP/s (compute-bound ops) and GB/s
 * (memory-bound ones).
 *
 * Conventions: a multiply-add is 2 FLOPs; bias adds and fused residual adds (a third / fourth
 * input of linear and conv2d) are counted, one per output element each; attention counts its two
 * matrix products (QKᵀ and PV) only, in full even when causal (the shapes do not say; only the
 * text encoder is causal and it is not in the UNet breakdown). Element-wise ops get nominal
 * per-element costs (below): they are memory-bound, and their GB/s is the number to read.
 */
import { numel } from '../tensor.js';

export interface OpShapes {
  in: readonly (readonly number[])[];
  out: readonly (readonly number[])[];
}

/** Nominal FLOPs per output element of element-wise / normalisation ops. */
const PER_ELEMENT: Record<string, number> = {
  add: 1,
  mul: 1,
  scale: 2,
  silu: 4,
  gelu: 8,
  quick_gelu: 4,
  geglu: 9,
  group_norm: 7,
  layer_norm: 7,
  cfg: 3,
  sampler_step: 12,
  adam_step: 12,
  timestep_emb: 4,
};

/** Ops that move data only. */
const ZERO = new Set(['reshape', 'permute', 'concat', 'slice', 'upsample2x', 'embedding', 'inject']);

export function opFlops(op: string, s: OpShapes): number {
  const out0 = s.out[0] ?? [];
  const in0 = s.in[0] ?? [];
  switch (op) {
    case 'linear': {
      const w = s.in[1]!;
      const n = w[0]!;
      const k = w[1]!;
      const m = numel(in0) / k;
      return 2 * m * n * k + Math.max(0, s.in.length - 2) * m * n;
    }
    case 'matmul': {
      const [b, m, k] = in0 as [number, number, number];
      return 2 * b * m * k * out0[2]!;
    }
    case 'conv2d': {
      const w = s.in[1]!;
      const perOut = w[1]! * w[2]! * w[3]!;
      return 2 * numel(out0) * perOut + Math.max(0, s.in.length - 2) * numel(out0);
    }
    case 'attention': {
      const [b, nq, c] = in0 as [number, number, number];
      const nk = s.in[1]![1]!;
      const cv = s.in[2]![2]!;
      return 2 * b * nq * nk * c + 2 * b * nq * nk * cv;
    }
    case 'group_norm': {
      // A fused SiLU is not visible in the shapes; 7 per element covers stats, normalise and affine.
      return PER_ELEMENT.group_norm! * numel(out0);
    }
    default:
      if (ZERO.has(op)) return 0;
      return (PER_ELEMENT[op] ?? 1) * numel(out0);
  }
}

/** Bytes read and written: every input (weights included) and output once, at `elemBytes` per float. */
export function opBytes(op: string, s: OpShapes, elemBytes: number): number {
  if (op === 'reshape') return 0;
  let n = 0;
  if (op === 'embedding') {
    // Only the looked-up rows of the table are read.
    n += numel(s.in[0] ?? []) + numel(s.out[0] ?? []) * 2;
    return n * elemBytes;
  }
  for (const x of s.in) n += numel(x);
  for (const x of s.out) n += numel(x);
  return n * elemBytes;
}

export interface OpTimingLike {
  op: string;
  index: number;
  ms: number;
}

export interface OpRow {
  op: string;
  calls: number;
  ms: number;
  /** Share of the profiled total, 0..1. */
  share: number;
  gflop: number;
  gflops: number;
  gb: number;
  gbps: number;
  /** GFLOP/s as a fraction of the machine's peak, when known. */
  ofPeak?: number;
}

export interface OpInstance {
  op: string;
  index: number;
  ms: number;
  shapes: { in: number[][]; out: number[][] };
  gflop: number;
  gflops: number;
}

/** Aggregates per-op timings of one run by op name, slowest first. */
export function aggregateOps(
  timings: readonly OpTimingLike[],
  shapes: readonly OpShapes[],
  elemBytes: number,
  peakGflops?: number,
  opNames?: readonly string[],
): { rows: OpRow[]; totalMs: number; totalGflop: number; top: OpInstance[] } {
  const by = new Map<string, { calls: number; ms: number; flop: number; bytes: number }>();
  let totalMs = 0;
  let totalFlop = 0;
  const inst: OpInstance[] = [];
  for (const t of timings) {
    // The graph's op name (the backend may report its own spelling, e.g. upper case).
    const op = (opNames?.[t.index] ?? t.op).toLowerCase();
    const s = shapes[t.index] ?? { in: [], out: [] };
    const flop = opFlops(op, s);
    const bytes = opBytes(op, s, elemBytes);
    const a = by.get(op) ?? { calls: 0, ms: 0, flop: 0, bytes: 0 };
    a.calls++;
    a.ms += t.ms;
    a.flop += flop;
    a.bytes += bytes;
    by.set(op, a);
    totalMs += t.ms;
    totalFlop += flop;
    inst.push({
      op,
      index: t.index,
      ms: t.ms,
      shapes: { in: s.in.map((x) => [...x]), out: s.out.map((x) => [...x]) },
      gflop: flop / 1e9,
      gflops: t.ms > 0 ? flop / 1e6 / t.ms : 0,
    });
  }
  const rows: OpRow[] = [...by].map(([op, a]) => {
    const gflops = a.ms > 0 ? a.flop / 1e6 / a.ms : 0;
    const row: OpRow = {
      op,
      calls: a.calls,
      ms: a.ms,
      share: totalMs > 0 ? a.ms / totalMs : 0,
      gflop: a.flop / 1e9,
      gflops,
      gb: a.bytes / 1e9,
      gbps: a.ms > 0 ? a.bytes / 1e6 / a.ms : 0,
    };
    if (peakGflops) row.ofPeak = gflops / peakGflops;
    return row;
  });
  rows.sort((x, y) => y.ms - x.ms);
  inst.sort((x, y) => y.ms - x.ms);
  return { rows, totalMs, totalGflop: totalFlop / 1e9, top: inst.slice(0, 12) };
}

/** FLOPs of a whole program (e.g. a UNet step), from its op list. */
export function programFlops(opNames: readonly string[], shapes: readonly OpShapes[]): number {
  let f = 0;
  for (let i = 0; i < opNames.length; i++) f += opFlops(opNames[i]!.toLowerCase(), shapes[i]!);
  return f;
}
