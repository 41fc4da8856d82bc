// The modes that run the op table (test/helpers/opcases.ts): forward against the float64
// reference, gradients against finite differences, and the gradient graph on any backend (the
// CUDA mode compares it with the CPU's).
import fs from 'node:fs';
import { grad } from '../../lib/graph/autodiff.js';
import type { Graph, Value } from '../../lib/graph/graph.js';
import { Program, type BackendSpec } from '../../lib/graph/program.js';
import { numel } from '../../lib/tensor.js';
import { caseGraph, makeInputs, roundHalf, runCase, runOn, type InputSpec, type OpCase } from './opcases.js';
import { relL2 } from './metrics.js';
import { rand, rng } from './random.js';

export interface Check {
  ok: boolean;
  msg: string;
}

/** Every op of native/backend.h (lower case), read from its op list. */
export const OP_NAMES: string[] = [...fs.readFileSync(new URL('../../native/backend.h', import.meta.url), 'utf8').matchAll(/^\s+X\((\w+)\)/gm)].map((m) => m[1]!.toLowerCase());

/** The case's outputs on `be` against its float64 reference. */
export async function checkForward(c: OpCase, be: BackendSpec): Promise<Check[]> {
  const out = await runCase(c, be);
  const ref = c.ref!(makeInputs(c, 1));
  const tol = c.tol ?? 1e-5;
  return out.map((o, i) => {
    const e = relL2(o, ref[i]!);
    let finite = true;
    for (const v of o) if (!Number.isFinite(v)) finite = false;
    return { ok: finite && o.length === ref[i]!.length && e <= tol, msg: `${c.name} output ${i}: rel L2 ${e.toExponential(2)} vs float64 (≤ ${tol})${finite ? '' : ', non-finite values'}` };
  });
}

/**
 * The case's graph plus loss = Σ_i Σ y_i·r_i (r_i random, fed as the last inputs) and the
 * gradients of the loss w.r.t. the inputs c.grad lists: outputs [loss, ...gradients].
 */
export function gradGraph(c: OpCase): { g: Graph; specs: InputSpec[] } {
  const { g, ins, outs } = caseGraph(c);
  g.outputs.length = 0;
  const specs = [...c.inputs];
  let loss: Value | undefined;
  for (const y of outs) {
    const r = g.input(y.shape);
    specs.push({ shape: [...y.shape] });
    const term = g.reduceSum(g.mul(y, r), [1]);
    loss = loss ? g.add(loss, term) : term;
  }
  g.output(loss!);
  for (const d of grad(g, loss!, c.grad!.map((k) => ins[k]!))) g.output(d);
  return { g, specs };
}

/** Inputs of gradGraph: the case's, then the r_i. */
export function gradInputs(c: OpCase, specs: InputSpec[], half = false): (Float32Array | Int32Array)[] {
  const base = makeInputs(c, 1, half);
  return [...base, ...specs.slice(base.length).map((s, i) => rand(numel(s.shape), 500 + i).map(half ? roundHalf : (v) => v))];
}

/** The loss and its gradients on a backend (half: inputs rounded to float16). */
export async function runGrad(c: OpCase, be: BackendSpec, half = false): Promise<Float32Array[]> {
  const { g, specs } = gradGraph(c);
  const p = new Program(g, be);
  try {
    return await runOn(p, gradInputs(c, specs, half), specs, be);
  } finally {
    p.dispose();
  }
}

/**
 * Autodiff vs central differences in float32, on 6 sampled entries of each differentiated input:
 * the worst |fd − ad| / max|ad|.
 */
export async function gradCheck(c: OpCase): Promise<Check> {
  const be = { device: 'cpu', dtype: 'float32' } as const;
  const { g, specs } = gradGraph(c);
  const p = new Program(g, be);
  try {
    const data = gradInputs(c, specs);
    const base = await runOn(p, data, specs, be);
    const r = rng(7);
    let worst = 0;
    for (const [n, k] of c.grad!.entries()) {
      const x = data[k] as Float32Array;
      const gk = base[1 + n]!;
      let scale = 0;
      for (const v of gk) scale = Math.max(scale, Math.abs(v));
      for (let s = 0; s < 6 && x.length; s++) {
        const j = Math.floor(r() * x.length);
        const h = 1e-2 * Math.max(1, Math.abs(x[j]!));
        const at = async (v: number) => {
          const d = data.slice();
          const xv = x.slice();
          xv[j] = v;
          d[k] = xv;
          return (await runOn(p, d, specs, be))[0]![0]!;
        };
        const fd = ((await at(x[j]! + h)) - (await at(x[j]! - h))) / (2 * h);
        worst = Math.max(worst, Math.abs(fd - gk[j]!) / Math.max(scale, 1e-6));
      }
    }
    const tol = c.gradTol ?? 2e-2;
    return { ok: worst < tol, msg: `${c.name}: worst |fd − ad| / max|ad| = ${worst.toExponential(2)} (< ${tol}) over inputs ${c.grad!.join(', ')}` };
  } finally {
    p.dispose();
  }
}

/** Throws E_ARGUMENT when some op of the case has no backward rule. */
export function tryGrad(c: OpCase): void {
  const { ins, g, outs } = caseGraph(c);
  const floats = ins.filter((v) => v.dtype === 'float');
  for (const y of outs) grad(g, y, floats);
}
