/**
 * What the benchmark ran on, and two fp32 peaks to read GFLOP/s against: the nominal one,
 * cores × FMA units × SIMD lanes × 2 FLOPs × clock (FMA units assumed 2 per core, true of server
 * cores with AVX-512 since Skylake-SP Gold/Platinum and of recent desktop cores; the clock the OS
 * reports, under a hypervisor usually the nominal, not the turbo or the AVX-512 licence clock), and
 * the measured one (measurePeak: independent FMA chains on the CPU kernels in use, every backend
 * thread), which is what the per-op "% of peak" uses when present. Yardsticks, not promises.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { backends, native, type CpuIsa } from '../native.js';

export interface MachineInfo {
  cpu: string;
  /** Logical CPUs the OS reports. */
  cpus: number;
  /** Threads the CPU backend uses (IDFORGE_THREADS, else every logical CPU). */
  threads: number;
  clockMHz: number;
  simd: 'avx512' | 'avx2' | 'avx' | 'sse' | 'neon' | 'unknown';
  /** The CPU kernel variant in use (backends().cpu.isa; IDFORGE_CPU_ISA forces a lower one). */
  isa: CpuIsa;
  /** The FMA peak those kernels reach on the backend threads, GFLOP/s (measurePeak), when measured. */
  measuredPeakGflops?: number;
  fmaUnitsAssumed: number;
  /** Nominal fp32 peak of the CPU threads in use, GFLOP/s (null where the SIMD width is unknown). */
  fp32PeakGflops: number | null;
  peakFormula: string;
  memoryGB: number;
  os: string;
  node: string;
  /** 1-minute load average when the run started and ended: other work on the machine skews timings. */
  loadavg: { start: number; end?: number };
  cuda: { available: boolean; device?: string; reason?: string };
}

function cpuFlags(): Set<string> {
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const line = text.split('\n').find((l) => /^(flags|Features)\s*:/.test(l));
    return new Set(line ? line.split(':')[1]!.trim().split(/\s+/) : []);
  } catch {
    return new Set();
  }
}

function clockMHz(): number {
  const s = os.cpus()[0]?.speed ?? 0;
  if (s > 0) return s;
  try {
    const m = /cpu MHz\s*:\s*([\d.]+)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

export function backendThreads(): number {
  const env = Number(process.env.IDFORGE_THREADS);
  const hc = os.availableParallelism();
  return Number.isInteger(env) && env > 0 ? env : hc;
}

export function describeMachine(): MachineInfo {
  const flags = cpuFlags();
  const simd: MachineInfo['simd'] = flags.has('avx512f')
    ? 'avx512'
    : flags.has('avx2') && flags.has('fma')
      ? 'avx2'
      : flags.has('avx')
        ? 'avx'
        : flags.has('sse2')
          ? 'sse'
          : flags.has('asimd')
            ? 'neon'
            : 'unknown';
  const lanes = { avx512: 16, avx2: 8, avx: 8, sse: 4, neon: 4, unknown: 0 }[simd];
  // Without FMA an add and a multiply issue separately: same 2 FLOPs per lane per cycle per port pair.
  const fmaUnits = 2;
  const cpus = os.cpus().length;
  const threads = backendThreads();
  const used = Math.min(threads, cpus);
  const mhz = clockMHz();
  const peak = lanes && mhz ? (used * fmaUnits * lanes * 2 * mhz) / 1000 : null;
  let cuda: MachineInfo['cuda'];
  try {
    const c = backends().cuda;
    cuda = { available: c.available, ...(c.device ? { device: c.device } : {}), ...(c.reason ? { reason: c.reason } : {}) };
  } catch (e) {
    cuda = { available: false, reason: (e as Error).message };
  }
  return {
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cpus,
    threads,
    clockMHz: mhz,
    simd,
    isa: backends().cpu.isa,
    fmaUnitsAssumed: fmaUnits,
    fp32PeakGflops: peak,
    peakFormula: `${used} cores × ${fmaUnits} FMA × ${lanes} lanes × 2 × ${(mhz / 1000).toFixed(2)} GHz`,
    memoryGB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    loadavg: { start: Math.round(os.loadavg()[0]! * 100) / 100 },
    cuda,
  };
}

/** The FMA peak of the CPU kernels in use on every backend thread, GFLOP/s (about `seconds` of work). */
export function measurePeak(seconds = 0.3): number {
  return native().cpuPeak(seconds).gflops;
}

/**
 * Measures how much CPU this process and everything else used over an interval (Linux
 * /proc/stat; elsewhere `others` is undefined): `own` and `others` in CPUs (cores busy on
 * average). Others above ~0.1 mean the timings of that interval were shared with other work.
 */
export function cpuMeter(): () => { own: number; others?: number } {
  const sys0 = systemTimes();
  const own0 = process.cpuUsage();
  const t0 = performance.now();
  return () => {
    const wall = (performance.now() - t0) / 1000;
    const d = process.cpuUsage(own0);
    const own = wall > 0 ? (d.user + d.system) / 1e6 / wall : 0;
    const sys1 = systemTimes();
    if (!sys0 || !sys1 || sys1.total <= sys0.total) return { own };
    const busy = ((sys1.busy - sys0.busy) / (sys1.total - sys0.total)) * os.cpus().length;
    return { own, others: Math.max(0, busy - own) };
  };
}

function systemTimes(): { busy: number; total: number } | undefined {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = v.reduce((a, b) => a + b, 0);
    const idle = v[3]! + v[4]!;
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}
