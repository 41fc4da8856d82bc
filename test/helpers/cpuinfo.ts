// What the CPU kernel variants (native/cpu/isa/select.cc) need, read independently of the addon
// from /proc/cpuinfo (Linux reports a flag only where the OS also saves its registers).
import { existsSync, readFileSync } from 'node:fs';

/** The variants this machine supports according to /proc/cpuinfo, best first; undefined where unreadable. */
export function cpuinfoIsas(): string[] | undefined {
  if (!existsSync('/proc/cpuinfo')) return undefined;
  const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => /^(flags|Features)\s*:/.test(l));
  if (!line) return undefined;
  const f = new Set(line.split(':')[1]!.trim().split(/\s+/));
  if (process.arch === 'arm64') return ['neon'];
  const v = ['sse2'];
  if (f.has('avx2') && f.has('fma') && f.has('f16c')) v.unshift('avx2');
  if (v[0] === 'avx2' && f.has('avx512f') && f.has('avx512bw') && f.has('avx512vl')) v.unshift('avx512');
  return v;
}
