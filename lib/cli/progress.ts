// What the long-running commands share on a terminal: a progress bar, an ETA, and Ctrl-C handling.

/** `\r[####......] 3/10 1.2s`: one line redrawn in place (inside a long step: its percentage). */
export function progressBar(step: number, fraction: number | undefined, steps: number, ms: number): string {
  const w = 30;
  const done = Math.round(((step + (fraction ?? 0)) / steps) * w);
  const where = fraction === undefined ? `${step}/${steps}` : `${step}/${steps} (step ${step + 1}: ${Math.round(fraction * 100)}%)`;
  return `\r[${'#'.repeat(done)}${'.'.repeat(w - done)}] ${where} ${(ms / 1000).toFixed(1)}s\x1b[K`;
}

/** Seconds as "42 s", "3 min 05 s", "1 h 02 min". */
export function duration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.round(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

/**
 * Runs `work` with a signal that the first Ctrl-C fires (the run stops within a fraction of a
 * second with E_ABORTED); a second Ctrl-C exits at once.
 */
export async function interruptible<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const second = () => process.exit(130);
  const first = () => {
    ac.abort();
    process.once('SIGINT', second);
  };
  process.once('SIGINT', first);
  try {
    return await work(ac.signal);
  } finally {
    process.off('SIGINT', first);
  }
}
