// Bounded by construction and no silent garbage: every config bound is checked before any layout
// or graph is built, non-regular files are refused up front with accurate messages, strict
// formats, and NaN/Inf in weights or latents is a typed error.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { IdforgeError } from '../lib/errors.js';
import { checkConfigs } from '../lib/io/bounds.js';
import { parseTextConfig, parseUNetConfig, parseVaeConfig, readJsonFile, type ModelConfigs } from '../lib/io/configs.js';
import { parseSchedulerConfig } from '../lib/sched/config.js';
import { fileError, duplicateJsonKey } from '../lib/io/files.js';
import { checkWeightMemory, modelLayout } from '../lib/io/layout.js';
import { SafetensorsFile, writeSafetensors, type StDType } from '../lib/io/safetensors.js';
import { checkLatentsFinite } from '../lib/numeric.js';
import { Tensor } from '../lib/tensor.js';
import { TINY_SD } from './helpers/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-safety-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A copy of tiny-sd (weights as symlinks: only configs are edited) with `edit` applied. */
function variant(name: string, edit: (dir: string) => void): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const comp of fs.readdirSync(TINY_SD)) {
    const src = path.join(TINY_SD, comp);
    if (!fs.statSync(src).isDirectory()) {
      fs.copyFileSync(src, path.join(dir, comp));
      continue;
    }
    fs.mkdirSync(path.join(dir, comp), { recursive: true });
    for (const f of fs.readdirSync(src)) {
      if (f.endsWith('.json') || f.endsWith('.txt')) fs.copyFileSync(path.join(src, f), path.join(dir, comp, f));
      else fs.symlinkSync(path.join(src, f), path.join(dir, comp, f));
    }
  }
  edit(dir);
  return dir;
}
/** Rewrites a variant's UNet weights file through `edit` (tensor name, stored dtype, a copy of its bytes). */
function rewriteUnet(dir: string, edit: (key: string, dtype: StDType, data: Buffer) => { dtype: StDType; data: Buffer }): void {
  const file = path.join(dir, 'unet/diffusion_pytorch_model.safetensors');
  const src = SafetensorsFile.open(path.join(TINY_SD, 'unet/diffusion_pytorch_model.safetensors'));
  const out: Record<string, { dtype: StDType; shape: number[]; data: ArrayBufferView }> = {};
  for (const k of src.names()) {
    const i = src.info(k);
    out[k] = { ...edit(k, i.dtype, Buffer.from(src.readBytes(k))), shape: i.shape };
  }
  src.close();
  fs.rmSync(file);
  writeSafetensors(file, out);
}
const setJson = (file: string, patch: Record<string, unknown>) =>
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), ...patch }));

function tinyConfigs(): ModelConfigs {
  const read = (c: string) => readJsonFile(path.join(TINY_SD, c));
  return {
    unet: parseUNetConfig(read('unet/config.json'), 'unet'),
    vae: parseVaeConfig(read('vae/config.json'), 'vae'),
    text: parseTextConfig(read('text_encoder/config.json'), 'text'),
    scheduler: parseSchedulerConfig(read('scheduler/scheduler_config.json'), 'scheduler'),
  };
}

t.test('each config bound is refused before anything is built, naming the field and value', async (t) => {
  checkConfigs(tinyConfigs()); // the real fixture passes
  const cases: [keyof ModelConfigs, string, unknown, RegExp][] = [
    ['unet', 'layersPerBlock', 100000, /layers_per_block 100000 is outside 1\.\.16/],
    ['unet', 'blockOutChannels', [32, 64, 1e6, 64], /block_out_channels .*1000000, outside/],
    ['unet', 'blockOutChannels', [], /block_out_channels .*1\.\.8 values/],
    ['unet', 'transformerLayersPerBlock', 1000, /transformer_layers_per_block 1000/],
    ['unet', 'crossAttentionDim', 1e7, /cross_attention_dim/],
    ['unet', 'attentionHeads', [8, 8, 8, 7], /attention_heads .*do not divide/],
    ['unet', 'attentionHeads', [8, 8, 8, 1000], /attention_heads .*outside 1\.\.256/],
    ['unet', 'normEps', -1e-5, /norm_eps -0\.00001 must be a number > 0/],
    ['unet', 'normEps', 0, /norm_eps 0 must be a number > 0/],
    ['unet', 'normNumGroups', 7, /norm_num_groups 7 does not divide/],
    ['unet', 'inChannels', 100, /in_channels 100 is outside/],
    ['unet', 'sampleSize', 1e6, /sample_size/],
    ['unet', 'actFn', 'relu', /act_fn "relu" is not supported/],
    ['unet', 'downBlockTypes', ['CrossAttnDownBlock2D', 'SimpleCrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'], /down_block_types .* holds "SimpleCrossAttnDownBlock2D"/],
    ['vae', 'scalingFactor', 0, /scaling_factor 0 must be a number > 0/],
    ['vae', 'scalingFactor', 1e-30, /scaling_factor .* too small/],
    ['vae', 'layersPerBlock', 1e5, /layers_per_block 100000/],
    ['vae', 'latentChannels', 1000, /latent_channels/],
    ['vae', 'normEps', -1, /norm_eps/],
    ['vae', 'actFn', 'tanh', /act_fn "tanh"/],
    ['text', 'numHiddenLayers', 1e5, /num_hidden_layers 100000/],
    ['text', 'hiddenSize', 1e6, /hidden_size/],
    ['text', 'numAttentionHeads', 3, /num_attention_heads 3 does not divide/],
    ['text', 'maxPositionEmbeddings', 10, /max_position_embeddings 10 is outside 77/],
    ['text', 'layerNormEps', -1, /layer_norm_eps/],
    ['text', 'hiddenAct', 'mish', /hidden_act "mish" is not supported/],
    ['text', 'vocabSize', 1e9, /vocab_size/],
    ['scheduler', 'numTrainTimesteps', 1e7, /num_train_timesteps 10000000/],
    ['scheduler', 'betaEnd', 1.5, /beta_end/],
    ['scheduler', 'trainedBetas', [0.1, 0.2], /trained_betas/],
  ];
  for (const [comp, key, value, msg] of cases) {
    const c = tinyConfigs();
    (c[comp] as unknown as Record<string, unknown>)[key] = value;
    t.throws(() => checkConfigs(c), { code: 'E_MODEL_FORMAT', message: msg }, `${comp}.${key} = ${JSON.stringify(value)}`);
  }
});

t.test('a config with a huge layer count fails fast at load, not by exhausting the heap', async (t) => {
  const dir = variant('huge-layers', (d) => setJson(path.join(d, 'unet/config.json'), { layers_per_block: 1e5 }));
  const t0 = Date.now();
  await t.rejects(Engine.load(dir, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /unet\/config\.json \(unet\): layers_per_block 100000 is outside/ });
  t.ok(Date.now() - t0 < 5000, 'within seconds');
  const eps = variant('neg-eps', (d) => setJson(path.join(d, 'unet/config.json'), { norm_eps: -1e-5 }));
  await t.rejects(Engine.load(eps, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /norm_eps/ });
  const sf = variant('zero-scaling', (d) => setJson(path.join(d, 'vae/config.json'), { scaling_factor: 0 }));
  await t.rejects(Engine.load(sf, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /scaling_factor 0/ });
  const act = variant('bad-act', (d) => setJson(path.join(d, 'text_encoder/config.json'), { hidden_act: 'relu' }));
  await t.rejects(Engine.load(act, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /hidden_act "relu" is not supported/ });
});

t.test('the weight-memory estimate refuses what cannot fit', async (t) => {
  const c = tinyConfigs();
  t.doesNotThrow(() => checkWeightMemory(c, modelLayout(c), os.totalmem()));
  t.throws(() => checkWeightMemory(c, modelLayout(c), 1000), { code: 'E_OOM', message: /unet: .*block_out_channels.*more than this machine's/ });
  // Within every bound but far past any machine: 8 levels of 8192 channels.
  c.unet.blockOutChannels = new Array(8).fill(8192);
  c.unet.attentionHeads = new Array(8).fill(8);
  c.unet.downBlockTypes = new Array(8).fill('CrossAttnDownBlock2D');
  c.unet.upBlockTypes = new Array(8).fill('CrossAttnUpBlock2D');
  checkConfigs(c);
  t.throws(() => checkWeightMemory(c, modelLayout(c), os.totalmem()), { code: 'E_OOM' });
});

t.test('non-regular files, symlink loops and unreadable files are refused up front', async (t) => {
  const weights = (d: string) => path.join(d, 'unet/diffusion_pytorch_model.safetensors');
  // A FIFO where the weights should be: refused at once (a blocking open would hang forever).
  const fifo = variant('fifo', (d) => {
    fs.rmSync(weights(d));
    execFileSync('mkfifo', [weights(d)]);
  });
  const t0 = Date.now();
  await t.rejects(Engine.load(fifo, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /FIFO \(named pipe\), not a regular \.safetensors file/ });
  t.ok(Date.now() - t0 < 5000, 'no hang');
  const cfgFifo = variant('fifo-config', (d) => {
    fs.rmSync(path.join(d, 'vae/config.json'));
    execFileSync('mkfifo', [path.join(d, 'vae/config.json')]);
  });
  await t.rejects(Engine.load(cfgFifo, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /vae\/config\.json: is a FIFO/ });
  const vocabFifo = variant('fifo-vocab', (d) => {
    fs.rmSync(path.join(d, 'tokenizer/vocab.json'));
    execFileSync('mkfifo', [path.join(d, 'tokenizer/vocab.json')]);
  });
  await t.rejects(Engine.load(vocabFifo, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /vocab\.json: is a FIFO/ });
  const loop = variant('loop', (d) => {
    fs.rmSync(weights(d));
    fs.symlinkSync(weights(d), weights(d));
  });
  await t.rejects(Engine.load(loop, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /symbolic link loop/ });
  const dangling = variant('dangling', (d) => {
    fs.rmSync(weights(d));
    fs.symlinkSync(path.join(d, 'nowhere'), weights(d));
  });
  await t.rejects(Engine.load(dangling, { device: 'cpu' }), { code: 'E_NOT_FOUND', message: /symbolic link to a missing target/ });
  const folder = variant('folder', (d) => {
    fs.rmSync(weights(d));
    fs.mkdirSync(weights(d));
  });
  await t.rejects(Engine.load(folder, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /is a folder, not a regular/ });
  await t.rejects(Engine.load('/dev/zero', { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /character device/ });
  // Permissions cannot be denied to root (CI runs as root): the errno mapping is checked directly,
  // and the real case where the process is not root.
  t.match(fileError('/x/model.safetensors', Object.assign(new Error('denied'), { code: 'EACCES' }), 'file'), { code: 'E_MODEL_FORMAT', message: /permission denied/ });
  if (process.getuid?.() !== 0) {
    const locked = variant('locked', (d) => {
      fs.rmSync(weights(d));
      fs.copyFileSync(path.join(TINY_SD, 'unet/diffusion_pytorch_model.safetensors'), weights(d));
      fs.chmodSync(weights(d), 0);
    });
    await t.rejects(Engine.load(locked, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /permission denied/ });
  }
});

t.test('strict formats: duplicate JSON keys, integer weights, a size that disagrees with the dtype', async (t) => {
  t.equal(duplicateJsonKey('{"a": 1, "b": {"a": 2}, "c": ["a", "a"]}'), undefined);
  t.equal(duplicateJsonKey('{"a": 1, "b": {"x": 2, "x": 3}}'), 'x');
  t.equal(duplicateJsonKey('{"\\u0061": 1, "a": 2}'), 'a', 'keys compared after unescaping');
  const dup = variant('dup-key', (d) => fs.writeFileSync(path.join(d, 'unet/config.json'), fs.readFileSync(path.join(TINY_SD, 'unet/config.json'), 'utf8').replace('"layers_per_block": 2,', '"layers_per_block": 2, "layers_per_block": 3,')));
  await t.rejects(Engine.load(dup, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /"layers_per_block" appears twice/ });
  // A float weight stored under an integer dtype label (same byte size): refused, not converted.
  const ints = variant('int-weight', (d) => rewriteUnet(d, (k, dtype, data) => ({ dtype: k === 'conv_in.bias' ? 'I16' : dtype, data })));
  await t.rejects(Engine.load(ints, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /conv_in\.bias.*stored as I16; model weights are floating point/ });
});

t.test('NaN / Inf: weights on upload, latents during generation, arguments', async (t) => {
  // A NaN weight: E_NUMERIC naming the weight when it is uploaded, not a black image.
  const nan = variant('nan-weight', (d) => rewriteUnet(d, (k, dtype, data) => {
    if (k === 'conv_out.bias') data.writeUInt16LE(0x7e00, 2); // float16 NaN
    return { dtype, data };
  }));
  const e1 = await Engine.load(nan, { device: 'cpu' });
  await t.rejects(e1.generate({ prompt: 'x', steps: 1, width: 64, height: 64, seed: 1 }), { code: 'E_NUMERIC', message: /unet weight 'conv_out\.bias'.*1 NaN\/Inf/ });
  e1.dispose();

  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  // Finite but absurd input latents overflow inside the UNet: E_NUMERIC naming the step.
  const huge = Tensor.from(new Float32Array(4 * 8 * 8).fill(3e38), [1, 4, 8, 8]);
  await t.rejects(engine.generate({ prompt: 'x', steps: 2, width: 64, height: 64, latents: huge }), { code: 'E_NUMERIC', message: /after step 1\/2 .*likely cause/ });
  // ... or one warning when the caller opts in.
  const r = await engine.generate({ prompt: 'x', steps: 2, width: 64, height: 64, latents: huge, nonFinite: 'warn' });
  t.equal(r.warnings.filter((w) => /NaN\/Inf/.test(w)).length, 1, 'one warning');
  // Non-finite input latents and absurd arguments are refused before running: test/generate-args.test.ts.
  // null means "absent" for every option, as the run itself treats it.
  const nulls = await engine.generate({ prompt: 'x', steps: 1, width: 64, height: 64, seed: 1, latents: null, nonFinite: null, negativePrompt: null, guidanceScale: null } as never);
  t.equal(nulls.images[0]!.width, 64);
  // The check itself, on host arrays and on device tensors.
  const ctx = { step: 3, steps: 10, timestep: 500, guidanceScale: 50, dtype: 'float16' };
  t.throws(() => checkLatentsFinite(new Float32Array([1, NaN]), ctx), { code: 'E_NUMERIC', message: /guidance scale 50 .*float16/ });
  using nanT = Tensor.from(new Float32Array([0, -Infinity, NaN, 1]), [4], { dtype: 'float16' });
  t.equal(nanT.countNonFinite(), 2);
  t.match(checkLatentsFinite(nanT, ctx, 'warn'), /2 NaN\/Inf value\(s\) after step 3\/10/);
});

t.test('fileError maps each errno to a typed error that names the path and keeps the cause', async (t: Test) => {
  const cases: [string, string, RegExp][] = [
    ['ENOENT', 'E_NOT_FOUND', /: no such file$/],
    ['ENOTDIR', 'E_NOT_FOUND', /a parent in the path is not a folder/],
    ['ELOOP', 'E_MODEL_FORMAT', /symbolic link loop/],
    ['EACCES', 'E_MODEL_FORMAT', /permission denied/],
    ['EPERM', 'E_MODEL_FORMAT', /permission denied/],
    ['EISDIR', 'E_MODEL_FORMAT', /is a folder, not a file/],
    ['ENXIO', 'E_MODEL_FORMAT', /a device or socket/],
    ['EIO', 'E_MODEL_FORMAT', /cannot open the file \(EIO\)/],
  ];
  for (const [errno, code, message] of cases) {
    const cause = Object.assign(new Error(errno), { code: errno });
    const e = fileError('/nowhere/model.safetensors', cause);
    t.ok(e instanceof IdforgeError, errno);
    t.match(e, { code, message }, errno);
    t.match(e.message, /^\/nowhere\/model\.safetensors: /, `${errno}: names the path`);
    t.equal(e.cause, cause, `${errno}: keeps the cause`);
  }
});
