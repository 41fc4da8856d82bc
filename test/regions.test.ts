// Regional identities (lib/regions.ts, native/regions.h): the UNet with token indices confined to
// boxes against the region goldens (cases.json `regions`) on every test backend, captured maps
// exactly 0 where a region hides its tokens, and the argument checks.
import { readFileSync } from 'node:fs';
import t from 'tap';
import { Engine } from '../lib/engine.js';
import type { Region } from '../lib/regions.js';
import { coefficientTensor, stepProgram } from '../lib/generate/denoiser.js';
import { makeSampler } from '../lib/sched/samplers.js';
import type { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { GoldenFile, TINY_SD, fixture } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

const cases = JSON.parse(readFileSync(fixture('golden/cases.json'), 'utf8')).regions as { regions: Region[]; overlap_regions: Region[] };

for (const b of testBackends()) {
  t.test(`region goldens through predictNoise on ${b.name}`, { skip: b.skip }, async (t) => {
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    t.teardown(() => engine.dispose());
    const unet = new GoldenFile('unet'), g = new GoldenFile('regions');
    t.teardown(() => (unet.close(), g.close()));
    using x = unet.tensor('x');
    using ctx = unet.tensor('context');
    using xw = unet.tensor('x_wide');
    using cw = unet.tensor('context_wide');
    const runs = [
      ['regions:eps_t500', x, ctx, 500, cases.regions],
      ['overlap:eps_t981', x, ctx, 981, cases.overlap_regions],
      ['regions:eps_wide_t741', xw, cw, 741, cases.regions],
      ['plain:eps_t500', x, ctx, 500, undefined],
    ] as const;
    for (const [name, lat, c, ts, regions] of runs) {
      using eps = await engine.predictNoise(lat, ts, c, regions ? { regions: [...regions] } : {});
      const e = relL2(eps.toFloat32(), g.f32(name));
      t.ok(e <= b.tol.golden, `${name}: rel L2 ${e.toExponential(2)}`);
    }
    // The regions matter: the confined run is far from the plain golden (cases.json: ~0.035).
    using eps = await engine.predictNoise(x, 500, ctx, { regions: [...cases.regions] });
    t.ok(relL2(eps.toFloat32(), g.f32('plain:eps_t500')) > 0.01, 'the regions change eps');
  });
}

for (const b of testBackends()) {
  // generate()'s per-step program (UNet, CFG, the sampler update in one call) with the golden's
  // contexts: the regions on the conditional row only.
  t.test(`guided DDIM golden through generate()'s step program on ${b.name}`, { skip: b.skip }, async (t) => {
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    t.teardown(() => engine.dispose());
    const rt = engine.runtime, g = new GoldenFile('regions');
    t.teardown(() => g.close());
    const sampler = makeSampler('ddim', engine.configs.scheduler, 6, { eta: 0 });
    const shape = { batch: 1, h: 16, w: 16, tokens: 77, guidance: 7.5, dual: false, noise: false, capture: [], regions: true };
    using ctx = rt.upload(g.tensor('ddim:context'));
    using table = rt.regionInput(cases.regions, 77, 2, true);
    const init = g.f32('ddim:init_latents');
    let [x, xin, state]: Tensor[] = [rt.floats(init, [1, 4, 16, 16]), rt.floats(init.map((v) => v * sampler.coefficients(0, true).cin), [1, 4, 16, 16]), rt.floats(new Float32Array(init.length), [1, 4, 16, 16])];
    const p = stepProgram(rt, shape);
    for (const [i, ts] of sampler.timesteps.entries()) {
      using coefs = coefficientTensor(sampler, i, i === 0, engine.backend);
      using tIn = rt.floats(new Float32Array([ts, ts]), [2]);
      const outs = await p.run([x!, xin!, state!, coefs, tIn, ctx, table]);
      for (const v of [x, xin, state]) v!.dispose();
      [x, state, xin] = outs;
    }
    const e = relL2(x!.toFloat32(), g.f32('ddim:final_latents'));
    t.ok(e <= b.tol.golden, `ddim:final_latents rel L2 ${e.toExponential(2)}`);
    for (const v of [x, xin, state]) v!.dispose();
  });
}

t.test('captured maps: exactly 0 outside a region for its tokens, rows still sum to 1', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const unet = new GoldenFile('unet');
  t.teardown(() => unet.close());
  using x = unet.tensor('x_wide');
  using ctx = unet.tensor('context_wide');
  const layers = engine.crossAttentionLayers.filter((l) => l.startsWith('down_blocks.0') || l.startsWith('mid_block'));
  const regions = [{ tokens: [5, 6], box: [0, 0, 0.5, 1] as const }, { tokens: [8, 9], box: [0.5, 0.25, 1, 1] as const }];
  const r = await engine.predictNoiseWithAttention(x, 741, ctx, layers, { regions });
  r.eps.dispose();
  for (const [layer, p] of r.attention) {
    const [bh, hw, keys] = p.shape as [number, number, number];
    const w = layer.startsWith('mid') ? 3 : 24, h = hw / w;  // the 16x24 latent, downsampled 8x in the mid block
    const d = p.toFloat32();
    let hiddenMass = 0, hiddenCells = 0, seenMass = 0, worstSum = 0;
    for (let q = 0; q < bh * hw; q++) {
      const n = q % hw, cx = ((n % w) + 0.5) / w, cy = (Math.floor(n / w) + 0.5) / h;
      let sum = 0;
      for (let k = 0; k < keys; k++) sum += d[q * keys + k]!;
      worstSum = Math.max(worstSum, Math.abs(sum - 1));
      for (const rg of regions) {
        const inside = cx >= rg.box[0] && cy >= rg.box[1] && cx < rg.box[2] && cy < rg.box[3];
        for (const k of rg.tokens) {
          if (inside) seenMass += d[q * keys + k]!;
          else {
            hiddenMass += Math.abs(d[q * keys + k]!);
            hiddenCells++;
          }
        }
      }
    }
    t.ok(hiddenCells > 0 && hiddenMass === 0 && seenMass > 0, `${layer}: ${hiddenCells} hidden probabilities, all exactly 0 (the region's own cells: ${seenMass.toFixed(3)})`);
    t.ok(worstSum < 1e-5, `${layer}: rows sum to 1 (worst ${worstSum.toExponential(1)})`);
    p.dispose();
  }
});

t.test('bad regions: E_ARGUMENT naming the region', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const unet = new GoldenFile('unet');
  t.teardown(() => unet.close());
  using x = unet.tensor('x_wide');
  using ctx = unet.tensor('context_wide');
  const ok = { tokens: [5], box: [0, 0, 0.5, 1] };
  const bad: [string, unknown, RegExp][] = [
    ['a box past the image', [ok, { tokens: [6], box: [0.5, 0, 1.2, 1] }], /regions\[1\]\.box\[2\] must be a finite number in \[0, 1\], got 1\.2/],
    ['a negative box', [{ tokens: [6], box: [-0.1, 0, 1, 1] }], /regions\[0\]\.box\[0\] .*got -0\.1/],
    ['x0 ≥ x1', [{ tokens: [6], box: [0.5, 0, 0.5, 1] }], /regions\[0\]\.box must be a box with x0 < x1 and y0 < y1, got \[0\.5,0,0\.5,1\]/],
    ['y0 ≥ y1', [{ tokens: [6], box: [0, 0.7, 1, 0.2] }], /regions\[0\]\.box must be a box with x0 < x1 and y0 < y1, got \[0,0\.7,1,0\.2\]/],
    ['a NaN box value', [{ tokens: [6], box: [0, NaN, 1, 1] }], /regions\[0\]\.box\[1\] .*got NaN/],
    ['a box of 3 values', [{ tokens: [6], box: [0, 0, 1] }], /regions\[0\]\.box must be \[x0, y0, x1, y1\]/],
    ['a token past the context', [ok, { tokens: [6, 77], box: [0, 0, 1, 1] }], /regions\[1\]\.tokens\[1\] must be a token index of the 77-token context, in \[0, 76\], got 77/],
    ['a fractional token', [{ tokens: [1.5], box: [0, 0, 1, 1] }], /regions\[0\]\.tokens\[0\] .*got 1\.5/],
    ['a token in two regions', [ok, { tokens: [7, 5], box: [0.5, 0, 1, 1] }], /regions\[1\]\.tokens must be tokens no other region owns \(token 5 is in regions\[0\] too\)/],
    ['no tokens', [{ tokens: [], box: [0, 0, 1, 1] }], /regions\[0\]\.tokens must be a non-empty array/],
    ['every token confined', [{ tokens: Array.from({ length: 77 }, (_, i) => i), box: [0, 0, 1, 1] }], /leave some of the 77 tokens unconfined.*got all 77 confined/],
    ['nine regions', Array.from({ length: 9 }, (_, i) => ({ tokens: [i], box: [0, 0, 1, 1] })), /regions must be an array of at most 8 regions/],
    ['not an array', { tokens: [1], box: [0, 0, 1, 1] }, /regions must be an array/],
    ['a null region', [null], /regions\[0\] must be \{ tokens, box \}, got null/],
  ];
  for (const [what, regions, message] of bad)
    await t.rejects(engine.predictNoise(x, 500, ctx, { regions: regions as Region[] }), { code: 'E_ARGUMENT', message }, what);
});
