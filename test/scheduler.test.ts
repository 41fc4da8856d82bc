import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseSchedulerConfig } from '../lib/sched/config.js';
import { DDIMScheduler } from '../lib/sched/ddim.js';
import { makeSampler } from '../lib/sched/samplers.js';
import { torchLinspaceF32, makeBetas, alphasCumprodF32, betasForAlphaBar } from '../lib/sched/betas.js';
import { randn, normalGenerator, Xoshiro128 } from '../lib/sched/random.js';
import { GoldenFile } from './helpers/fixtures.js';
import { relL2, maxAbs, maxRel } from './helpers/metrics.js';

const cfgPath = new URL('./fixtures/tiny-sd/scheduler/scheduler_config.json', import.meta.url);
const sdConfig = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
const g = new GoldenFile('scheduler');
t.teardown(() => g.close());
const sched = DDIMScheduler.fromConfig(sdConfig);
const E_ARG = { name: 'IdforgeError', code: 'E_ARGUMENT' };

t.test('config from the SD 1.5 PNDM config', async (t) => {
  t.equal(sched.config.betaSchedule, 'scaled_linear');
  t.equal(sched.config.stepsOffset, 1);
  t.equal(sched.config.setAlphaToOne, false);
  t.equal(sched.config.clipSample, false);
  t.equal(sched.config.timestepSpacing, 'leading');
  t.equal(sched.config.predictionType, 'epsilon');
  t.equal(sched.finalAlphaCumprod, sched.alphasCumprod[0]);
  t.equal(DDIMScheduler.fromConfigFile(cfgPath.pathname).alphasCumprod[999], sched.alphasCumprod[999]);
});

t.test('alphas_cumprod matches torch bit for bit', async (t) => {
  const ref = g.f32('alphas_cumprod');
  const ours = sched.alphasCumprod;
  t.equal(ours.length, 1000);
  const mr = maxRel(ours, ref);
  let differ = 0;
  for (let i = 0; i < ref.length; i++) if (ours[i] !== ref[i]) differ++;
  t.comment(`alphas_cumprod: max rel err ${mr.toExponential(3)}, ${differ} entries differ`);
  t.ok(mr <= 1e-6, 'max relative error <= 1e-6');
  t.equal(differ, 0, 'bit-identical');
});

for (const n of [50, 20, 7, 1]) {
  t.test(`timesteps for ${n} steps`, async (t) => {
    t.same(Array.from(sched.timesteps(n)), Array.from(g.i32(`timesteps_${n}`)));
  });
}

t.test('single DDIM steps against diffusers', async (t) => {
  const sample = g.f32('sample');
  const modelOutput = g.f32('model_output');
  const noise = g.f32('variance_noise');
  t.equal(sched.timesteps(50)[0], 981);
  const cases: [string, number, number, 'prev' | 'x0'][] = [
    ['pred_original_t981', 981, 0, 'x0'],
    ['prev_t981_eta0', 981, 0, 'prev'],
    ['prev_t981_eta1', 981, 1, 'prev'],
    ['prev_t1_eta0', 1, 0, 'prev'],
  ];
  for (const [name, ts, eta, which] of cases) {
    const ref = g.f32(name);
    const r = sched.step(modelOutput, ts, sample, { steps: 50, eta, noise });
    const out = which === 'x0' ? r.predOriginal : r.prevSample;
    const e = relL2(out, ref);
    t.comment(`${name}: relL2 ${e.toExponential(3)}, max abs ${maxAbs(out, ref).toExponential(3)}`);
    t.ok(e <= 1e-4, `${name} relL2 ${e} <= 1e-4`);
  }
  // eta = 1 with the same noise through an rng gives the same result.
  const it = noise[Symbol.iterator]();
  const viaRng = sched.step(modelOutput, 981, sample, { steps: 50, eta: 1, rng: () => it.next().value! });
  t.same(viaRng.prevSample, sched.step(modelOutput, 981, sample, { steps: 50, eta: 1, noise }).prevSample);
  // eta = 0 ignores noise.
  t.same(
    sched.step(modelOutput, 981, sample, { steps: 50, eta: 0, noise }).prevSample,
    sched.step(modelOutput, 981, sample, { steps: 50 }).prevSample,
  );
});

t.test('step coefficients', async (t) => {
  const c = sched.stepCoefficients(981, 50, 0);
  t.equal(c.prevT, 961);
  t.equal(c.aT, sched.alphasCumprod[981]);
  t.equal(c.aPrev, sched.alphasCumprod[961]);
  t.equal(c.sigma, 0);
  const last = sched.stepCoefficients(1, 50, 1);
  t.equal(last.prevT, -19);
  t.equal(last.aPrev, sched.alphasCumprod[0]);
  const ref = Math.sqrt((1 - last.aPrev) / (1 - last.aT)) * Math.sqrt(1 - last.aT / last.aPrev);
  // float32 cancellation in 1 − aT/aPrev (≈ 8.5e-4 here) limits the agreement with float64.
  t.ok(Math.abs(last.sigma - ref) <= 2e-4 * ref);
  const one = DDIMScheduler.fromConfig({ ...sdConfig, set_alpha_to_one: true });
  t.equal(one.stepCoefficients(1, 50, 0).aPrev, 1);
});

t.test('bad inputs', async (t) => {
  const x = new Float32Array(8);
  for (const s of [0, 1001, NaN, 2.5, -1, Infinity]) t.throws(() => sched.timesteps(s), E_ARG, `steps ${s}`);
  t.throws(() => sched.timesteps('10' as unknown as number), E_ARG);
  t.throws(() => sched.timesteps(1000), E_ARG, 'leading+offset 1 with 1000 steps reaches t=1000');
  for (const eta of [NaN, -0.5, Infinity]) {
    t.throws(() => sched.step(x, 981, x, { steps: 50, eta }), E_ARG, `eta ${eta}`);
    t.throws(() => sched.stepCoefficients(981, 50, eta), E_ARG);
  }
  for (const ts of [-1, 1000, 1.5, NaN]) t.throws(() => sched.step(x, ts, x, { steps: 50 }), E_ARG, `t ${ts}`);
  t.throws(() => sched.step(x, 981, x, { steps: 0 }), E_ARG);
  t.throws(() => sched.step(x, 981, x, { steps: 50, eta: 1 }), E_ARG, 'eta > 0 without noise');
  t.throws(() => sched.step(x, 981, new Float32Array(4), { steps: 50 }), { code: 'E_SHAPE' });
  t.throws(() => sched.step(x, 981, x, { steps: 50, eta: 1, noise: new Float32Array(3) }), { code: 'E_SHAPE' });
  t.throws(() => DDIMScheduler.fromConfig({ thresholding: true }), E_ARG);
  t.throws(() => DDIMScheduler.fromConfig({ beta_schedule: 'sigmoid' }), E_ARG);
  t.throws(() => DDIMScheduler.fromConfig({ prediction_type: 'x' }), E_ARG);
  t.throws(() => DDIMScheduler.fromConfig({ num_train_timesteps: 0 }), E_ARG);
  t.throws(() => DDIMScheduler.fromConfig({ trained_betas: [0.1, 0.2] }), E_ARG);
});

t.test('other schedules and spacings', async (t) => {
  // diffusers DDIM defaults: linear 1e-4..0.02, set_alpha_to_one, clip_sample.
  const d = DDIMScheduler.fromConfig({});
  t.equal(d.finalAlphaCumprod, 1);
  t.ok(Math.abs(d.betas[0]! - 1e-4) < 1e-9 && Math.abs(d.betas[999]! - 0.02) < 1e-9);
  t.same(Array.from(d.timesteps(10)), [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
  const lin = DDIMScheduler.fromConfig({ ...sdConfig, timestep_spacing: 'linspace' });
  t.same(Array.from(lin.timesteps(4)), [999, 666, 333, 0]);
  const tr = DDIMScheduler.fromConfig({ ...sdConfig, timestep_spacing: 'trailing' });
  t.same(Array.from(tr.timesteps(4)), [999, 749, 499, 249]);
  t.same(Array.from(tr.timesteps(1)), [999]);
  const cos = DDIMScheduler.fromConfig({ beta_schedule: 'squaredcos_cap_v2' });
  t.ok(cos.betas.every((b) => b > 0 && b <= Math.fround(0.999)));
  t.same(cos.betas, betasForAlphaBar(1000));
  const tb = Array.from({ length: 1000 }, (_, i) => 0.0001 + i * 1e-5);
  t.same(DDIMScheduler.fromConfig({ trained_betas: tb }).betas, Float32Array.from(tb));
  t.same(
    DDIMScheduler.fromConfig({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012 }).alphasCumprod,
    alphasCumprodF32(makeBetas({ numTrainTimesteps: 1000, betaStart: 0.00085, betaEnd: 0.012, betaSchedule: 'scaled_linear' })),
  );
  t.same(torchLinspaceF32(2, 3, 1), Float32Array.of(2));
  t.same(torchLinspaceF32(0, 1, 5), Float32Array.of(0, 0.25, 0.5, 0.75, 1));
  const zsnr = DDIMScheduler.fromConfig({ ...sdConfig, rescale_betas_zero_snr: true });
  t.equal(zsnr.alphasCumprod[999], 0, 'zero terminal SNR');
  t.ok(Math.abs(zsnr.alphasCumprod[0]! - sched.alphasCumprod[0]!) < 1e-6);
});

t.test('v_prediction and sample prediction are consistent with epsilon', async (t) => {
  const x0 = randn(1, 64);
  const eps = randn(2, 64);
  const tt = 501;
  const base = DDIMScheduler.fromConfig(sdConfig);
  const a = base.alphasCumprod[tt]!;
  const x = Float32Array.from(x0, (v, i) => Math.sqrt(a) * v + Math.sqrt(1 - a) * eps[i]!);
  const v = Float32Array.from(x0, (xv, i) => Math.sqrt(a) * eps[i]! - Math.sqrt(1 - a) * xv);
  const rEps = base.step(eps, tt, x, { steps: 20 });
  const rV = DDIMScheduler.fromConfig({ ...sdConfig, prediction_type: 'v_prediction' }).step(v, tt, x, { steps: 20 });
  const rS = DDIMScheduler.fromConfig({ ...sdConfig, prediction_type: 'sample' }).step(x0, tt, x, { steps: 20 });
  t.ok(relL2(rEps.predOriginal, x0) < 1e-5);
  t.ok(relL2(rV.predOriginal, x0) < 1e-5);
  t.ok(relL2(rV.prevSample, rEps.prevSample) < 1e-5);
  t.ok(relL2(rS.prevSample, rEps.prevSample) < 1e-5);
  // clip_sample clamps x0.
  const clipped = DDIMScheduler.fromConfig({ ...sdConfig, clip_sample: true, clip_sample_range: 0.5 });
  const rc = clipped.step(eps, tt, x, { steps: 20 });
  t.ok(rc.predOriginal.every((v) => v >= -0.5 && v <= 0.5));
});

t.test('randn: deterministic seeded standard normals', async (t) => {
  // xoshiro128** reference outputs for state {1, 2, 3, 4}.
  const x = Xoshiro128.fromState(1, 2, 3, 4);
  t.same([x.next(), x.next(), x.next()], [11520, 0, 5927040]);
  const a = randn(42, 1000);
  t.same(a, randn(42, 1000), 'same seed, same numbers');
  t.same(randn(42n, 10), a.subarray(0, 10), 'bigint seed equals number seed');
  t.same(randn(42, 7), a.subarray(0, 7), 'prefix-stable for odd lengths');
  const gen = normalGenerator(42);
  t.same(Float32Array.from({ length: 1000 }, gen), a, 'generator yields the same stream');
  t.notSame(randn(43, 1000), a, 'different seeds differ');
  t.notSame(randn(-42, 1000), a);
  let mean = 0;
  let m2 = 0;
  const n = 100_000;
  const big = randn(12345, n);
  for (const v of big) mean += v;
  mean /= n;
  for (const v of big) m2 += (v - mean) ** 2;
  const variance = m2 / (n - 1);
  t.comment(`randn 1e5: mean ${mean.toFixed(5)}, var ${variance.toFixed(5)}`);
  t.ok(Math.abs(mean) < 0.015, 'mean ≈ 0');
  t.ok(Math.abs(variance - 1) < 0.02, 'variance ≈ 1');
  t.ok(big.every((v) => Number.isFinite(v)));
  t.equal(randn(1, 0).length, 0);
  t.throws(() => randn(1.5, 3), E_ARG);
  t.throws(() => randn(1, -1), E_ARG);
});

t.test('one scheduler-config parse, with the defaults diffusers gives keys a config leaves out', async (t) => {
  // diffusers' DDIMScheduler.__init__ defaults (schedulers/scheduling_ddim.py); a config naming
  // PNDMScheduler (SD 1.x's) keeps PNDMScheduler.__init__'s set_alpha_to_one=False.
  t.match(parseSchedulerConfig({}), {
    className: 'DDIMScheduler', numTrainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, betaSchedule: 'linear', trainedBetas: null,
    setAlphaToOne: true, clipSample: true, clipSampleRange: 1, stepsOffset: 0, predictionType: 'epsilon', timestepSpacing: null, rescaleBetasZeroSnr: false,
  });
  t.equal(parseSchedulerConfig({ _class_name: 'PNDMScheduler' }).setAlphaToOne, false);
  t.equal(parseSchedulerConfig({ _class_name: 'PNDMScheduler', set_alpha_to_one: true }).setAlphaToOne, true, 'the file wins');
  // The model loader (a file) and DDIMScheduler.fromConfig (an object) read the same parse.
  const partial = { _class_name: 'PNDMScheduler', steps_offset: 1 };
  const file = parseSchedulerConfig(partial, 'scheduler_config.json');
  t.same(DDIMScheduler.fromParsed(file).alphasCumprod, DDIMScheduler.fromConfig(partial).alphasCumprod);
  t.same(parseSchedulerConfig(file), file, 'a parsed config parses to itself (camelCase keys)');
  t.same(parseSchedulerConfig(sdConfig, 'sd15'), { ...file, betaStart: 0.00085, betaEnd: 0.012, betaSchedule: 'scaled_linear', clipSample: false }, 'SD 1.5 names every key that differs');
  // A file's bad value is E_MODEL_FORMAT naming the file; an argument's is E_ARGUMENT naming the key.
  t.throws(() => parseSchedulerConfig({ beta_schedule: 'sigmoid' }, 'x.json'), { code: 'E_MODEL_FORMAT', message: 'x.json: "beta_schedule" must be one of linear, scaled_linear, squaredcos_cap_v2, got "sigmoid"' });
  t.throws(() => parseSchedulerConfig({ beta_schedule: 'sigmoid' }), { code: 'E_ARGUMENT', message: 'scheduler config beta_schedule must be one of linear, scaled_linear, squaredcos_cap_v2, got "sigmoid"' });
  t.throws(() => parseSchedulerConfig({ trained_betas: [0.1] }), { code: 'E_ARGUMENT', message: /trained_betas must be null or num_train_timesteps \(1000\)/ });
  t.throws(() => parseSchedulerConfig([]), { code: 'E_ARGUMENT' });
  // Euler reads interpolation_type from the parse (a model file's value was dropped before); DDIM ignores it, as diffusers.
  t.throws(() => makeSampler('euler', { interpolation_type: 'log_linear' }, 10), { code: 'E_ARGUMENT', message: /interpolation_type/ });
  t.equal(makeSampler('ddim', { interpolation_type: 'log_linear' }, 10).timesteps.length, 10);
});
