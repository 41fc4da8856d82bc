// Checks of one CUDA stream per engine, shared by test/cuda-streams.test.ts (tap, from lib/) and
// scripts/gpu-engine-check.mjs (plain node on the GPU machine, from dist/): the caller passes the
// package's modules, the tiny model's path and a `check(ok, message)` callback.
//   1. each engine gets a stream of its own; a disposed engine's stream goes to the next engine
//   2. two engines generating at the same time give what each gives alone
//   3. a kernel error (an out-of-range token id, flagged on the device) is reported by the call of
//      the engine whose stream ran it, not by the other engine's call running at the same time
//   4. a tensor uploaded on one engine's stream is read correctly by a program on another's
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
  const latents = async (e, seed) => {
    const r = await e.generate({ ...opts, seed });
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
    const both = await Promise.all([latents(a, 1), latents(b, 2)]);
    const tol = dtype === 'float32' ? 1e-6 : 1e-3;
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
    const [ra, rb] = await Promise.allSettled([bad.run([idT, tabT]), latents(b, 2)]);
    check(ra.status === 'rejected' && ra.reason?.code === 'E_ARGUMENT', `[${dtype}] the bad id is reported by engine A's call (${ra.status === 'rejected' ? ra.reason?.code : 'no error'})`);
    check(rb.status === 'fulfilled' && relL2(rb.value, alone[1]) <= tol, `[${dtype}] engine B, running meanwhile, is unaffected (${rb.status === 'rejected' ? rb.reason?.message : 'ok'})`);
    const after = await latents(a, 1);
    check(relL2(after, alone[0]) <= tol, `[${dtype}] engine A works again after its error`);
    bad.dispose();
    idT.dispose();
    tabT.dispose();

    // A tensor uploaded on B's stream, read by a program on A's.
    const g2 = new Graph();
    const x = g2.input([3, 1000], 'float');
    g2.output(g2.scale(x, 2, 1));
    const p2 = new Program(g2, a.backend);
    const data = Float32Array.from({ length: 3000 }, (_, i) => Math.sin(i) + 2);
    const xT = Tensor.from(data, [3, 1000], b.backend);
    const [y] = await p2.run([xT]);
    const yv = y.toFloat32();
    const ref = data.map((v) => 2 * v + 1);
    check(relL2(yv, ref) <= (dtype === 'float32' ? 1e-7 : 1e-3), `[${dtype}] a tensor of B's stream read by a program on A's stream`);
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
