// Checks of one CUDA stream per engine, shared by test/cuda-streams.test.ts (tap, from lib/) and
// scripts/gpu-engine-check.mjs (plain node on the GPU machine, from dist/): the caller passes the
// package's modules, the tiny model's path and a `check(ok, message)` callback.
//   1. each engine gets a stream of its own; a disposed engine's stream goes to the next engine
//   2. two engines generating at the same time (their calls overlap) give what each gives alone
//      (within a tolerance: cuBLAS may pick other kernels while several streams are busy)
//   3. kernel errors (an out-of-range token id, flagged on the device) raised over and over on one
//      engine's stream while the other engine generates are reported by the first engine's calls
//      only; the other engine finishes, with the same result
//   4. a large tensor uploaded on one engine's stream while that stream is busy is read correctly
//      by a program on another engine's stream (the program waits for the upload)
/**
 * @param {{ Engine: any, Graph: any, Program: any, Tensor: any }} api
 * @param {string} model  the tiny SD fixture folder
 * @param {(ok: boolean, message: string) => void} check
 * @param {'float32' | 'float16'} dtype
 */
export async function streamChecks(api, model, check, dtype = 'float32') {
  const { Engine, Graph, Program, Tensor } = api;
  const opts = { prompt: 'a photo of the face of person', width: 64, height: 64, steps: 3 };
  const relL2 = (a, b) => {
    let n = 0, m = 0;
    for (let i = 0; i < b.length; i++) { n += (a[i] - b[i]) ** 2; m += b[i] ** 2; }
    return Math.sqrt(n / m);
  };
  const spans = [];
  const latents = async (e, seed) => {
    const t0 = performance.now();
    const r = await e.generate({ ...opts, seed });
    spans.push([t0, performance.now()]);
    const l = r.latents.toFloat32();
    r.latents.dispose();
    r.pixels.dispose();
    return l;
  };
  const a = await Engine.load(model, { device: 'cuda', dtype });
  const b = await Engine.load(model, { device: 'cuda', dtype });
  const disposeLater = [a, b];
  try {
    const sa = a.backend.stream, sb = b.backend.stream;
    check(Number.isInteger(sa) && Number.isInteger(sb) && sa > 0 && sb > 0 && sa !== sb, `[${dtype}] engines run on streams of their own (${sa}, ${sb})`);

    const alone = [await latents(a, 1), await latents(b, 2)];
    spans.length = 0;
    const both = await Promise.all([latents(a, 1), latents(b, 2)]);
    const [s0, s1] = spans;
    check(s0 && s1 && s0[0] < s1[1] && s1[0] < s0[1], `[${dtype}] the two generate() calls overlapped in time`);
    const tol = dtype === 'float32' ? 1e-4 : 1e-2;
    for (let i = 0; i < 2; i++) {
      const e = relL2(both[i], alone[i]);
      check(e <= tol, `[${dtype}] concurrent generate() on engine ${i ? 'B' : 'A'} = alone: rel L2 ${e.toExponential(2)} (≤ ${tol})`);
    }

    // An embedding lookup with an out-of-range id on A's stream, while B generates.
    const g = new Graph();
    const ids = g.input([1, 4], 'int32');
    const table = g.input([8, 16], 'float');
    g.output(g.embedding(ids, table));
    const bad = new Program(g, a.backend);
    const idT = Tensor.from(new Int32Array([1, 2, 99, 3]), [1, 4], { device: 'cuda', stream: sa });
    const tabT = Tensor.from(new Float32Array(128).fill(0.5), [8, 16], a.backend);
    let bDone = false;
    const bRun = latents(b, 2).finally(() => { bDone = true; });
    const codes = new Map();
    let badRuns = 0;
    while (!bDone || badRuns === 0) {
      badRuns++;
      const code = await bad.run([idT, tabT]).then(() => 'no error', (e) => e?.code ?? String(e));
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    const [rb] = await Promise.allSettled([bRun]);
    check(codes.size === 1 && codes.has('E_ARGUMENT'), `[${dtype}] each of ${badRuns} bad runs on A reports E_ARGUMENT itself (${JSON.stringify([...codes])})`);
    check(rb.status === 'fulfilled' && relL2(rb.value, alone[1]) <= tol, `[${dtype}] engine B, generating meanwhile, is unaffected (${rb.status === 'rejected' ? `${rb.reason?.code} ${rb.reason?.message}` : 'ok'})`);
    const after = await latents(a, 1);
    check(relL2(after, alone[0]) <= tol, `[${dtype}] engine A works again after its error`);
    bad.dispose();
    idT.dispose();
    tabT.dispose();

    // 64 MB uploaded on B's stream behind B's queued work, read at once by a program on A's.
    const n = 1 << 24;
    const g2 = new Graph();
    const x = g2.input([16, n / 16], 'float');
    g2.output(g2.scale(x, 2, 1));
    const p2 = new Program(g2, a.backend);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = (i % 1009) / 1009 + 1;
    const busy = latents(b, 3);
    await new Promise((r) => setTimeout(r, 5));  // B's first step is queued
    const xT = Tensor.from(data, [16, n / 16], b.backend);
    const [y] = await p2.run([xT]);
    const yv = y.toFloat32();
    let worst = 0;
    for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(yv[i] - (2 * data[i] + 1)) / (2 * data[i] + 1));
    check(worst <= (dtype === 'float32' ? 1e-6 : 1e-3), `[${dtype}] a 64 MB tensor of B's busy stream read by a program on A's stream: worst relative error ${worst.toExponential(2)}`);
    await busy;
    y.dispose();
    xT.dispose();
    p2.dispose();

    // Recycling: A's stream goes to the next engine, which works.
    a.dispose();
    const c = await Engine.load(model, { device: 'cuda', dtype });
    disposeLater.push(c);
    check(c.backend.stream === sa, `[${dtype}] a disposed engine's stream (${sa}) is reused by the next engine (${c.backend.stream})`);
    const lc = await latents(c, 1);
    check(relL2(lc, alone[0]) <= tol, `[${dtype}] the engine on the recycled stream generates the same latents`);
  } finally {
    for (const e of disposeLater) e.dispose();
  }
}
