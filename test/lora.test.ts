// LoRA files through Engine.setLoras against diffusers (golden/fewstep.safetensors `lora:*`): the
// UNet's noise prediction and the text encoder's output with kohya, PEFT and both files merged; the
// base restored exactly; the other namings and dtypes; bad files; calls in flight during a merge.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { f32ToBf16, bf16ToF32 } from '../lib/io/half.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../lib/io/safetensors.js';
import { FORWARD_DEFAULT, testBackends } from './helpers/backends.js';
import { GoldenFile, TINY_SD, fixture } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';

const cases = (JSON.parse(readFileSync(fixture('golden/cases.json'), 'utf8')) as {
  fewstep: { lora: { files: Record<string, string>; cases: Record<string, { file: string; scale: number }[]>; timestep: number } };
}).fewstep.lora;
const KOHYA = fixture('tiny-lora/kohya.safetensors');
const PEFT = fixture('tiny-lora/peft.safetensors');
const g = new GoldenFile('fewstep');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'idforge-lora-'));
t.teardown(() => {
  g.close();
  rmSync(tmp, { recursive: true, force: true });
});

const ids = g.i32('lora:ids');
const rows = [0, 1, 2].map((i) => ids.slice(i * 77, (i + 1) * 77));

/** The UNet's eps on the golden inputs and the text encoder's output on the golden ids. */
async function outputs(engine: Engine): Promise<{ eps: Float32Array; te: Float32Array }> {
  using x = g.tensor('lora:x');
  using ctx = g.tensor('lora:context');
  using eps = await engine.predictNoise(x, cases.timestep, ctx);
  using te = await engine.encodeText(rows);
  return { eps: eps.toFloat32(), te: te.toFloat32() };
}

/** A copy of `src` with each tensor renamed (undefined drops it) and/or converted. */
function rewrite(src: string, name: string, map: (key: string) => string | undefined, dtype?: 'F32' | 'BF16'): string {
  const st = SafetensorsFile.open(src);
  const out: Record<string, TensorToWrite> = {};
  for (const k of st.names()) {
    const n = map(k);
    if (n === undefined) continue;
    const v = st.readFloat32(k);
    const shape = st.info(k).shape;
    out[n] = dtype === 'BF16' ? { dtype: 'BF16', shape, data: f32ToBf16(v) } : { dtype: 'F32', shape, data: v };
  }
  st.close();
  const p = path.join(tmp, name);
  writeSafetensors(p, out);
  return p;
}

// The CPU with float16 weights too: its merges run in float32 and convert into the half weights.
for (const b of testBackends(process.env.IDFORGE_TEST_BACKENDS || FORWARD_DEFAULT)) {
  t.test(`goldens through setLoras on ${b.name}`, { skip: b.skip }, async (t) => {
    const engine = await Engine.load(TINY_SD, { device: b.device, dtype: b.dtype });
    t.teardown(() => engine.dispose());
    const base = await outputs(engine);
    for (const [name, list] of Object.entries(cases.cases)) {
      const loras = list.map((l) => ({ path: fixture(cases.files[l.file]!), scale: l.scale }));
      const r = await engine.setLoras(loras);
      t.same(r.warnings, []);
      t.same(engine.loras, loras);
      const o = await outputs(engine);
      const e1 = relL2(o.eps, g.f32(`lora:${name}:eps_t500`));
      const e2 = relL2(o.te, g.f32(`lora:${name}:te_last_hidden_state`));
      t.ok(e1 <= b.tol.golden, `${name}: UNet eps rel L2 ${e1.toExponential(2)}`);
      t.ok(e2 <= b.tol.golden, `${name}: text encoder rel L2 ${e2.toExponential(2)}`);
    }
    await engine.setLoras([]);
    t.same(engine.loras, []);
    const back = await outputs(engine);
    t.ok(back.eps.every((v, i) => Object.is(v, base.eps[i])) && back.te.every((v, i) => Object.is(v, base.te[i])), 'setLoras([]) restores the base weights bit for bit');
  });
}

t.test('the other namings and dtypes merge to the same weights', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const same = async (a: string, bFile: string, what: string) => {
    await engine.setLoras([{ path: a, scale: 0.7 }]);
    const x = await outputs(engine);
    await engine.setLoras([{ path: bFile, scale: 0.7 }]);
    const y = await outputs(engine);
    const e = Math.max(relL2(x.eps, y.eps), relL2(x.te, y.te));
    t.ok(e <= 1e-6, `${what}: rel L2 ${e.toExponential(2)}`);
  };
  // diffusers' older names: `….lora.down.weight`, and the attention processors' `processor.to_q_lora.down.weight`.
  const old = rewrite(PEFT, 'old.safetensors', (k) => k.replace('.lora_A.weight', '.lora.down.weight').replace('.lora_B.weight', '.lora.up.weight'));
  await same(PEFT, old, 'PEFT vs .lora.down/.lora.up');
  const proc = rewrite(PEFT, 'processor.safetensors', (k) => {
    const m = /^unet\.(.+)\.(to_q|to_k|to_v|to_out\.0)\.lora_(A|B)\.weight$/.exec(k);
    if (!m) return k;
    return `unet.${m[1]}.processor.${m[2]!.replace('.0', '')}_lora.${m[3] === 'A' ? 'down' : 'up'}.weight`;
  });
  await same(PEFT, proc, 'PEFT vs processor.to_q_lora');
  // The fixture is float16: its float32 copy is the same numbers; a bfloat16 copy reads as its float32 equivalent.
  await same(KOHYA, rewrite(KOHYA, 'f32.safetensors', (k) => k, 'F32'), 'float16 vs float32');
  const bf = rewrite(KOHYA, 'bf16.safetensors', (k) => k, 'BF16');
  const bfAsF32 = path.join(tmp, 'bf16-as-f32.safetensors');
  {
    const st = SafetensorsFile.open(bf);
    const out: Record<string, TensorToWrite> = {};
    for (const k of st.names()) out[k] = { dtype: 'F32', shape: st.info(k).shape, data: bf16ToF32(new Uint16Array(st.readBytes(k).buffer.slice(0))) };
    st.close();
    writeSafetensors(bfAsF32, out);
  }
  await same(bf, bfAsF32, 'bfloat16 vs its float32 values');
  // No alpha key: alpha = rank. The kohya file without its alphas, each up matrix times its alpha/rank, is the same merge.
  const st = SafetensorsFile.open(KOHYA);
  const noAlpha: Record<string, TensorToWrite> = {};
  for (const k of st.names()) {
    if (k.endsWith('.alpha')) continue;
    let v = st.readFloat32(k);
    const shape = st.info(k).shape;
    if (k.endsWith('.lora_up.weight')) {
      const alpha = st.readFloat32(k.replace('.lora_up.weight', '.alpha'))[0]!;
      v = v.map((u) => u * (alpha / shape[1]!));
    }
    noAlpha[k] = { dtype: 'F32', shape, data: v };
  }
  st.close();
  const na = path.join(tmp, 'noalpha.safetensors');
  writeSafetensors(na, noAlpha);
  await same(KOHYA, na, 'alpha/rank vs no alpha (= rank) with up scaled by alpha/rank');
  await engine.setLoras([]);
});

t.test('bad LoRA files are E_MODEL_FORMAT naming the key and the expected shape; strict: false warns', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const base = await outputs(engine);
  const E = (msg: RegExp) => ({ name: 'IdforgeError', code: 'E_MODEL_FORMAT', message: msg });
  const stray = rewrite(KOHYA, 'stray.safetensors', (k) => k.replace('lora_unet_mid_block_resnets_0_conv1', 'lora_unet_mid_block_resnets_7_conv1'));
  await t.rejects(engine.setLoras([{ path: stray }]), E(/lora_unet_mid_block_resnets_7_conv1.*names no module of this model's UNet/));
  // A LoRA for another base model: a down matrix of the wrong width.
  const wide = path.join(tmp, 'wide.safetensors');
  writeSafetensors(wide, {
    'lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight': { dtype: 'F32', shape: [4, 768], data: new Float32Array(4 * 768).fill(0.01) },
    'lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight': { dtype: 'F32', shape: [64, 4], data: new Float32Array(64 * 4).fill(0.01) },
  });
  await t.rejects(engine.setLoras([{ path: wide }]), E(/lora_down\.weight" is \[4,768\] but the model's weight "mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k\.weight" is \[64,32\]: expected \[rank, 32\]/));
  const unknown = path.join(tmp, 'unknown.safetensors');
  writeSafetensors(unknown, { 'model.weird.weight': { dtype: 'F32', shape: [2], data: new Float32Array(2) } });
  await t.rejects(engine.setLoras([{ path: unknown }]), E(/"model\.weird\.weight" is not a LoRA key/));
  const loha = path.join(tmp, 'loha.safetensors');
  writeSafetensors(loha, { 'lora_unet_mid_block_resnets_0_conv1.hada_w1_a': { dtype: 'F32', shape: [2, 2], data: new Float32Array(4) } });
  await t.rejects(engine.setLoras([{ path: loha }]), E(/LyCORIS/));
  const noUp = rewrite(PEFT, 'noup.safetensors', (k) => (k.endsWith('attn1.to_q.lora_B.weight') && k.includes('down_blocks.0') ? undefined : k));
  await t.rejects(engine.setLoras([{ path: noUp }]), E(/has a down matrix but no up matrix/));
  const nan = path.join(tmp, 'nan.safetensors');
  writeSafetensors(nan, {
    'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight': { dtype: 'F32', shape: [1, 32], data: new Float32Array(32).fill(NaN) },
    'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight': { dtype: 'F32', shape: [64, 1], data: new Float32Array(64) },
  });
  await t.rejects(engine.setLoras([{ path: nan }]), E(/NaN or Inf/));
  await t.rejects(engine.setLoras([{ path: path.join(tmp, 'missing.safetensors') }]), { code: 'E_NOT_FOUND' });
  writeFileSync(path.join(tmp, 'lora.ckpt'), 'PK');
  await t.rejects(engine.setLoras([{ path: path.join(tmp, 'lora.ckpt') }]), E(/pickle/));
  for (const bad of [{ path: KOHYA, scale: NaN }, { path: '' }, null, { path: KOHYA, scale: '1' }])
    await t.rejects(engine.setLoras([bad as never]), { code: 'E_ARGUMENT', message: /setLoras/ });
  await t.rejects(engine.setLoras('x' as never), { code: 'E_ARGUMENT' });
  await t.rejects(engine.setLoras([], { strict: 1 } as never), { code: 'E_ARGUMENT' });
  // A merge whose result overflows float32 is E_NUMERIC, and every weight it wrote goes back to its base.
  await engine.setLoras([{ path: KOHYA, scale: 0.8 }]);
  const huge = path.join(tmp, 'huge.safetensors');
  writeSafetensors(huge, {
    'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight': { dtype: 'F32', shape: [1, 32], data: new Float32Array(32).fill(1e20) },
    'unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight': { dtype: 'F32', shape: [64, 1], data: new Float32Array(64).fill(1e20) },
  });
  await t.rejects(engine.setLoras([{ path: KOHYA, scale: 0.5 }, { path: huge }]), { code: 'E_NUMERIC', message: /attn2\.to_k\.weight.*NaN\/Inf/ });
  t.same(engine.loras, [], 'a failed merge leaves no LoRA active');
  // Nothing above changed the weights.
  const o = await outputs(engine);
  t.ok(o.eps.every((v, i) => v === base.eps[i]), 'a refused set leaves the weights as they were');
  t.same(engine.loras, []);

  // strict: false skips what does not fit and says so; the rest merges.
  const r = await engine.setLoras([{ path: stray, scale: 0.8 }], { strict: false });
  t.equal(r.warnings.length, 1);
  t.match(r.warnings[0], /lora_unet_mid_block_resnets_7_conv1.*\(skipped\)/);
  const merged = await outputs(engine);
  t.ok(relL2(merged.eps, base.eps) > 1e-3, 'the modules that fit are merged');
  await engine.setLoras([]);

  // checkLoras: the same refusals from the header alone (the values are not read: NaN passes), nothing merged.
  for (const [file, msg] of [[stray, /names no module/], [wide, /expected \[rank, 32\]/], [unknown, /not a LoRA key/], [loha, /LyCORIS/], [noUp, /no up matrix/]] as const)
    t.throws(() => engine.checkLoras([{ path: file }]), E(msg), path.basename(file));
  t.same(engine.checkLoras([{ path: nan }, { path: KOHYA }]), { warnings: [] });
  t.match(engine.checkLoras([{ path: stray }], { strict: false }).warnings, [/resnets_7_conv1.*\(skipped\)/]);
  t.same(engine.loras, []);
});

t.test('calls in flight finish on the weights they started with; calls made during a merge start after it', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const base = await outputs(engine);
  await engine.setLoras([{ path: KOHYA, scale: 0.8 }]);
  const lora = await outputs(engine);
  await engine.setLoras([]);
  using x = g.tensor('lora:x');
  using ctx = g.tensor('lora:context');
  const order: string[] = [];
  const before = engine.predictNoise(x, cases.timestep, ctx).then((e) => (order.push('before'), e));
  const merge = engine.setLoras([{ path: KOHYA, scale: 0.8 }]).then(() => order.push('merge'));
  const after = engine.predictNoise(x, cases.timestep, ctx).then((e) => (order.push('after'), e));
  const [a, , c] = await Promise.all([before, merge, after]);
  t.same(order, ['before', 'merge', 'after']);
  t.ok(a.toFloat32().every((v, i) => v === base.eps[i]), 'the call in flight saw the base weights');
  t.ok(c.toFloat32().every((v, i) => v === lora.eps[i]), 'the call made during the merge saw the LoRA');
  a.dispose();
  c.dispose();
  // Two merges asked for at once run one after the other; the last one wins.
  await Promise.all([engine.setLoras([{ path: PEFT }]), engine.setLoras([{ path: KOHYA, scale: 0.8 }])]);
  t.same(engine.loras, [{ path: KOHYA, scale: 0.8 }]);
  const last = await outputs(engine);
  t.ok(last.eps.every((v, i) => v === lora.eps[i]), 'the merges did not mix');
  engine.dispose();
  await t.rejects(engine.setLoras([]), { code: 'E_DISPOSED' });
});
