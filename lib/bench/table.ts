// Plain-text rendering of a benchmark report (what `npm run bench` prints).
import type { BenchReport, Stats } from './report.js';

function pad(cells: string[][], right: boolean[]): string {
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells
    .map((r) => r.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd())
    .join('\n');
}

const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '—');
const ms = (x: number) => (x >= 100 ? f(x, 0) : x >= 10 ? f(x, 1) : f(x, 2));
const num = (x: number) => (x === 0 ? '0' : x < 0.1 ? x.toPrecision(2) : f(x, x < 10 ? 2 : 1));
const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

function statRow(name: string, first: number, s: Stats): string[] {
  return [name, ms(first), ms(s.median), ms(s.min), ms(s.max), ms(s.q3 - s.q1), String(s.n)];
}

export function formatReport(r: BenchReport): string {
  const m = r.machine;
  const c = r.config;
  const res = r.results;
  const out: string[] = [];
  const peak = (m.measuredPeakGflops ? `measured FMA peak ${f(m.measuredPeakGflops, 0)} GFLOP/s (${m.isa} kernels; "% peak" below), ` : '') +
    (m.fp32PeakGflops ? `nominal fp32 peak ≈ ${f(m.fp32PeakGflops, 0)} GFLOP/s (${m.peakFormula})` : 'nominal fp32 peak unknown');
  out.push(`idforge bench  ${r.date}`);
  out.push(`machine: ${m.cpu}, ${m.cpus} CPUs (${m.threads} backend threads, ${m.simd}, ${m.isa} kernels), ${peak}; ${m.memoryGB} GB RAM; ` +
    `CUDA: ${m.cuda.available ? m.cuda.device ?? 'available' : 'n/a'}; ${m.os}; node ${m.node}; ` +
    `load average ${m.loadavg.start}${m.loadavg.end !== undefined ? ` → ${m.loadavg.end}` : ''}`);
  out.push(`model: ${c.model}  device: ${c.device} ${c.dtype}${c.weights ? ` (${c.weights} weights)` : ''}  size: ${c.width}x${c.height} (latent ${c.latent[0]}x${c.latent[1]})  ` +
    `UNet batch ${c.batch}  n=${c.steps} after ${c.warmup} warm-up`);
  out.push(`command: ${r.command}${c.revision ? `  (revision ${c.revision})` : ''}`);
  out.push('');
  const rows: string[][] = [['stage', 'first ms', 'median ms', 'min ms', 'max ms', 'IQR ms', 'n']];
  rows.push(statRow(`text encoder (batch ${res.textEncoder.batch})`, res.textEncoder.firstMs, res.textEncoder.ms));
  rows.push(statRow(`UNet step (batch ${res.unet.batch})`, res.unet.firstMs, res.unet.ms));
  const rg = res.unet.regions;
  if (rg) rows.push(statRow(`  with ${rg.count} regions (alternating)`, rg.firstMs, rg.ms));
  rows.push(statRow(`VAE decode (batch ${res.vaeDecode.batch})`, res.vaeDecode.firstMs, res.vaeDecode.ms));
  out.push(pad(rows, [false, true, true, true, true, true, true]));
  out.push('');
  const u = res.unet;
  out.push(`UNet: ${num(u.gflopPerStep)} GFLOP per step → ${num(u.gflops)} GFLOP/s at the median` +
    (u.ofPeak !== undefined ? ` (${f(u.ofPeak * 100, 1)}% of peak)` : '') +
    `; graph build + weight upload ${f(u.buildMs / 1000, 2)} s; output finite: ${u.outputFinite}`);
  out.push(`CPUs busy during the timed UNet steps: this process ${f(u.cpu.own, 2)}` +
    (u.cpu.others !== undefined ? `, other processes ${f(u.cpu.others, 2)}${u.cpu.others > 0.1 ? '  ← shared machine: timings inflated' : ''}` : ''));
  if (rg) out.push(`UNet with ${rg.count} regions / plain, per alternating pair: median ${f(rg.ratio.median, 3)}× (min ${f(rg.ratio.min, 3)}, max ${f(rg.ratio.max, 3)}, n ${rg.ratio.n})`);
  const gen = res.generate;
  out.push(gen ? `generate(): ${gen.sampler}, ${gen.steps} steps, guidance ${gen.guidance}: ${f(gen.perImage.median, 2)} s per image (median of ${gen.perImage.n}; ${ms(gen.perStepMs)} ms per step, text encoder and VAE decode included)` : 'generate(): skipped (--no-generate)');
  out.push(`memory: peak RSS ${gib(res.memory.maxRssBytes)}; native peak cpu ${gib(res.memory.nativePeakBytes.cpu)}, cuda ${gib(res.memory.nativePeakBytes.cuda)}; ` +
    `weights unet ${gib(res.memory.weightsBytes.unet)}, vae ${gib(res.memory.weightsBytes.vae)}, text ${gib(res.memory.weightsBytes.text)}; model open ${ms(res.loadMs)} ms`);
  if (res.ops) {
    const o = res.ops;
    out.push('');
    out.push(`per op, one profiled UNet step (${o.clock === 'device' ? 'CUDA events between ops, launched without waiting; an interval also holds any GPU idle time before the op' : 'ops synchronised and timed one by one'}): ${ms(o.profiledMs)} ms profiled vs ${ms(o.stepMs)} ms median step`);
    const hasPeak = o.rows.some((x) => x.ofPeak !== undefined);
    const head = ['op', 'calls', 'total ms', '%', 'GFLOP', 'GFLOP/s', ...(hasPeak ? ['% peak'] : []), 'GB', 'GB/s'];
    const t: string[][] = [head];
    for (const x of o.rows) {
      t.push([
        x.op, String(x.calls), ms(x.ms), f(x.share * 100, 1), num(x.gflop), num(x.gflops),
        ...(hasPeak ? [x.ofPeak !== undefined && x.gflop > 0 ? f(x.ofPeak * 100, 1) : ''] : []),
        num(x.gb), num(x.gbps),
      ]);
    }
    out.push(pad(t, head.map((_, i) => i > 0)));
    out.push('');
    out.push('slowest op instances:');
    const s: string[][] = [['#', 'op', 'ms', 'GFLOP/s', 'shapes (in → out)']];
    for (const x of o.top) {
      s.push([String(x.index), x.op, ms(x.ms), num(x.gflops), `${x.shapes.in.map((a) => JSON.stringify(a)).join(' ')} → ${x.shapes.out.map((a) => JSON.stringify(a)).join(' ')}`]);
    }
    out.push(pad(s, [true, false, true, true, false]));
  }
  return out.join('\n');
}
