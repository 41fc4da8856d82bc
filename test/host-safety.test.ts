// Many environments in one process: engines in the main thread and worker threads at once, a
// worker terminated in the middle of a native run, and a worker environment torn down with a run
// in flight. Each case runs in a child process (test/helpers/host-child.ts), so a crash of the
// process (V8's "Entering the V8 API without proper locking", std::terminate) fails the case
// instead of killing the test runner.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const child = fileURLToPath(new URL('./helpers/host-child.ts', import.meta.url));
// The TypeScript loader this runner uses, without coverage instrumentation.
const loader = process.execArgv.filter((a) => a.includes('@tapjs/typescript') || a.includes('--import=tsx') || a.includes('ts-node'));

type Child = { status: number | null; signal: string | null; out: Record<string, unknown> | undefined; stderr: string };
/** Runs the modes in one child process; one result per mode (the JSON line it printed, if any). */
function runChild(...modes: string[]): Child[] {
  const r = spawnSync(process.execPath, [...loader, child, ...modes], { encoding: 'utf8', timeout: 400_000, env: { ...process.env, IDFORGE_THREADS: '2' } });
  const lines = new Map<string, Record<string, unknown>>();
  for (const l of r.stdout.trim().split('\n')) {
    try {
      const o = JSON.parse(l) as Record<string, unknown>;
      lines.set(String(o.mode), o);
    } catch {
      // not a result line
    }
  }
  return modes.map((m) => ({ status: r.status, signal: r.signal, out: lines.get(m), stderr: r.stderr.slice(-2000) }));
}

t.test('engines in the main thread and two workers generate at the same time', async (t) => {
  const [r] = runChild('parallel') as [Child];
  t.equal(r.signal, null, `no crash (stderr: ${r.stderr})`);
  t.equal(r.status, 0, 'the process exits cleanly');
  const sums = r.out?.sums as number[] | undefined;
  t.ok(Array.isArray(sums) && sums.length === 3, 'three images');
  // Same model, seed and size in every environment: the same image.
  t.ok(sums && sums.every((s) => s === sums[0]) && sums[0]! > 0, `identical, non-black images in every environment: ${JSON.stringify(sums)}`);
});

// Both teardown cases in one child process, one after the other.
const [terminated, tornDown] = runChild('terminate', 'teardown') as [Child, Child];

t.test('a worker terminated mid-run: the process lives and its memory is freed', async (t) => {
  const r = terminated;
  t.equal(r.signal, null, `no crash (stderr: ${r.stderr})`);
  t.equal(r.status, 0);
  t.equal(r.out?.code, 1, 'the worker exits with the terminate code');
  t.ok((r.out?.sum as number) > 0, 'the main thread still generates afterwards');
  t.equal(r.out?.liveCpuBytes, 0, 'no native tensor memory is left live');
  // The run in flight is cancelled by the teardown watch (native/addon.cc), not finished: seconds,
  // not the rest of the step (whole tens of seconds for this size on a loaded CPU).
  t.ok((r.out?.stopMs as number) < 30_000, `worker stopped ${r.out?.stopMs} ms after terminate()`);
});

t.test('a worker environment torn down with a run in flight', async (t) => {
  const r = tornDown;
  t.equal(r.signal, null, `no crash (stderr: ${r.stderr})`);
  t.equal(r.status, 0);
  t.equal(r.out?.code, 0, 'the worker exits with its own process.exit code');
  t.ok((r.out?.stopMs as number) < 30_000, `worker gone ${r.out?.stopMs} ms after its run was announced`);
  t.ok((r.out?.sum as number) > 0, 'the process still generates afterwards');
  t.equal(r.out?.liveCpuBytes, 0, 'no native tensor memory is left live');
});
