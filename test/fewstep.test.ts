// The few-step path against diffusers (golden/fewstep.safetensors): the LCM sampler through
// generate() (4 steps without guidance; 6 steps with guidance 1.5 and a LoRA merged into the UNet
// and the text encoder), the tiny autoencoder (TAESD) decoding and encoding through the public API
// and decoding those LCM runs, the original TAESD file naming, and the typed errors.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine } from '../lib/engine.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { Identity } from '../lib/identity/identity.js';
import { f32ToF16 } from '../lib/io/half.js';
import { decodeImage, type RawImage } from '../lib/io/image.js';
import { writeSafetensors, type TensorToWrite } from '../lib/io/safetensors.js';
import { makeSampler } from '../lib/sched/samplers.js';
import { Tensor } from '../lib/tensor.js';
import { testBackends } from './helpers/backends.js';
import { GoldenFile, TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

const TAESD = fixture('tiny-taesd');
const KOHYA = fixture('tiny-lora/kohya.safetensors');
const PROMPT = 'a photo of the face of person'; // tokenizer.json case 1; case 0 ("") is the negative
const RUNS = { lcm4: { steps: 4, guidance: 1, lora: false }, lcm6_cfg_lora: { steps: 6, guidance: 1.5, lora: true } } as const;
const g = new GoldenFile('fewstep');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'idforge-fewstep-'));
t.teardown(() => {
  g.close();
  rmSync(tmp, { recursive: true, force: true });
});

t.test('LCM timesteps as LCMScheduler.set_timesteps gives them', async (t) => {
  const cfg = { beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, num_train_timesteps: 1000 };
  for (const run of ['lcm4', 'lcm6_cfg_lora'] as const) t.same(makeSampler('lcm', cfg, RUNS[run].steps).timesteps, [...g.f32(`${run}:timesteps`)]);
  // img2img: the schedule is built from int(50·strength) distillation steps (diffusers' LCM img2img pipeline).
  t.same(makeSampler('lcm', cfg, 4, { strength: 0.5 }).timesteps, [499, 379, 259, 139]);
  t.same(makeSampler('lcm', { ...cfg, original_inference_steps: 8 }, 4).timesteps, [999, 749, 499, 249]);
  const E = (m: RegExp) => ({ code: 'E_ARGUMENT', message: m });
  t.throws(() => makeSampler('lcm', cfg, 51), E(/steps must be at most original_inference_steps \(50\)/));
  t.throws(() => makeSampler('lcm', cfg, 8, { strength: 0.1 }), E(/strength must be at least 8\/50 .* = 5 distillation timesteps.*got 0\.1/));
  t.throws(() => makeSampler('lcm', { ...cfg, timestep_scaling: -1 }, 4), E(/timestep_scaling/));
  const one = makeSampler('lcm', cfg, 1);
  t.equal(one.stochastic, false, 'one step adds no noise');
  t.equal(one.coefficients(0, true).pn, 0);
});

for (const b of testBackends()) {
  t.test(`LCM and TAESD goldens through the public API on ${b.name}`, { skip: b.skip }, async (t) => {
    const TOL = b.tol.golden;
    const kl = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    const tiny = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype, vae: TAESD });
    t.teardown(() => {
      kl.dispose();
      tiny.dispose();
    });
    t.equal(tiny.configs.vae.scalingFactor, 1);
    t.equal(tiny.latentFactor, 8);

    for (const [z, out] of [['taesd:z', 'taesd:decoded'], ['taesd:z_wide', 'taesd:decoded_wide']]) {
      using zz = g.tensor(z);
      using d = await tiny.decodeLatents(zz);
      const e = relL2(d.toFloat32(), g.f32(out));
      t.ok(e <= TOL, `TAESD decode ${z}: rel L2 ${e.toExponential(2)}`);
    }
    using img = g.tensor('taesd:image');
    const { mean, logvar } = await tiny.encodeImage(img);
    const e = relL2(mean.toFloat32(), g.f32('taesd:latents'));
    t.ok(e <= TOL, `TAESD encode: rel L2 ${e.toExponential(2)}`);
    t.ok(logvar.toFloat32().every((v) => v === -Infinity), 'TAESD encodes deterministically (logvar −∞: a sample is the mean)');
    mean.dispose();
    logvar.dispose();

    for (const [run, r] of Object.entries(RUNS)) {
      using init = g.tensor(`${run}:init_latents`);
      using stepNoise = g.tensor(`${run}:noise`);
      const n = init.size;
      const per = g.f32(`${run}:latents_per_step`);
      for (const [engine, image] of [[kl, 'image_vae'], [tiny, 'image_taesd']] as const) {
        if (r.lora) await engine.setLoras([{ path: KOHYA, scale: 1 }]);
        let worst = 0;
        const res = await engine.generate({
          prompt: PROMPT, negativePrompt: '', steps: r.steps, guidanceScale: r.guidance, width: 128, height: 128, sampler: 'lcm', latents: init, stepNoise,
          onProgress: (p) => {
            if (p.fraction !== undefined) return;
            using l = p.latents();
            worst = Math.max(worst, relL2(l.toFloat32(), per.subarray((p.step - 1) * n, p.step * n)));
          },
        });
        if (r.lora) await engine.setLoras([]);
        const eFinal = relL2(res.latents.toFloat32(), g.f32(`${run}:final`));
        const eImg = relL2(res.pixels.toFloat32(), g.f32(`${run}:${image}`));
        t.ok(worst <= TOL, `${run}: latents after every step, worst rel L2 ${worst.toExponential(2)}`);
        t.ok(eFinal <= TOL, `${run}: the result (last denoised) rel L2 ${eFinal.toExponential(2)}`);
        t.ok(eImg <= TOL, `${run}: ${image} rel L2 ${eImg.toExponential(2)}`);
        t.same(res.warnings, []);
        res.latents.dispose();
        res.pixels.dispose();
      }
    }
  });
}

t.test('LCM draws its step noise from the seed; one step adds none', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const base = { prompt: PROMPT, width: 128, height: 128, sampler: 'lcm', guidanceScale: 1 } as const;
  const a = await engine.generate({ ...base, steps: 3, seed: 4 });
  const b = await engine.generate({ ...base, steps: 3, seed: 4 });
  const c = await engine.generate({ ...base, steps: 3, seed: 5 });
  t.ok(equal(a.latents, b.latents), 'same seed, same image');
  t.ok(relL2(a.latents.toFloat32(), c.latents.toFloat32()) > 1e-3, 'another seed, another image');
  using noise = Tensor.zeros([1, 1, 4, 16, 16]);
  const one = await engine.generate({ ...base, steps: 1, seed: 4, stepNoise: noise });
  t.match(one.warnings, [/stepNoise is ignored: sampler lcm adds no noise/]);
  await t.rejects(engine.generate({ ...base, steps: 60 }), { code: 'E_ARGUMENT', message: /original_inference_steps/ });
  for (const r of [a, b, c, one]) { r.latents.dispose(); r.pixels.dispose(); }
});

const equal = (a: Tensor, b: Tensor): boolean => {
  const x = a.toFloat32(), y = b.toFloat32();
  return x.length === y.length && x.every((v, i) => v === y[i]);
};

/** A random TAESD of the original architecture, as the original files and as a diffusers folder. */
function originalTaesd(): { original: string; diffusers: string } {
  let seed = 1;
  const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5) * 0.2;
  const dec: Record<string, TensorToWrite> = {};
  const enc: Record<string, TensorToWrite> = {};
  const dif: Record<string, TensorToWrite> = {};
  const put = (orig: Record<string, TensorToWrite>, key: string, diffusersKey: string, shape: number[]) => {
    const v = new Float32Array(shape.reduce((a, b) => a * b, 1)).map(rnd);
    orig[key] = { dtype: 'F16', shape, data: f32ToF16(v) };
    dif[diffusersKey] = orig[key]!;
  };
  const conv = (orig: Record<string, TensorToWrite>, i: number, part: string, o: number, c: number, bias: boolean) => {
    const d = part === 'decoder' ? i - 1 : i;
    put(orig, `${i}.weight`, `${part}.layers.${d}.weight`, [o, c, 3, 3]);
    if (bias) put(orig, `${i}.bias`, `${part}.layers.${d}.bias`, [o]);
  };
  const block = (orig: Record<string, TensorToWrite>, i: number, part: string) => {
    const d = part === 'decoder' ? i - 1 : i;
    for (const k of [0, 2, 4]) {
      put(orig, `${i}.conv.${k}.weight`, `${part}.layers.${d}.conv.${k}.weight`, [64, 64, 3, 3]);
      put(orig, `${i}.conv.${k}.bias`, `${part}.layers.${d}.conv.${k}.bias`, [64]);
    }
  };
  // taesd.py Encoder: conv(3, 64), Block, then 3× (conv stride 2 no bias, 3 Blocks), conv(64, 4).
  conv(enc, 0, 'encoder', 64, 3, true);
  block(enc, 1, 'encoder');
  for (const s of [2, 6, 10]) {
    conv(enc, s, 'encoder', 64, 64, false);
    for (let j = 1; j <= 3; j++) block(enc, s + j, 'encoder');
  }
  conv(enc, 14, 'encoder', 4, 64, true);
  // Decoder: Clamp, conv(4, 64), ReLU, 3× (3 Blocks, Upsample, conv no bias), Block, conv(64, 3).
  conv(dec, 1, 'decoder', 64, 4, true);
  for (const s of [3, 8, 13]) {
    for (let j = 0; j < 3; j++) block(dec, s + j, 'decoder');
    conv(dec, s + 4, 'decoder', 64, 64, false);
  }
  block(dec, 18, 'decoder');
  conv(dec, 19, 'decoder', 3, 64, true);
  const original = path.join(tmp, 'taesd');
  const diffusers = path.join(tmp, 'taesd-diffusers');
  mkdirSync(original);
  mkdirSync(diffusers);
  writeSafetensors(path.join(original, 'taesd_decoder.safetensors'), dec);
  writeSafetensors(path.join(original, 'taesd_encoder.safetensors'), enc);
  writeSafetensors(path.join(diffusers, 'diffusion_pytorch_model.safetensors'), dif);
  writeFileSync(path.join(diffusers, 'config.json'), JSON.stringify({ _class_name: 'AutoencoderTiny' })); // diffusers' defaults: the original architecture
  return { original, diffusers };
}

t.test('the original TAESD files (taesd_decoder / taesd_encoder.safetensors) load as the same AutoencoderTiny', async (t) => {
  const { original, diffusers } = originalTaesd();
  const a = await Engine.load(TINY_SD, { device: 'cpu', vae: original });
  const b = await Engine.load(TINY_SD, { device: 'cpu', vae: diffusers });
  const dec = await Engine.load(TINY_SD, { device: 'cpu', vae: path.join(original, 'taesd_decoder.safetensors') });
  t.teardown(() => { a.dispose(); b.dispose(); dec.dispose(); });
  // Small sizes: the original architecture is 64 channels wide.
  using z = Tensor.from(new Float32Array(64).map((_, i) => Math.sin(i)), [1, 4, 4, 4]);
  using x = await a.decodeLatents(z);
  using y = await b.decodeLatents(z);
  using w = await dec.decodeLatents(z);
  t.ok(equal(x, y), 'decoder: the same image');
  t.ok(equal(w, y), 'the decoder file itself, with its encoder beside it');
  using img = Tensor.from(new Float32Array(3 * 32 * 32).map((_, i) => Math.cos(i * 0.3)), [1, 3, 32, 32]);
  const ea = await a.encodeImage(img);
  const eb = await b.encodeImage(img);
  t.ok(equal(ea.mean, eb.mean), 'encoder: the same latents');
  for (const r of [ea, eb]) { r.mean.dispose(); r.logvar.dispose(); }
  // Without the encoder: decoding works, image to image is refused by name.
  const only = path.join(tmp, 'decoder-only');
  mkdirSync(only);
  cpSync(path.join(original, 'taesd_decoder.safetensors'), path.join(only, 'taesd_decoder.safetensors'));
  const d = await Engine.load(TINY_SD, { device: 'cpu', vae: only });
  t.teardown(() => d.dispose());
  using dz = await d.decodeLatents(z);
  t.ok(equal(dz, y));
  await t.rejects(d.encodeImage(img), { code: 'E_ARGUMENT', message: /taesd_encoder\.safetensors/ });
});

t.test('bad VAE folders are typed errors', async (t) => {
  const E = (code: string, m: RegExp) => ({ name: 'IdforgeError', code, message: m });
  await t.rejects(Engine.load(TINY_SD, { device: 'cpu', vae: path.join(tmp, 'nope') }), E('E_NOT_FOUND', /nope/));
  const empty = path.join(tmp, 'empty');
  mkdirSync(empty);
  await t.rejects(Engine.load(TINY_SD, { device: 'cpu', vae: empty }), E('E_MODEL_FORMAT', /not a VAE folder/));
  await t.rejects(Engine.load(TINY_SD, { device: 'cpu', vae: `${TINY_SD}/unet` }), E('E_MODEL_FORMAT', /UNet2DConditionModel.*AutoencoderKL or AutoencoderTiny/));
  // A TAESD config that does not describe its weights (32 channels declared, 16 stored).
  const wrong = path.join(tmp, 'wrong');
  cpSync(TAESD, wrong, { recursive: true });
  writeFileSync(path.join(wrong, 'config.json'), JSON.stringify({ _class_name: 'AutoencoderTiny', encoder_block_out_channels: [32, 32, 32, 32], decoder_block_out_channels: [32, 32, 32, 32], num_encoder_blocks: [1, 2, 1, 1], num_decoder_blocks: [1, 1, 2, 1] }));
  await t.rejects(Engine.load(TINY_SD, { device: 'cpu', vae: wrong }), E('E_MODEL_FORMAT', /encoder\.layers\.0\.weight.*\[16,3,3,3\].*\[32,3,3,3\]/));
  writeFileSync(path.join(wrong, 'config.json'), JSON.stringify({ _class_name: 'AutoencoderTiny', act_fn: 'silu' }));
  await t.rejects(Engine.load(TINY_SD, { device: 'cpu', vae: wrong }), E('E_MODEL_FORMAT', /act_fn/));
  // The model's own KL VAE folder works in place of itself.
  const same = await Engine.load(TINY_SD, { device: 'cpu', vae: `${TINY_SD}/vae` });
  t.equal(same.configs.vae.tiny, undefined);
  same.dispose();
});

t.test('CLI: --sampler lcm, --lora FILE[:scale] (repeated) and --vae make the image the API makes', async (t) => {
  const cli = fileURLToPath(new URL('../lib/cli.ts', import.meta.url));
  const loader = process.execArgv.filter((a) => a.includes('@tapjs/typescript'));
  const out = path.join(tmp, 'cli.png');
  const args = ['generate', '--model', TINY_SD, '--prompt', PROMPT, '--sampler', 'lcm', '--steps', '2', '--guidance', '1', '--seed', '3',
    '--width', '64', '--height', '64', '--lora', `${KOHYA}:0.8`, '--lora', fixture('tiny-lora/peft.safetensors'), '--vae', TAESD, '--out', out];
  const r = spawnSync(process.execPath, [...loader, cli, ...args], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, r.stderr);
  const engine = await Engine.load(TINY_SD, { device: 'cpu', vae: TAESD });
  t.teardown(() => engine.dispose());
  await engine.setLoras([{ path: KOHYA, scale: 0.8 }, { path: fixture('tiny-lora/peft.safetensors'), scale: 1 }]);
  const api = await engine.generate({ prompt: PROMPT, sampler: 'lcm', steps: 2, guidanceScale: 1, seed: 3, width: 64, height: 64 });
  const png = await decodeImage(out, 'out');
  t.same(png.data, api.images[0]!.data, 'the same pixels');
  api.latents.dispose();
  api.pixels.dispose();
});

t.test('identities with a LoRA and LCM: the words reach the LoRA text encoder, stage by stage, and attention capture works', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  const enc = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  t.teardown(() => { engine.dispose(); enc.dispose(); });
  await engine.setLoras([{ path: KOHYA, scale: 0.8 }]);
  const D = engine.configs.text.hiddenSize;
  const staged = Float32Array.from({ length: 5 * D }, (_, i) => 0.02 * Math.sin(i * 0.37));
  const identities = {
    'SeFi-IDE (5 stages, K ≠ V)': new Identity({ k: staged, v: staged.map((x) => -x), stages: 5, words: 1, dim: D, method: 'sefi-ide' }),
    'DreamIdentity (encoder words)': await enc.encode(fixture('faces/face-a.png'), { landmarks: 'centre' }),
  };
  const steps = 3;
  const sampler = makeSampler('lcm', engine.configs.scheduler, steps);
  using init = Tensor.from(new Float32Array(1024).map((_, i) => Math.sin(i * 0.1)), [1, 4, 16, 16]);
  using stepNoise = Tensor.from(new Float32Array(steps * 1024).map((_, i) => Math.cos(i * 0.3)), [steps, 1, 4, 16, 16]);
  const layer = 'mid_block.attentions.0.transformer_blocks.0.attn2';
  for (const [what, identity] of Object.entries(identities)) {
    const prompt = 'a photo of <id>';
    const r = await engine.generate({ prompt, identity, sampler: 'lcm', steps, guidanceScale: 1, width: 128, height: 128, latents: init, stepNoise, captureAttention: { layers: [layer] } });
    // The same run on the host: contexts from encodeText (the LoRA text encoder, the stage's words),
    // the UNet through predictNoise, the LCM update from the sampler's coefficients.
    let x = init.toFloat32();
    const noise = stepNoise.toFloat32();
    for (let i = 0; i < steps; i++) {
      const ts = sampler.timesteps[i]!;
      const stage = Math.floor((ts * identity.stages) / 1000);
      using k = await engine.encodeText(prompt, { identity, stage, kind: 'k' });
      using v = await engine.encodeText(prompt, { identity, stage, kind: 'v' });
      using xt = Tensor.from(x, [1, 4, 16, 16]);
      using eps = await engine.predictNoise(xt, ts, { k, v });
      const m = eps.toFloat32();
      const c = sampler.coefficients(i, i === 0);
      x = x.map((xv, j) => c.px * xv + c.p0 * (c.cx * xv + c.ce * m[j]!) + c.pe * m[j]! + c.pn * noise[i * 1024 + j]!);
    }
    const e = relL2(r.latents.toFloat32(), x);
    t.ok(e <= 1e-5, `${what}: generate() equals the host loop over encodeText + predictNoise: rel L2 ${e.toExponential(2)}`);
    const plain = await engine.generate({ prompt: 'a photo of person', sampler: 'lcm', steps, guidanceScale: 1, width: 128, height: 128, latents: init, stepNoise });
    t.ok(relL2(r.latents.toFloat32(), plain.latents.toFloat32()) > 1e-3, `${what}: the identity's words change the image`);
    const cap = r.attention!;
    t.equal(cap.maps.length, steps, `${what}: one map per step`);
    const slot = cap.slots.findIndex((s) => s >= 0);
    t.ok(slot > 0 && cap.tokens[slot] === '<id>', `${what}: the slot token is captured`);
    const map = cap.maps[steps - 1]!;
    let mass = 0;
    for (let q = 0; q < map.data.length / map.tokens; q++) mass += map.data[q * map.tokens + slot]!;
    t.ok(mass > 0, `${what}: attention reaches the identity's word`);
    for (const o of [r, plain]) { o.latents.dispose(); o.pixels.dispose(); }
  }
  await engine.setLoras([]);
});

t.test('previews: each step reports its denoised estimate through the preview VAE, at most 256 px', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu', previewVae: TAESD });
  const tiny = await Engine.load(TINY_SD, { device: 'cpu', vae: TAESD });
  t.teardown(() => { engine.dispose(); tiny.dispose(); });
  // One LCM step from t = 999: its result c_skip·x + c_out·x0 is x0 to ~1e-8 (c_skip ≈ 2.5e-9), so
  // the preview must be the TAESD decode of the result, averaged over 2×2 latent cells here
  // (a 384×128 image: 48×16 latents → 24×8 → a 192×64 preview).
  const previews: RawImage[][] = [];
  const r = await engine.generate({ prompt: PROMPT, sampler: 'lcm', steps: 1, guidanceScale: 1, width: 384, height: 128, seed: 2, numImages: 2,
    onProgress: (p) => { if (p.preview) previews.push(p.preview); } });
  t.equal(previews.length, 1, 'one preview per step');
  t.equal(previews[0]!.length, 2, 'one per image');
  t.same([previews[0]![0]!.width, previews[0]![0]!.height], [192, 64]);
  const lat = r.latents.toFloat32();
  const pooled = new Float32Array(2 * 4 * 8 * 24);
  for (let p = 0; p < 8; p++) for (let i = 0; i < 8; i++) for (let j = 0; j < 24; j++) {
    let s = 0;
    for (const [di, dj] of [[0, 0], [0, 1], [1, 0], [1, 1]]) s += lat[(p * 16 + 2 * i + di!) * 48 + 2 * j + dj!]!;
    pooled[(p * 8 + i) * 24 + j] = s / 4;
  }
  using z = Tensor.from(pooled, [2, 4, 8, 24]);
  using d = await tiny.decodeLatents(z);
  const want = d.toFloat32();
  let worst = 0;
  for (let k = 0; k < 2; k++) {
    const img = previews[0]![k]!;
    for (let y = 0; y < 64; y++) for (let x = 0; x < 192; x++) for (let c = 0; c < 3; c++) {
      const v = Math.round(Math.min(1, Math.max(0, want[((k * 3 + c) * 64 + y) * 192 + x]! / 2 + 0.5)) * 255);
      worst = Math.max(worst, Math.abs(v - img.data[(y * 192 + x) * 3 + c]!));
    }
  }
  t.ok(worst <= 1, `the preview is the preview VAE's decode of the denoised estimate (uint8 max diff ${worst})`);
  // Without onProgress nothing is decoded; an engine without a preview VAE reports none.
  const plain = await tiny.generate({ prompt: PROMPT, sampler: 'lcm', steps: 2, guidanceScale: 1, width: 64, height: 64, seed: 2, onProgress: (p) => t.equal(p.preview, undefined) });
  for (const o of [r, plain]) { o.latents.dispose(); o.pixels.dispose(); }
  await t.rejects(tiny.runtime.preview(z), { code: 'E_ARGUMENT', message: /previewVae/ });
  // A preview VAE for other latents is refused at load.
  const other = path.join(tmp, 'taesd-8ch');
  cpSync(TAESD, other, { recursive: true });
  writeFileSync(path.join(other, 'config.json'), JSON.stringify({ ...JSON.parse(readFileSync(path.join(TAESD, 'config.json'), 'utf8')), latent_channels: 8 }));
  await t.rejects(Engine.load(TINY_SD, { device: 'cpu', previewVae: other }), { code: 'E_MODEL_FORMAT' });
});

t.test('LCM image to image builds its schedule from the strength', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const base = { prompt: PROMPT, sampler: 'lcm', steps: 4, guidanceScale: 1, width: 128, height: 128, seed: 9 } as const;
  const src = await engine.generate({ ...base, sampler: 'ddim', steps: 2 });
  const image = src.images[0]!;
  const ts: number[] = [];
  const half = await engine.generate({ ...base, image, strength: 0.5, onProgress: (p) => p.fraction === undefined && ts.push(p.timestep) });
  t.same(ts, [499, 379, 259, 139], 'all 4 steps run, from the distillation steps int(50 · 0.5) allows (diffusers LCM img2img)');
  const full = await engine.generate({ ...base, image, strength: 1 });
  const t2i = await engine.generate({ ...base });
  t.ok(equal(full.latents, t2i.latents), 'strength 1 equals text to image');
  t.ok(relL2(half.latents.toFloat32(), t2i.latents.toFloat32()) > 1e-3, 'the image changes the result');
  await t.rejects(engine.generate({ ...base, steps: 8, image, strength: 0.1 }), { code: 'E_ARGUMENT', message: /strength must be at least 8\/50/ });
  for (const o of [src, half, full, t2i]) { o.latents.dispose(); o.pixels.dispose(); }
});

t.test('generate() and setLoras: a generate in flight keeps its weights; setLoras from onProgress is refused', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const opts = { prompt: PROMPT, sampler: 'lcm', steps: 3, guidanceScale: 1, width: 64, height: 64, seed: 1 } as const;
  const base = await engine.generate(opts);
  await engine.setLoras([{ path: KOHYA }]);
  const lora = await engine.generate(opts);
  await engine.setLoras([]);
  const order: string[] = [];
  const inFlight = engine.generate(opts).then((r) => (order.push('generate'), r));
  const merge = engine.setLoras([{ path: KOHYA }]).then(() => order.push('merge'));
  const after = engine.generate(opts).then((r) => (order.push('after'), r));
  const [a, , c] = await Promise.all([inFlight, merge, after]);
  t.same(order, ['generate', 'merge', 'after']);
  t.ok(equal(a.latents, base.latents), 'the generate in flight finished on the base weights');
  t.ok(equal(c.latents, lora.latents), 'the generate started during the merge ran with the LoRA');
  let refused: unknown;
  const r = await engine.generate({ ...opts, onProgress: (p) => { if (p.step === 1 && p.fraction === undefined) engine.setLoras([]).catch((e: unknown) => (refused = e)); } });
  await new Promise((resolve) => setImmediate(resolve));
  t.match(refused, { code: 'E_ARGUMENT', message: /setLoras must be called outside the engine's own calls/ });
  t.same(engine.loras, [{ path: KOHYA, scale: 1 }], 'the LoRA stayed');
  for (const o of [base, lora, a, c, r]) { o.latents.dispose(); o.pixels.dispose(); }
});
