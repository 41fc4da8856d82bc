import t, { type Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BUNDLED_TOKENIZER_DIR, openModel, requireWeight, type TensorRef } from '../lib/io/checkpoint.js';
import { applyOverrides, guessNormGroups, guessTextHeads, parseUNetConfig, SD15_SCHEDULER_JSON } from '../lib/io/configs.js';
import { convertLdmUnet, convertLdmVae, modernVaeName } from '../lib/io/ldm.js';
import { SafetensorsFile, writeSafetensors, type StDType } from '../lib/io/safetensors.js';

import { TINY_LDM } from './helpers/fixtures.js';
const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
const FOLDER = path.join(FIXTURES, 'tiny-sd');
const LDM = TINY_LDM;

const COMPONENTS = ['unet', 'vae', 'text'] as const;

t.test('diffusers folder and LDM single file give the same tensors and configs', async (t) => {
  using a = openModel(FOLDER);
  using b = openModel(LDM);
  t.equal(a.kind, 'diffusers');
  t.equal(b.kind, 'ldm');
  let maxAbs = 0;
  for (const comp of COMPONENTS) {
    const wa = a.weights[comp];
    const wb = b.weights[comp];
    t.same([...wb.keys()].sort(), [...wa.keys()].sort(), `${comp}: same internal names`);
    let mismatched = 0;
    for (const [name, ra] of wa) {
      const rb = wb.get(name);
      if (!rb) continue;
      if (JSON.stringify(ra.shape) !== JSON.stringify(rb.shape)) {
        t.fail(`${comp} ${name}: shape ${JSON.stringify(ra.shape)} vs ${JSON.stringify(rb.shape)}`);
        continue;
      }
      const xa = ra.readFloat32();
      const xb = rb.readFloat32();
      if (xa.length !== ra.shape.reduce((p, d) => p * d, 1)) t.fail(`${comp} ${name}: element count`);
      for (let i = 0; i < xa.length; i++) {
        const d = Math.abs(xa[i]! - xb[i]!);
        if (d > maxAbs) maxAbs = d;
        if (xa[i] !== xb[i]) {
          mismatched++;
          break;
        }
      }
    }
    t.equal(mismatched, 0, `${comp}: every tensor exactly equal (${wa.size} tensors)`);
  }
  t.equal(maxAbs, 0, 'max abs difference');

  // Every field the graph uses; sampleSize is only a default resolution and is not derivable.
  const { sampleSize: _s1, ...ua } = a.configs.unet;
  const { sampleSize: _s2, ...ub } = b.configs.unet;
  t.same(ub, ua, 'unet config');
  const { sampleSize: _s3, ...va } = a.configs.vae;
  const { sampleSize: _s4, ...vb } = b.configs.vae;
  t.same(vb, va, 'vae config');
  t.same(b.configs.text, a.configs.text, 'text config');
  t.same(b.configs.scheduler, a.configs.scheduler, 'scheduler config');
  t.equal(a.configs.unet.normNumGroups, 8);
  t.same(a.configs.unet.blockOutChannels, [32, 64, 64, 64]);
  t.same(a.configs.unet.attentionHeads, [8, 8, 8, 8]);
  t.equal(a.configs.text.numAttentionHeads, 4);

  t.equal(a.tokenizerDir, path.join(FOLDER, 'tokenizer'));
  t.equal(b.tokenizerDir, BUNDLED_TOKENIZER_DIR, 'single file uses the bundled tokenizer');
  for (const f of ['vocab.json', 'merges.txt']) {
    t.equal(
      fs.readFileSync(path.join(BUNDLED_TOKENIZER_DIR, f), 'utf8'),
      fs.readFileSync(path.join(FOLDER, 'tokenizer', f), 'utf8'),
      `bundled ${f} is SD 1.x's`,
    );
  }
  t.same(a.warnings, [], 'folder: no warnings');
  t.match(b.warnings.join('\n'), /norm_num_groups/, 'single file: says groups were guessed');
  t.notMatch(b.warnings.join('\n'), /alphas_cumprod|model_ema/, 'schedule buffers and EMA ignored silently');
});

t.test('internal names and shapes', async (t) => {
  using m = openModel(LDM);
  const has = (comp: 'unet' | 'vae' | 'text', name: string, shape: number[]) => {
    const r = m.weights[comp].get(name);
    t.ok(r, `${comp} ${name}`);
    if (r) t.same(r.shape, shape, `${comp} ${name} shape`);
  };
  has('unet', 'conv_in.weight', [32, 4, 3, 3]);
  has('unet', 'time_embedding.linear_1.weight', [128, 32]);
  has('unet', 'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight', [32, 32]);
  has('unet', 'down_blocks.0.downsamplers.0.conv.weight', [32, 32, 3, 3]);
  has('unet', 'up_blocks.0.resnets.0.conv_shortcut.weight', [64, 128, 1, 1]);
  has('unet', 'up_blocks.0.upsamplers.0.conv.weight', [64, 64, 3, 3]);
  has('unet', 'up_blocks.2.upsamplers.0.conv.weight', [64, 64, 3, 3]);
  has('unet', 'mid_block.resnets.1.time_emb_proj.weight', [64, 128]);
  has('unet', 'conv_norm_out.weight', [32]);
  has('vae', 'decoder.mid_block.attentions.0.to_q.weight', [64, 64]);
  has('vae', 'encoder.mid_block.attentions.0.to_out.0.weight', [64, 64]);
  has('vae', 'decoder.up_blocks.0.resnets.0.conv1.weight', [64, 64, 3, 3]);
  has('vae', 'decoder.up_blocks.2.resnets.0.conv_shortcut.weight', [32, 64, 1, 1]);
  has('vae', 'post_quant_conv.weight', [4, 4, 1, 1]);
  has('text', 'text_model.encoder.layers.0.self_attn.q_proj.weight', [32, 32]);
  t.notOk(m.weights.text.has('text_model.embeddings.position_ids'));
  const r = m.weights.vae.get('decoder.mid_block.attentions.0.to_q.weight')!;
  t.equal(r.key, 'first_stage_model.decoder.mid.attn_1.q.weight');
  t.equal(r.readFloat32().length, 64 * 64);
  t.equal(r.readBytes().length, 64 * 64 * 4);
});

t.test('requireWeight names the component, key and source', async (t) => {
  using m = openModel(FOLDER);
  t.equal(requireWeight(m.weights.unet, 'conv_in.weight', 'unet').name, 'conv_in.weight');
  t.throws(() => requireWeight(m.weights.unet, 'conv_in.nope', 'unet'), {
    code: 'E_MODEL_FORMAT',
    message: /unet weight "conv_in\.nope" is missing.*tiny-sd\/unet\/diffusion_pytorch_model\.safetensors/,
  });
  t.throws(() => requireWeight(new Map<string, TensorRef>(), 'x', 'vae'), { code: 'E_MODEL_FORMAT', message: /vae weight "x"/ });
});

t.test('position_ids are dropped from diffusers folders', async (t) => {
  using m = openModel(FOLDER);
  using raw = SafetensorsFile.open(path.join(FOLDER, 'text_encoder/model.safetensors'));
  t.ok(raw.has('text_model.embeddings.position_ids'), 'the fixture has them');
  t.notOk(m.weights.text.has('text_model.embeddings.position_ids'), 'the model does not');
  t.equal(m.weights.text.size, raw.names().length - 1);
});

t.test('closing makes tensors unreadable', async (t) => {
  const m = openModel(FOLDER);
  const r = m.weights.unet.get('conv_in.weight')!;
  t.equal(r.readFloat32().length, 32 * 4 * 9);
  m.close();
  m.close();
  t.throws(() => r.readFloat32(), { code: 'E_DISPOSED' });
});

// ---------------------------------------------------------------------------------------------
// Temporary diffusers folders

function copyFolder(t: Test, opts: { skip?: string[] } = {}): string {
  const dir = t.testdir({});
  for (const sub of ['unet', 'vae', 'text_encoder', 'scheduler', 'tokenizer']) {
    fs.mkdirSync(path.join(dir, sub));
    for (const f of fs.readdirSync(path.join(FOLDER, sub))) {
      const rel = `${sub}/${f}`;
      if (opts.skip?.includes(rel)) continue;
      fs.copyFileSync(path.join(FOLDER, rel), path.join(dir, rel));
    }
  }
  fs.copyFileSync(path.join(FOLDER, 'model_index.json'), path.join(dir, 'model_index.json'));
  return dir;
}

/** Rewrites a safetensors file through a key/shape transform. */
function rewrite(src: string, dst: string, fn: (key: string, shape: number[]) => [string, number[]] | null): void {
  using f = SafetensorsFile.open(src);
  const out: Record<string, { dtype: StDType; shape: number[]; data: ArrayBufferView }> = {};
  for (const k of f.names()) {
    const info = f.info(k);
    const r = fn(k, info.shape);
    if (r) out[r[0]] = { dtype: info.dtype, shape: r[1], data: f.readBytes(k) };
  }
  writeSafetensors(dst, out, f.metadata);
}

t.test('old VAE attention names (query/key/value/proj_attn, 1x1-conv shapes) map to current ones', async (t) => {
  const dir = copyFolder(t, { skip: ['vae/diffusion_pytorch_model.safetensors'] });
  const OLD: Record<string, string> = { to_q: 'query', to_k: 'key', to_v: 'value', 'to_out.0': 'proj_attn' };
  rewrite(path.join(FOLDER, 'vae/diffusion_pytorch_model.safetensors'), path.join(dir, 'vae/diffusion_pytorch_model.safetensors'), (k, s) => {
    const m = /^(.*\.attentions\.0\.)(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/.exec(k);
    if (!m) return [k, s];
    // Encoder: plain old names; decoder: old names with [C, C, 1, 1] weights.
    const shape = k.startsWith('decoder') && m[3] === 'weight' ? [...s, 1, 1] : s;
    return [`${m[1]}${OLD[m[2]!]}.${m[3]}`, shape];
  });
  using a = openModel(FOLDER);
  using b = openModel(dir);
  t.same([...b.weights.vae.keys()].sort(), [...a.weights.vae.keys()].sort());
  for (const [name, ra] of a.weights.vae) {
    const rb = b.weights.vae.get(name)!;
    t.same(rb.shape, ra.shape, `${name} shape`);
    if (/attentions/.test(name)) t.same(rb.readFloat32(), ra.readFloat32(), `${name} values`);
  }
  t.equal(b.weights.vae.get('decoder.mid_block.attentions.0.to_out.0.weight')!.key, 'decoder.mid_block.attentions.0.proj_attn.weight');
  t.equal(modernVaeName('encoder.mid_block.attentions.0.query.bias'), 'encoder.mid_block.attentions.0.to_q.bias');
  t.equal(modernVaeName('encoder.conv_in.weight'), 'encoder.conv_in.weight');
});

t.test('fp16 variant selection', async (t) => {
  const dir = copyFolder(t);
  const unet = path.join(dir, 'unet');
  fs.copyFileSync(path.join(unet, 'diffusion_pytorch_model.safetensors'), path.join(unet, 'diffusion_pytorch_model.fp16.safetensors'));
  {
    using m = openModel(dir);
    t.equal(path.basename(m.weights.unet.get('conv_in.weight')!.file), 'diffusion_pytorch_model.safetensors', 'plain by default');
  }
  {
    using m = openModel(dir, { variant: 'fp16' });
    t.equal(path.basename(m.weights.unet.get('conv_in.weight')!.file), 'diffusion_pytorch_model.fp16.safetensors', 'fp16 when asked');
    t.equal(path.basename(m.weights.vae.get('encoder.conv_in.weight')!.file), 'diffusion_pytorch_model.safetensors', 'falls back when a component has no fp16');
    t.match(m.warnings.join('\n'), /vae: no fp16 variant/);
  }
  fs.unlinkSync(path.join(unet, 'diffusion_pytorch_model.safetensors'));
  {
    using m = openModel(dir);
    t.equal(path.basename(m.weights.unet.get('conv_in.weight')!.file), 'diffusion_pytorch_model.fp16.safetensors', 'fp16 when it is all there is');
  }
  t.throws(() => openModel(dir, { variant: 'bf16' as 'fp16' }), { code: 'E_ARGUMENT' });
});

t.test('sharded weights (index.json)', async (t) => {
  const dir = copyFolder(t, { skip: ['unet/diffusion_pytorch_model.safetensors'] });
  const unet = path.join(dir, 'unet');
  using src = SafetensorsFile.open(path.join(FOLDER, 'unet/diffusion_pytorch_model.safetensors'));
  const names = src.names();
  const shards = [names.filter((_, i) => i % 2 === 0), names.filter((_, i) => i % 2 === 1)];
  const weightMap: Record<string, string> = {};
  shards.forEach((keys, i) => {
    const file = `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`;
    const out: Record<string, { dtype: StDType; shape: number[]; data: ArrayBufferView }> = {};
    for (const k of keys) {
      const info = src.info(k);
      out[k] = { dtype: info.dtype, shape: info.shape, data: src.readBytes(k) };
      weightMap[k] = file;
    }
    writeSafetensors(path.join(unet, file), out);
  });
  fs.writeFileSync(path.join(unet, 'diffusion_pytorch_model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  using a = openModel(FOLDER);
  using b = openModel(dir);
  t.same([...b.weights.unet.keys()].sort(), [...a.weights.unet.keys()].sort());
  t.same(b.weights.unet.get('conv_out.weight')!.readFloat32(), a.weights.unet.get('conv_out.weight')!.readFloat32());

  fs.writeFileSync(path.join(unet, 'diffusion_pytorch_model.safetensors.index.json'), JSON.stringify({ weight_map: { a: '../../etc/passwd' } }));
  t.throws(() => openModel(dir), { code: 'E_MODEL_FORMAT', message: /index\.json.*weight_map\["a"\]/ });
});

t.test('pickles are refused, never opened', async (t) => {
  const dir = t.testdir({ 'model.ckpt': 'not really a pickle', 'model.pt': 'x', 'model.bin': 'x', 'model.pth': 'x' });
  for (const f of ['model.ckpt', 'model.pt', 'model.bin', 'model.pth']) {
    t.throws(() => openModel(path.join(dir, f)), {
      code: 'E_MODEL_FORMAT',
      message: /pickle checkpoint; idforge never unpickles files: convert it to \.safetensors/,
    }, f);
  }
  // A diffusers component that only has .bin weights.
  const folder = copyFolder(t, { skip: ['text_encoder/model.safetensors'] });
  fs.writeFileSync(path.join(folder, 'text_encoder/pytorch_model.bin'), 'x');
  t.throws(() => openModel(folder), { code: 'E_MODEL_FORMAT', message: /text_encoder\/pytorch_model\.bin.*convert it to \.safetensors/ });
});

t.test('missing and unrecognised inputs', async (t) => {
  const dir = t.testdir({ empty: {}, 'notes.txt': 'hello' });
  t.throws(() => openModel(path.join(dir, 'nope')), { code: 'E_NOT_FOUND', message: /nope/ });
  t.throws(() => openModel(path.join(dir, 'empty')), { code: 'E_MODEL_FORMAT', message: /empty: not a model folder.*model_index\.json/ });
  t.throws(() => openModel(path.join(dir, 'notes.txt')), { code: 'E_MODEL_FORMAT', message: /notes\.txt/ });
  t.throws(() => openModel(''), { code: 'E_ARGUMENT' });

  // A safetensors file that is not an LDM checkpoint (a diffusers component file).
  t.throws(() => openModel(path.join(FOLDER, 'unet/diffusion_pytorch_model.safetensors')), {
    code: 'E_MODEL_FORMAT',
    message: /diffusion_pytorch_model\.safetensors: no model\.diffusion_model\.\* tensors/,
  });

  // Folder missing a component, and missing weights.
  const noVae = copyFolder(t);
  fs.rmSync(path.join(noVae, 'vae'), { recursive: true });
  t.throws(() => openModel(noVae), { code: 'E_NOT_FOUND', message: /no vae\/ folder/ });
  const noWeights = copyFolder(t, { skip: ['unet/diffusion_pytorch_model.safetensors'] });
  t.throws(() => openModel(noWeights), { code: 'E_NOT_FOUND', message: /unet: no weights/ });
  const badCfg = copyFolder(t);
  fs.writeFileSync(path.join(badCfg, 'unet/config.json'), '{"block_out_channels": "wide"}');
  t.throws(() => openModel(badCfg), { code: 'E_MODEL_FORMAT', message: /unet\/config\.json: "block_out_channels"/ });
  const noCfg = copyFolder(t, { skip: ['text_encoder/config.json'] });
  t.throws(() => openModel(noCfg), { code: 'E_NOT_FOUND', message: /text_encoder\/config\.json/ });

  // SDXL pipelines are refused up front.
  const xl = copyFolder(t);
  fs.writeFileSync(path.join(xl, 'model_index.json'), JSON.stringify({ _class_name: 'StableDiffusionXLPipeline', text_encoder_2: ['transformers', 'CLIPTextModelWithProjection'] }));
  t.throws(() => openModel(xl), { code: 'E_MODEL_FORMAT', message: /SDXL/ });
});

t.test('single file: SD 2.x and partial checkpoints are refused', async (t) => {
  const dir = t.testdir({});
  const onlyUnet = path.join(dir, 'only-unet.safetensors');
  rewrite(LDM, onlyUnet, (k, s) => (k.startsWith('model.diffusion_model.') ? [k, s] : null));
  t.throws(() => openModel(onlyUnet), { code: 'E_MODEL_FORMAT', message: /only-unet\.safetensors: no first_stage_model\.\*/ });
  const sd2 = path.join(dir, 'sd2.safetensors');
  writeSafetensors(sd2, { 'cond_stage_model.model.positional_embedding': { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
  t.throws(() => openModel(sd2), { code: 'E_MODEL_FORMAT', message: /sd2\.safetensors.*OpenCLIP.*2\.x/ });
});

t.test('single file: stray keys warn, a tokenizer folder next to the file wins', async (t) => {
  const dir = t.testdir({});
  const file = path.join(dir, 'model.safetensors');
  rewrite(LDM, file, (k, s) => [k, s]);
  // Add extra keys real files carry plus one stray.
  using src = SafetensorsFile.open(file);
  const out: Record<string, { dtype: StDType; shape: number[]; data: ArrayBufferView }> = {};
  for (const k of src.names()) out[k] = { dtype: src.info(k).dtype, shape: src.info(k).shape, data: src.readBytes(k) };
  src.close();
  out['betas'] = { dtype: 'F32', shape: [2], data: new Float32Array(2) };
  out['model_ema.num_updates'] = { dtype: 'I32', shape: [], data: new Int32Array(1) };
  out['cond_stage_model.transformer.text_model.embeddings.position_ids'] = { dtype: 'I64', shape: [1, 77], data: new BigInt64Array(77) };
  out['lora_unet_x.alpha'] = { dtype: 'F32', shape: [], data: new Float32Array(1) };
  writeSafetensors(file, out);
  const odd = path.join(dir, 'odd-schedule.safetensors');
  out['alphas_cumprod'] = { dtype: 'F32', shape: [1000], data: new Float32Array(1000).fill(0.5) };
  writeSafetensors(odd, out);
  {
    using m = openModel(odd);
    t.match(m.warnings.join('\n'), /odd-schedule\.safetensors: its alphas_cumprod differs/, 'a different noise schedule is reported');
  }
  fs.mkdirSync(path.join(dir, 'tokenizer'));
  for (const f of ['vocab.json', 'merges.txt']) fs.copyFileSync(path.join(FOLDER, 'tokenizer', f), path.join(dir, 'tokenizer', f));
  using m = openModel(file);
  t.equal(m.tokenizerDir, path.join(dir, 'tokenizer'));
  const w = m.warnings.join('\n');
  t.match(w, /ignored 1 tensor\(s\).*"lora_unet_x\.alpha"/);
  t.notMatch(w, /betas|model_ema|position_ids/);
  t.notOk(m.weights.text.has('text_model.embeddings.position_ids'));
});

t.test('config overrides', async (t) => {
  using m = openModel(LDM, { configOverrides: { unet: { normNumGroups: 16, attentionHeadDim: 4 }, text: { numAttentionHeads: 2 } } });
  t.equal(m.configs.unet.normNumGroups, 16);
  t.same(m.configs.unet.attentionHeads, [4, 4, 4, 4], 'head list follows attentionHeadDim');
  t.equal(m.configs.text.numAttentionHeads, 2);
  t.throws(() => openModel(FOLDER, { configOverrides: { unet: { nope: 1 } as never } }), { code: 'E_ARGUMENT', message: /unet\.nope/ });
  t.throws(() => openModel(FOLDER, { configOverrides: { unet: { normNumGroups: 'x' } as never } }), { code: 'E_ARGUMENT' });
  t.throws(() => openModel(FOLDER, { configOverrides: { foo: {} } as never }), { code: 'E_ARGUMENT' });
  const base = openModel(FOLDER);
  t.same(applyOverrides(base.configs, undefined), base.configs);
  base.close();
});

t.test('config rules', async (t) => {
  t.equal(guessNormGroups([320, 640, 1280, 1280]), 32, 'SD 1.5 UNet');
  t.equal(guessNormGroups([128, 256, 512, 512]), 32, 'SD 1.5 VAE');
  t.equal(guessNormGroups([32, 64, 64, 64]), 8, 'tiny UNet');
  t.equal(guessNormGroups([32, 32, 64, 64]), 8, 'tiny VAE');
  t.equal(guessNormGroups([12, 18]), 3, 'lowered until it divides every width');
  t.equal(guessTextHeads(768), 12);
  t.equal(guessTextHeads(1024), 16);
  t.equal(guessTextHeads(32), 4);
  t.same(parseUNetConfig({ attention_head_dim: [5, 10, 20, 20] }, 'x').attentionHeads, [5, 10, 20, 20]);
  t.same(parseUNetConfig({ num_attention_heads: 4 }, 'x').attentionHeads, [4, 4, 4, 4]);
  t.throws(() => parseUNetConfig({ attention_head_dim: [1, 2] }, 'cfg.json'), { code: 'E_MODEL_FORMAT', message: /cfg\.json/ });
  t.same(JSON.parse(fs.readFileSync(path.join(FOLDER, 'scheduler/scheduler_config.json'), 'utf8')), SD15_SCHEDULER_JSON, 'default scheduler = the fixture');
});

t.test('LDM key mapping on SD 1.5-sized key lists', async (t) => {
  // Layout only: SD 1.5 has the same block structure as the tiny model; mapping must not depend on widths.
  using f = SafetensorsFile.open(LDM);
  const keys = f.names().filter((k) => k.startsWith('model.diffusion_model.')).map((k) => k.slice(22));
  const u = convertLdmUnet(keys, 'x');
  t.same(u.layout, { levels: 4, layersPerBlock: 2 });
  t.same(u.unknown, []);
  t.equal(u.mapping.get('up_blocks.1.attentions.2.proj_out.weight')?.key, 'output_blocks.5.1.proj_out.weight');
  t.equal(u.mapping.get('up_blocks.1.upsamplers.0.conv.weight')?.key, 'output_blocks.5.2.conv.weight');
  t.equal(u.mapping.get('down_blocks.2.downsamplers.0.conv.bias')?.key, 'input_blocks.9.0.op.bias');
  t.equal(u.mapping.get('down_blocks.3.resnets.1.conv2.weight')?.key, 'input_blocks.11.0.out_layers.3.weight');
  t.equal(u.mapping.get('mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight')?.key, 'middle_block.1.transformer_blocks.0.attn1.to_q.weight');
  const vkeys = f.names().filter((k) => k.startsWith('first_stage_model.')).map((k) => k.slice(18));
  const v = convertLdmVae(vkeys, 'x');
  t.equal(v.levels, 4);
  t.same(v.unknown, []);
  t.equal(v.mapping.get('decoder.up_blocks.0.resnets.2.conv1.weight')?.key, 'decoder.up.3.block.2.conv1.weight');
  t.equal(v.mapping.get('decoder.up_blocks.2.upsamplers.0.conv.weight')?.key, 'decoder.up.1.upsample.conv.weight');
  t.equal(v.mapping.get('encoder.mid_block.attentions.0.group_norm.weight')?.key, 'encoder.mid.attn_1.norm.weight');
  t.equal(v.mapping.get('decoder.mid_block.attentions.0.to_out.0.weight')?.squeeze1x1, true);
  t.throws(() => convertLdmUnet(['input_blocks.0.0.weight', 'input_blocks.2.0.op.weight', 'input_blocks.4.0.in_layers.0.weight'], 'bad.safetensors'), {
    code: 'E_MODEL_FORMAT',
    message: /bad\.safetensors: unrecognised UNet layout/,
  });
});

t.test('a missing model is E_NOT_FOUND naming the path', async (t) => {
  t.throws(() => openModel('/definitely/not/here'), { name: 'IdforgeError', code: 'E_NOT_FOUND', message: /\/definitely\/not\/here/ });
});
