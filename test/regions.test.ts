// Regional identities (lib/regions.ts, native/regions.h): the UNet with token indices confined to
// boxes against the region goldens (cases.json `regions`) on every test backend, captured maps
// exactly 0 where a region hides its tokens, and the argument checks.
import { readFileSync } from 'node:fs';
import t, { type Test } from 'tap';
import { attentionHeatmap } from '../lib/attention.js';
import { Engine, type GenerateResult } from '../lib/engine.js';
import { Identity } from '../lib/identity/identity.js';
import type { Region } from '../lib/regions.js';
import { Denoiser } from '../lib/generate/denoiser.js';
import { prepareLatents } from '../lib/generate/latents.js';
import { resolveGenerate } from '../lib/generate/options.js';
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
  // generate()'s own stages — the resolved plan, the prepared latents, the Denoiser's loop (UNet,
  // CFG and the DDIM update in one call per step) — with the golden's contexts and region table
  // in place of the text encoder's: the regions on the conditional row only.
  t.test(`guided DDIM golden through generate()'s Denoiser on ${b.name}`, { skip: b.skip }, async (t) => {
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    t.teardown(() => engine.dispose());
    const rt = engine.runtime, g = new GoldenFile('regions');
    t.teardown(() => g.close());
    using init = g.tensor('ddim:init_latents');
    const plan = await resolveGenerate({ prompt: '', steps: 6, guidanceScale: 7.5, eta: 0, width: 128, height: 128, latents: init }, rt);
    using ctx = rt.upload(g.tensor('ddim:context'));
    using table = rt.regionInput(cases.regions, 77, 2, true);
    const cond = { rows: 2, dual: false, regions: true, at: async () => ({ stage: 0, k: ctx, regions: table }) };
    const out = await new Denoiser(rt, plan, cond).run(await prepareLatents(rt, plan), cond);
    const e = relL2(out.latents, g.f32('ddim:final_latents'));
    t.ok(e <= b.tol.golden, `ddim:final_latents rel L2 ${e.toExponential(2)}`);
  });
}

// The tiny engine on the CPU and the UNet golden's wide (16x24) latent and its context.
async function wideCase(t: Test) {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const unet = new GoldenFile('unet');
  t.teardown(() => unet.close());
  const x = unet.tensor('x_wide'), ctx = unet.tensor('context_wide');
  t.teardown(() => { x.dispose(); ctx.dispose(); });
  return { engine, x, ctx };
}

t.test('captured maps: exactly 0 outside a region for its tokens, rows still sum to 1', async (t) => {
  const { engine, x, ctx } = await wideCase(t);
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
  const { engine, x, ctx } = await wideCase(t);
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

// generate({ regions }): identity name → box. Maps captured at every layer and step must be exactly 0
// wherever an identity's slot tokens are hidden (the conditional branch), and an identity without a
// box must stay unconfined.
t.test('generate() with regions', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const D = 32;
  const vec = (seed: number, n = D) => Float32Array.from({ length: n }, (_, i) => 0.02 * Math.sin(seed * 7.1 + i * 1.3));
  const staged = (seed: number) => Float32Array.from({ length: 5 * D }, (_, i) => 0.02 * Math.sin(seed * 3.3 + i * 0.7));
  // DreamIdentity-like (S = 1, k = v, 2 words) and SeFi-IDE-like (S = 5, separate K/V).
  const ann = new Identity({ k: [[...vec(1)], [...vec(2)]], words: 2, dim: D, method: 'custom', name: 'ann' });
  const bob = new Identity({ k: staged(3), v: staged(4), stages: 5, words: 1, dim: D, method: 'sefi-ide', name: 'bob' });
  const cid = new Identity({ k: vec(5), words: 1, dim: D, method: 'custom', name: 'cid' });
  const boxes = { ann: [0, 0, 0.5, 1], bob: [0.5, 0.25, 1, 1] } as const;
  const base = { prompt: 'a photo of <id:ann> and <id:bob> with <id:cid>', identities: { ann, bob, cid }, width: 128, height: 64, steps: 3, seed: 4, regions: boxes };
  /** For each identity: the largest probability its slot tokens get outside / inside its box over every captured map. */
  const mass = (r: GenerateResult, name: string, box: readonly number[] = [0, 0, 1, 1]) => {
    const cap = r.attention!;
    const pos = [...cap.slots.keys()].filter((i) => cap.slots[i]! >= 0 && cap.slotNames[cap.slots[i]!] === name);
    let outside = 0, inside = 0;
    for (const m of cap.maps)
      for (let h = 0; h < m.heads; h++)
        for (let q = 0; q < m.height * m.width; q++) {
          const cx = ((q % m.width) + 0.5) / m.width, cy = (Math.floor(q / m.width) + 0.5) / m.height;
          const isIn = cx >= box[0]! && cy >= box[1]! && cx < box[2]! && cy < box[3]!;
          for (const p of pos) {
            const v = m.data[(h * m.height * m.width + q) * m.tokens + p]!;
            if (isIn) inside = Math.max(inside, v);
            else outside = Math.max(outside, v);
          }
        }
    return { outside, inside, slots: pos.length };
  };
  const done = (r: GenerateResult) => (r.latents.dispose(), r.pixels.dispose());
  const plain = await engine.generate({ ...base, regions: undefined });
  t.teardown(() => done(plain));

  t.test('each identity confined to its box, an identity without one unconfined; the image changes', async (t) => {
    const r = await engine.generate({ ...base, captureAttention: {} });
    for (const name of ['ann', 'bob'] as const) {
      const m = mass(r, name, boxes[name]);
      t.ok(m.slots > 0 && m.outside === 0 && m.inside > 0, `${name}: ${m.slots} slot(s), outside its box exactly 0, inside up to ${m.inside.toFixed(3)}`);
    }
    const c = mass(r, 'cid', [0, 0, 0.5, 1]);
    t.ok(c.outside > 0 && c.inside > 0, 'cid (no box) attends on both halves');
    // The heatmap (heat alone, alpha 1) of ann: none in the right eighth, past the blur of the coarsest (2x4) map resized.
    const hm = await attentionHeatmap(r, '<id:ann>', { alpha: 1 });
    let right = 0, left = 0;
    for (let y = 0; y < hm.height; y++)
      for (let x = 0; x < hm.width; x++) {
        const v = hm.data[(y * hm.width + x) * 3]!;
        if (x >= 0.875 * hm.width) right = Math.max(right, v);
        else if (x < 0.125 * hm.width) left = Math.min(left || 255, v);
      }
    t.ok(right === 0 && left > 0, `ann's heatmap: right eighth dark (max ${right}), left eighth lit (min ${left})`);
    t.ok(relL2(r.latents.toFloat32(), plain.latents.toFloat32()) > 1e-3, 'the regions change the latents');
    done(r);
  });

  t.test('batches: image k of a batch equals a one-image call with seed + k', async (t) => {
    const r = await engine.generate({ ...base, numImages: 2 });
    const one = await engine.generate({ ...base, seed: base.seed + 1 });
    const e = relL2(r.latents.toFloat32().subarray(r.latents.size / 2), one.latents.toFloat32());
    t.ok(e < 1e-5, `image 1 of the batch vs seed + 1 alone: rel L2 ${e.toExponential(1)}`);
    done(r);
    done(one);
  });

  t.test('every sampler, no guidance, image to image: confined', async (t) => {
    for (const sampler of ['ddim', 'dpmpp-2m', 'dpmpp-2m-karras', 'euler', 'euler-a'] as const) {
      const r = await engine.generate({ ...base, sampler, steps: 2, captureAttention: {} });
      t.equal(mass(r, 'ann', boxes.ann).outside, 0, `${sampler}: ann confined`);
      done(r);
    }
    const u = await engine.generate({ ...base, guidanceScale: 1, steps: 2, captureAttention: {} });
    t.equal(mass(u, 'bob', boxes.bob).outside, 0, 'guidance 1 (every row conditional): bob confined');
    done(u);
    const i2i = await engine.generate({ ...base, image: plain.images[0]!, strength: 0.7, steps: 3, captureAttention: {} });
    t.equal(mass(i2i, 'bob', boxes.bob).outside, 0, 'image to image: bob confined');
    done(i2i);
  });

  t.test('bad regions', async (t) => {
    await t.rejects(engine.generate({ ...base, regions: { ann: [0, 0, 0.5, 1], dan: [0.5, 0, 1, 1] } }), { code: 'E_ARGUMENT', message: /regions\.dan must be the box of an identity in the prompt \(ann, bob, cid\), got no <id:dan> in the prompt/ });
    await t.rejects(engine.generate({ ...base, regions: { ann: [0, 0, 1.5, 1] } }), { code: 'E_ARGUMENT', message: /regions\.ann\[2\] must be a finite number in \[0, 1\], got 1\.5/ });
    await t.rejects(engine.generate({ ...base, regions: { bob: [0.5, 0, 0.5, 1] } }), { code: 'E_ARGUMENT', message: /regions\.bob must be a box with x0 < x1/ });
    await t.rejects(engine.generate({ ...base, prompt: 'a photo', identities: undefined, regions: { ann: [0, 0, 1, 1] } }), { code: 'E_ARGUMENT', message: /regions\.ann .*the prompt has none/ });
    await t.rejects(engine.generate({ ...base, regions: [[0, 0, 1, 1]] as never }), { code: 'E_ARGUMENT', message: /regions must be an object of identity name/ });
  });
});
