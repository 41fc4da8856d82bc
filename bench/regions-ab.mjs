#!/usr/bin/env node
// What regional prompting costs: SD 1.5's cross-attention op (queries of a 512x512 image's 64x64 /
// 32x32 / 16x16 / 8x8 grids against 77 keys, 8 heads, batch 2 = one image with classifier-free
// guidance) and, with --unet SIZE, the whole SD-1.5-shaped UNet step (random weights, guided), each
// with and without a 2-region table on the conditional row, run alternately (order swapped every
// pair) in one process. Per shape: the median and interquartile range of the per-pair ratios
// (regions / plain) of wall time and of this process's CPU time, and the ratio of the fastest runs.
// On a shared machine run it with IDFORGE_THREADS=1: one backend thread never spins waiting for
// another, so its CPU time is the work done whatever else runs (wall time is not).
//   IDFORGE_THREADS=1 node bench/regions-ab.mjs [--pairs 40] [--unet 256 --unet-pairs 8] [--json FILE]
// `npm run bench -- --random sd15 --regions 2` alternates the whole step the same way (wall time).
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { Graph } from '../dist/graph/graph.js';
import { Program } from '../dist/graph/program.js';
import { regionColumns, regionTable } from '../dist/regions.js';
import { Tensor } from '../dist/tensor.js';

const { values: o } = parseArgs({ options: { pairs: { type: 'string', default: '40' }, device: { type: 'string', default: 'cpu' }, unet: { type: 'string' }, 'unet-pairs': { type: 'string', default: '8' }, json: { type: 'string' } } });
const pairs = Number(o.pairs);
const be = { device: o.device, dtype: 'float32' };
const regions = [{ tokens: [5, 6], box: [0, 0, 0.5, 1] }, { tokens: [8, 9], box: [0.5, 0.25, 1, 1] }];
const shapes = [[64, 40], [32, 80], [16, 160], [8, 160]]; // [grid side, head dim] of SD 1.5's cross-attention levels
const rand = (n, seed) => {
  let u = seed * 2654435761 >>> 0 || 1;
  return Float32Array.from({ length: n }, () => ((u = (u * 1664525 + 1013904223) >>> 0) / 2 ** 32) * 2 - 1);
};
const quantile = (s, p) => {
  const a = [...s].sort((x, y) => x - y), x = (a.length - 1) * p, lo = Math.floor(x);
  return a[lo] + (a[Math.ceil(x)] - a[lo]) * (x - lo);
};

/** Alternating runs of plain() and regional() (each resolves once its run is done): wall and CPU ms of each. */
async function alternate(n, plain, regional) {
  const run = async (f) => {
    const c0 = process.cpuUsage(), t0 = performance.now();
    await f();
    const c = process.cpuUsage(c0);
    return { wall: performance.now() - t0, cpu: (c.user + c.system) / 1000 };
  };
  await run(plain);
  await run(regional);
  const a = [], b = [];
  for (let i = 0; i < n; i++) {
    if (i % 2) b.push(await run(regional));
    a.push(await run(plain));
    if (i % 2 === 0) b.push(await run(regional));
  }
  return { a, b };
}

const rows = [];
function report(shape, { a, b }) {
  const ratio = (k) => a.map((x, i) => b[i][k] / x[k]);
  const min = (s, k) => Math.min(...s.map((x) => x[k]));
  const r = { shape, plainMinMs: min(a, 'wall'), regionsMinMs: min(b, 'wall'), minRatio: min(b, 'wall') / min(a, 'wall'),
    wall: { median: quantile(ratio('wall'), 0.5), iqr: [quantile(ratio('wall'), 0.25), quantile(ratio('wall'), 0.75)] },
    cpu: { median: quantile(ratio('cpu'), 0.5), iqr: [quantile(ratio('cpu'), 0.25), quantile(ratio('cpu'), 0.75)], minRatio: min(b, 'cpu') / min(a, 'cpu') },
    plain: a, regions: b };
  rows.push(r);
  const f = (x) => x.toFixed(3);
  console.log([shape, r.plainMinMs.toFixed(2), r.regionsMinMs.toFixed(2), f(r.minRatio), `${f(r.wall.median)} (${f(r.wall.iqr[0])}–${f(r.wall.iqr[1])})`, `${f(r.cpu.median)} (${f(r.cpu.iqr[0])}–${f(r.cpu.iqr[1])})`, f(r.cpu.minRatio)].join('\t'));
}

console.log('shape\tplain min ms\tregions min ms\tmin ratio\twall: median pair ratio (IQR)\tCPU: median pair ratio (IQR)\tCPU min ratio');
for (const [side, d] of shapes) {
  const nq = side * side, H = 8, C = H * d;
  const build = (withRegions) => {
    const g = new Graph();
    const q = g.input([2, nq, C]), k = g.input([2, 77, C]), v = g.input([2, 77, C]);
    const table = withRegions ? g.input([2, regionColumns(77)], 'int32') : undefined;
    g.output(g.attention(q, k, v, { heads: H, ...(table ? { regions: { table, width: side } } : {}) }));
    return new Program(g, be);
  };
  const plain = build(false), regional = build(true);
  const ins = [[2, nq, C], [2, 77, C], [2, 77, C]].map((s, i) => Tensor.from(rand(s[0] * s[1] * s[2], i + 1), s, be));
  const table = Tensor.from(regionTable(regions, 77, [false, true]), [2, regionColumns(77)], { device: be.device });
  const once = (p, extra) => async () => (await p.run([...ins, ...extra]))[0].dispose();
  report(`attention q[2,${nq},${C}] k/v[2,77,${C}] H8 (grid ${side}x${side}, d ${d})`, await alternate(pairs, once(plain, []), once(regional, [table])));
  for (const t of [...ins, table]) t.dispose();
  plain.dispose();
  regional.dispose();
}
if (o.unet) {
  // The whole guided UNet step of SD 1.5 (random weights) at --unet SIZE: generate()'s per-step UNet.
  const { Engine } = await import('../dist/engine.js');
  const { randomModelSource } = await import('../dist/bench/index.js');
  const side = Number(o.unet) / 8;
  const engine = Engine.fromSource(randomModelSource('sd15', { seed: 0, dtype: 'F32' }), be);
  const rt = engine.runtime;
  const plain = rt.unetProgram(1, side, side, 77, 7.5), regional = rt.unetProgram(1, side, side, 77, 7.5, { regions: true });
  const x = Tensor.from(rand(4 * side * side, 7), [1, 4, side, side], be), t = Tensor.from(new Float32Array([500, 500]), [2], be);
  const ctx = Tensor.from(rand(2 * 77 * 768, 8), [2, 77, 768], be), table = rt.regionInput(regions, 77, 2, true);
  const once = (p, extra) => async () => (await p.run([x, t, ctx, ...extra]))[0].dispose();
  report(`UNet step, SD 1.5 shape, ${o.unet}x${o.unet}, guided (batch 2)`, await alternate(Number(o['unet-pairs']), once(plain, []), once(regional, [table])));
  for (const v of [x, t, ctx, table]) v.dispose();
  engine.dispose();
}
const load = os.loadavg()[0];
console.log(`pairs ${pairs}${o.unet ? ` (UNet ${o['unet-pairs']})` : ''}, ${be.device}, IDFORGE_THREADS ${process.env.IDFORGE_THREADS ?? 'unset (every CPU)'}, ${os.cpus().length} CPUs, 1-minute load average ${load.toFixed(2)}`);
if (o.json) writeFileSync(o.json, `${JSON.stringify({ command: `${process.env.IDFORGE_THREADS ? `IDFORGE_THREADS=${process.env.IDFORGE_THREADS} ` : ''}node bench/regions-ab.mjs ${process.argv.slice(2).join(' ')}`.trim(), date: new Date().toISOString(), loadavg: load, cpus: os.cpus().length, rows }, null, 2)}\n`);
