// The samplers beside DDIM (DPM-Solver++ 2M with and without Karras sigmas, Euler, Euler
// ancestral) against diffusers 0.21.4's runs (golden/samplers.safetensors): the latents after
// every step and the final latents through generate(), the update running inside the step program.
// Also: the schedules themselves, batches of images, image to image, and the typed errors.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { Engine } from '../lib/engine.js';
import { Graph } from '../lib/graph/graph.js';
import { Program } from '../lib/graph/program.js';
import { coefficientTensor } from '../lib/generate/denoiser.js';
import { DDIMScheduler } from '../lib/sched/ddim.js';
import { COEFFICIENTS } from '../lib/sched/sampler.js';
import { makeSampler } from '../lib/sched/samplers.js';
import { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { GoldenFile, TINY_SD } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

const cases = JSON.parse(readFileSync(new URL('./fixtures/golden/cases.json', import.meta.url), 'utf8')) as {
  samplers: { runs: Record<string, { steps: number }>; guidance: number };
};
const cfg = JSON.parse(readFileSync(`${TINY_SD}/scheduler/scheduler_config.json`, 'utf8')) as object;
const NAMES: Record<string, 'dpmpp-2m' | 'dpmpp-2m-karras' | 'euler' | 'euler-a'> = {
  dpmpp2m: 'dpmpp-2m', dpmpp2m_karras: 'dpmpp-2m-karras', euler: 'euler', euler_a: 'euler-a',
};
const PROMPT = 'a photo of the face of person'; // tokenizer.json case 1; case 0 ("") is the negative
const g = new GoldenFile('samplers');
t.teardown(() => g.close());

t.test('schedules: timesteps and sigmas as diffusers sets them', async (t) => {
  for (const [gname, run] of Object.entries(cases.samplers.runs)) {
    const s = makeSampler(NAMES[gname], cfg, run.steps);
    t.same(s.timesteps, [...g.f32(`${gname}:timesteps`)], `${gname} timesteps`);
    if (gname.startsWith('euler')) {
      const sig = g.f32(`${gname}:sigmas`);
      t.equal(s.initNoiseSigma, sig[0], `${gname} init_noise_sigma = max σ`);
      // σ_i comes back as the (negated) ε coefficient of x0 = x − σ·ε.
      const ours = s.timesteps.map((_, i) => -s.coefficients(i, i === 0).ce);
      t.ok(relL2(Float32Array.from(ours), sig.subarray(0, ours.length)) < 1e-7, `${gname} sigmas`);
    } else t.equal(s.initNoiseSigma, 1);
  }
});

t.test('DDIM single steps through SAMPLER_STEP against diffusers (golden/scheduler)', async (t) => {
  const sg = new GoldenFile('scheduler');
  t.teardown(() => sg.close());
  const shape = sg.shape('sample');
  const ddim = DDIMScheduler.fromConfig(cfg);
  for (const [name, eta, i] of [['prev_t981_eta0', 0, 0], ['prev_t981_eta1', 1, 0], ['prev_t1_eta0', 0, 49]] as const) {
    const s = ddim.sampler(50, eta);
    const gr = new Graph();
    const [x, m, st] = [0, 1, 2].map(() => gr.input(shape));
    const c = gr.input([COEFFICIENTS], 'int32');
    const z = gr.input(shape);
    gr.output(gr.samplerStep(x!, m!, st!, c, z)[0]);
    using p = new Program(gr, { device: 'cpu', dtype: 'float32' });
    const ins = [sg.tensor('sample'), sg.tensor('model_output'), Tensor.zeros(shape), sg.tensor('variance_noise'), coefficientTensor(s, i, i === 0, { device: 'cpu', dtype: 'float32' })];
    const [xs, ms, ss, zs, k] = ins;
    const [out] = await p.run([xs!, ms!, ss!, k!, zs!]);
    const e = relL2(out!.toFloat32(), sg.f32(name));
    t.ok(e <= 1e-6, `${name}: rel L2 ${e.toExponential(2)}`);
    out!.dispose();
    for (const v of ins) v.dispose();
  }
});

t.test('a timestep_spacing the config names is used; without one DPM-Solver and Euler space "linspace"', async (t) => {
  // diffusers 0.21.4 set_timesteps, 8 steps, steps_offset 1. DPM "leading": (arange(9)·(1000 // 9))[::-1][:-1] + 1.
  t.same(makeSampler('dpmpp-2m', { ...cfg, timestep_spacing: 'leading' }, 8).timesteps, [889, 778, 667, 556, 445, 334, 223, 112]);
  // "trailing": round(arange(1000, 0, −125)) − 1.
  t.same(makeSampler('dpmpp-2m', { ...cfg, timestep_spacing: 'trailing' }, 8).timesteps, [999, 874, 749, 624, 499, 374, 249, 124]);
  // Euler "leading": arange(8)·125 reversed + 1, and init_noise_sigma = (max σ² + 1)^½.
  const e = makeSampler('euler', { ...cfg, timestep_spacing: 'leading' }, 8);
  t.same(e.timesteps, [876, 751, 626, 501, 376, 251, 126, 1]);
  const s0 = -e.coefficients(0, true).ce;
  t.ok(Math.abs(e.initNoiseSigma - Math.sqrt(s0 * s0 + 1)) < 1e-6);
  // The engine's parsed config keeps "not named" (null), so the model's PNDM config gives linspace.
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  t.equal(engine.configs.scheduler.timestepSpacing, null);
  t.same(makeSampler('euler', engine.configs.scheduler, 9).timesteps, [...g.f32('euler:timesteps')]);
  t.equal(engine.scheduler.config.timestepSpacing, 'leading', 'DDIM keeps its own default');
});

// On every test backend (test/helpers/backends.ts).
for (const b of testBackends()) {
  t.test(`goldens through generate() on ${b.name}`, { skip: b.skip }, async (t) => {
    const TOL = b.tol.golden;
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    t.teardown(() => engine.dispose());
    using init = g.tensor('init_latents');
    for (const [gname, run] of Object.entries(cases.samplers.runs)) {
      const n = init.size;
      const perStep = g.f32(`${gname}:latents_per_step`);
      let worst = 0;
      let steps = 0;
      using stepNoise = gname === 'euler_a' ? g.tensor('euler_a:noise') : undefined;
      const r = await engine.generate({
        prompt: PROMPT, negativePrompt: '', steps: run.steps, guidanceScale: cases.samplers.guidance, width: 128, height: 128,
        sampler: NAMES[gname], latents: init, ...(stepNoise ? { stepNoise } : {}),
        onProgress: (p) => {
          using l = p.latents();
          worst = Math.max(worst, relL2(l.toFloat32(), perStep.subarray((p.step - 1) * n, p.step * n)));
          steps++;
        },
      });
      t.equal(steps, run.steps);
      const eFinal = relL2(r.latents.toFloat32(), g.f32(`${gname}:final_latents`));
      const eImg = relL2(r.pixels.toFloat32(), g.f32(`${gname}:image`));
      t.ok(worst <= TOL, `${gname}: latents after every step, worst rel L2 ${worst.toExponential(2)}`);
      t.ok(eFinal <= TOL, `${gname}: final latents rel L2 ${eFinal.toExponential(2)}`);
      t.ok(eImg <= TOL, `${gname}: image rel L2 ${eImg.toExponential(2)}`);
      r.latents.dispose();
      r.pixels.dispose();
    }
  });
}

t.test('generate on the tiny model', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const base = { prompt: PROMPT, width: 128, height: 128, steps: 4 };
  const E = (code: string, arg: string) => ({ name: 'IdforgeError', code, message: new RegExp(arg) });

  t.test('one native call per step: UNet, guidance and the sampler update in one program', async (t) => {
    const calls: string[][] = [];
    const orig = Program.prototype.runProfiled;
    Program.prototype.runProfiled = function (this: Program, inputs, profile) {
      calls.push(this.opNames);
      return orig.call(this, inputs, profile);
    };
    let r;
    try {
      r = await engine.generate({ ...base, seed: 1, sampler: 'dpmpp-2m-karras' });
    } finally {
      Program.prototype.runProfiled = orig;
    }
    const steps = calls.filter((ops) => ops.includes('sampler_step'));
    t.equal(steps.length, 4, 'four step programs ran');
    for (const ops of steps) {
      t.equal(ops.filter((o) => o === 'sampler_step').length, 1);
      t.equal(ops.filter((o) => o === 'cfg').length, 1);
      t.ok(ops.includes('conv2d') && ops.includes('attention'), 'the UNet is in the same program');
    }
    // The rest: the text encoder before the loop and the VAE decoder after it.
    t.same(calls.filter((ops) => !ops.includes('sampler_step')).length, 2, 'no other native program between steps');
    r.latents.dispose();
    r.pixels.dispose();
  });

  t.test('DDIM with eta 1 draws its noise from stepNoise, as DDIMScheduler.step with that noise', async (t) => {
    // The host scheduler step is the one test/scheduler.test.ts checks against diffusers (eta 1).
    using init = Tensor.from(new Float32Array(1024).map((_, i) => Math.sin(i)), [1, 4, 16, 16]);
    const noise = new Float32Array(4 * 1024).map((_, i) => Math.cos(i * 0.7));
    using stepNoise = Tensor.from(noise, [4, 1, 4, 16, 16]);
    const r = await engine.generate({ ...base, negativePrompt: '', eta: 1, latents: init, stepNoise });
    using ctx = await engine.encodeText(['', PROMPT]);
    let lat = init.toFloat32();
    const ts = engine.scheduler.timesteps(4);
    for (let i = 0; i < ts.length; i++) {
      using x2 = Tensor.from(new Float32Array([...lat, ...lat]), [2, 4, 16, 16]);
      using eps = await engine.predictNoise(x2, ts[i]!, ctx);
      const e = eps.toFloat32();
      const guided = e.subarray(0, 1024).map((u, j) => u + 7.5 * (e[1024 + j]! - u));
      lat = engine.scheduler.step(guided, ts[i]!, lat, { steps: 4, eta: 1, noise: noise.subarray(i * 1024, (i + 1) * 1024) }).prevSample;
    }
    const err = relL2(r.latents.toFloat32(), lat);
    t.ok(err <= 1e-5, `final latents vs the host DDIM loop: rel L2 ${err.toExponential(2)}`);
    // Without stepNoise the seeded generator supplies it: deterministic, and different noise.
    const a = await engine.generate({ ...base, eta: 1, seed: 3 });
    const b = await engine.generate({ ...base, eta: 1, seed: 3 });
    t.same(a.latents.toFloat32(), b.latents.toFloat32(), 'same seed, same image');
    for (const x of [r, a, b]) { x.latents.dispose(); x.pixels.dispose(); }
  });

  t.test('numImages 3 is one batch and equals three single runs (seed + i)', async (t) => {
    for (const sampler of ['euler-a', 'dpmpp-2m'] as const) {
      const cap = { layers: ['mid_block.attentions.0.transformer_blocks.0.attn2'], steps: [4] };
      const r = await engine.generate({ ...base, seed: 10, sampler, numImages: 3, captureAttention: cap });
      t.equal(r.images.length, 3);
      t.same(r.latents.shape, [3, 4, 16, 16]);
      t.equal(r.attention!.maps.length, 3, 'one map per image');
      const all = r.latents.toFloat32();
      for (let i = 0; i < 3; i++) {
        const one = await engine.generate({ ...base, seed: 10 + i, sampler, captureAttention: cap });
        const e = relL2(all.subarray(i * 1024, (i + 1) * 1024), one.latents.toFloat32());
        let d = 0;
        for (let k = 0; k < one.images[0]!.data.length; k++) d = Math.max(d, Math.abs(one.images[0]!.data[k]! - r.images[i]!.data[k]!));
        const em = relL2(r.attention!.maps[i]!.data, one.attention!.maps[0]!.data);
        t.equal(r.attention!.maps[i]!.image, i);
        t.ok(e <= 1e-5 && d <= 1 && em <= 1e-5, `${sampler} image ${i}: latents rel L2 ${e.toExponential(2)}, uint8 max diff ${d}, attention rel L2 ${em.toExponential(2)}`);
        one.latents.dispose();
        one.pixels.dispose();
      }
      r.latents.dispose();
      r.pixels.dispose();
    }
  });

  t.test('memory is checked before allocation', async (t) => {
    process.env.IDFORGE_MEMORY_LIMIT = String(1 << 20);
    try {
      await t.rejects(engine.generate({ ...base, seed: 1, numImages: 8 }), E('E_OOM', 'numImages|image\\(s\\)'));
    } finally {
      delete process.env.IDFORGE_MEMORY_LIMIT;
    }
  });

  t.test('image to image', async (t) => {
    const src = await engine.generate({ ...base, seed: 5 });
    const image = src.images[0]!;
    for (const sampler of ['ddim', 'dpmpp-2m-karras', 'euler', 'euler-a'] as const) {
      const a = await engine.generate({ ...base, seed: 7, sampler, image, strength: 1 });
      const b = await engine.generate({ ...base, seed: 7, sampler });
      t.same(a.latents.toFloat32(), b.latents.toFloat32(), `${sampler}: strength 1 equals text-to-image from the same noise`);
      let steps = 0;
      const c = await engine.generate({ ...base, seed: 7, sampler, image, strength: 0.5, onProgress: () => steps++ });
      t.equal(steps, 2, `${sampler}: strength 0.5 of 4 steps runs the last 2`);
      t.ok(relL2(c.latents.toFloat32(), b.latents.toFloat32()) > 1e-3, `${sampler}: the image changes the result`);
      for (const r of [a, b, c]) { r.latents.dispose(); r.pixels.dispose(); }
    }
    src.latents.dispose();
    src.pixels.dispose();
  });

  t.test('an unknown sampler name is E_ARGUMENT naming it (generate()\'s: test/generate-args.test.ts)', async (t) => {
    t.throws(() => makeSampler('Euler', cfg, 10), E('E_ARGUMENT', 'sampler'));
  });
});
