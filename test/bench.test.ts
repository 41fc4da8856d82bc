// The benchmark harness: the synthetic model mirrors the real layout exactly, FLOP counting,
// statistics, argument parsing, and a smoke run on the tiny model (no timing assertions).
import t, { type Test } from 'tap';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../lib/engine.js';
import { parseFewstepArgs, writeSyntheticLora } from '../lib/bench/fewstep.js';
import { openModel } from '../lib/io/checkpoint.js';
import { f16ToF32 } from '../lib/io/half.js';
import { parseBenchArgs, parseSize } from '../lib/bench/args.js';
import { aggregateOps, opFlops } from '../lib/bench/flops.js';
import { bench, stats, type BenchReport } from '../lib/bench/index.js';
import { modelLayout, paramCount, randomModelSource, sampleInit, sd15Configs } from '../lib/bench/random-model.js';
import { formatReport } from '../lib/bench/table.js';
import { backends } from '../lib/native.js';
import { MODELS, TINY_SD } from './helpers/fixtures.js';

const COMPONENTS = ['unet', 'vae', 'text'] as const;

for (const [layout, path] of MODELS) {
  t.test(`random layout from the tiny configs equals the ${layout}'s tensors exactly`, async (t) => {
    using src = openModel(path);
    const lay = modelLayout(src.configs);
    for (const c of COMPONENTS) {
      const want = new Map([...src.weights[c]].map(([k, r]) => [k, r.shape]));
      const got = new Map(lay[c].map((e) => [e.name, e.shape]));
      t.equal(got.size, lay[c].length, `${c}: no duplicate names`);
      t.same([...got.keys()].sort(), [...want.keys()].sort(), `${c}: same names`);
      for (const [k, s] of want) if (JSON.stringify(got.get(k)) !== JSON.stringify(s)) t.fail(`${c} ${k}: ${JSON.stringify(got.get(k))} vs ${JSON.stringify(s)}`);
    }
  });
}

t.test('SD 1.5 layout: the published parameter counts and known shapes', async (t) => {
  const lay = modelLayout(sd15Configs());
  t.equal(paramCount(lay.unet), 859_520_964, 'UNet');
  t.equal(paramCount(lay.vae), 83_653_863, 'VAE');
  t.equal(paramCount(lay.text), 123_060_480, 'CLIP text encoder (without position_ids)');
  const shape = (c: (typeof COMPONENTS)[number], n: string) => lay[c].find((e) => e.name === n)?.shape;
  t.same(shape('unet', 'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight'), [320, 768]);
  t.same(shape('unet', 'up_blocks.3.resnets.0.conv1.weight'), [320, 960, 3, 3]);
  t.same(shape('unet', 'mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight'), [10240, 1280]);
  t.same(shape('vae', 'decoder.up_blocks.3.resnets.0.conv_shortcut.weight'), [128, 256, 1, 1]);
  t.same(shape('text', 'text_model.encoder.layers.11.mlp.fc1.weight'), [3072, 768]);
});

t.test('random weights: seeded, N(0, 0.02) for weights, 1/0 for norms, F16 bytes on request', async (t) => {
  const a = sampleInit({ kind: 'normal', std: 0.02 }, 100_001, 7);
  // (tap's deep comparison is slow on big typed arrays: compare by hand)
  const same = (x: Float32Array, y: Float32Array) => x.length === y.length && x.every((v, i) => v === y[i]);
  t.ok(same(a, sampleInit({ kind: 'normal', std: 0.02 }, 100_001, 7)), 'deterministic');
  t.notOk(same(a.subarray(0, 8), sampleInit({ kind: 'normal', std: 0.02 }, 8, 8)), 'seed matters');
  let m = 0;
  let v = 0;
  for (const x of a) m += x;
  m /= a.length;
  for (const x of a) v += (x - m) ** 2;
  const sd = Math.sqrt(v / a.length);
  t.ok(Math.abs(m) < 3e-4, `mean ${m}`);
  t.ok(Math.abs(sd - 0.02) < 4e-4, `std ${sd}`);
  t.ok(a.every((x) => Number.isFinite(x) && Math.abs(x) < 0.1));

  const src = randomModelSource('sd15', { dtype: 'F16', seed: 3 });
  const w = src.weights.unet;
  t.equal(w.size, 686);
  const gn = w.get('down_blocks.0.resnets.0.norm1.weight')!;
  t.ok(gn.readFloat32().every((x) => x === 1), 'norm weight 1');
  t.ok(w.get('down_blocks.0.resnets.0.norm1.bias')!.readFloat32().every((x) => x === 0), 'norm bias 0');
  const conv = w.get('conv_in.weight')!;
  t.same(conv.shape, [320, 4, 3, 3]);
  t.equal(conv.dtype, 'F16');
  t.equal(conv.readBytes().byteLength, 320 * 4 * 9 * 2);
  const f = conv.readFloat32();
  const b = conv.readBytes();
  const h = f16ToF32(new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2));
  t.ok(h.every((x, i) => Math.abs(x - f[i]!) <= Math.abs(f[i]!) / 1024 + 6e-8), 'F16 bytes are the float32 values rounded');
  t.notOk(same(f, randomModelSource('sd15', { seed: 4 }).weights.unet.get('conv_in.weight')!.readFloat32()), 'seeded per source');
  t.notOk(same(f.subarray(0, 16), w.get('conv_out.weight')!.readFloat32().subarray(0, 16)), 'streams differ per tensor');
  t.throws(() => randomModelSource('sd14' as 'sd15'), { code: 'E_ARGUMENT' });
});

t.test('FLOP counting from op shapes', async (t) => {
  t.equal(opFlops('conv2d', { in: [[2, 320, 32, 32], [640, 320, 3, 3], [640]], out: [[2, 640, 32, 32]] }), 2 * 2 * 640 * 1024 * 320 * 9 + 2 * 640 * 1024);
  t.equal(opFlops('conv2d', { in: [[1, 4, 64, 64], [4, 4, 3, 3]], out: [[1, 4, 32, 32]] }), 2 * 4 * 1024 * 36, 'stride from the output shape');
  t.equal(opFlops('linear', { in: [[2, 77, 768], [3072, 768], [3072]], out: [[2, 77, 3072]] }), 2 * 154 * 3072 * 768 + 154 * 3072);
  t.equal(opFlops('matmul', { in: [[3, 4, 5], [3, 5, 6]], out: [[3, 4, 6]] }), 2 * 3 * 4 * 5 * 6);
  t.equal(opFlops('attention', { in: [[2, 1024, 320], [2, 77, 320], [2, 77, 320]], out: [[2, 1024, 320]] }), 4 * 2 * 1024 * 77 * 320);
  t.equal(opFlops('reshape', { in: [[2, 3]], out: [[6]] }), 0);
  t.equal(opFlops('add', { in: [[2, 3], [2, 3]], out: [[2, 3]] }), 6);
  const agg = aggregateOps(
    [{ op: 'CONV2D', index: 0, ms: 2 }, { op: 'CONV2D', index: 1, ms: 1 }, { op: 'ADD', index: 2, ms: 1 }],
    [
      { in: [[1, 8, 4, 4], [8, 8, 3, 3]], out: [[1, 8, 4, 4]] },
      { in: [[1, 8, 4, 4], [8, 8, 1, 1]], out: [[1, 8, 4, 4]] },
      { in: [[1, 8, 4, 4], [1, 8, 4, 4]], out: [[1, 8, 4, 4]] },
    ],
    4,
    100,
    ['conv2d', 'conv2d', 'add'],
  );
  t.equal(agg.totalMs, 4);
  t.same(agg.rows.map((r) => [r.op, r.calls]), [['conv2d', 2], ['add', 1]]);
  t.equal(agg.rows[0]!.gflop, (2 * 128 * 72 + 2 * 128 * 8) / 1e9);
  t.equal(agg.rows[0]!.share, 0.75);
  t.ok(agg.rows[0]!.ofPeak! > 0);
  t.equal(agg.top[0]!.index, 0);
});

t.test('stats', async (t) => {
  const s = stats([5, 1, 3, 2, 4]);
  t.match(s, { n: 5, median: 3, min: 1, max: 5, q1: 2, q3: 4, mean: 3 });
  t.same(s.samples, [5, 1, 3, 2, 4]);
  t.equal(stats([1, 2]).median, 1.5);
  t.throws(() => stats([]));
});

t.test('command line', async (t) => {
  t.same(parseSize('256'), { width: 256, height: 256 });
  t.same(parseSize('512x768'), { width: 512, height: 768 });
  t.throws(() => parseSize('big'), { code: 'E_ARGUMENT' });
  const p = parseBenchArgs(['--random', 'sd15', '--device', 'cpu', '--size', '256', '--batch', '2', '--steps', '3', '--no-generate', '--json', 'out.json']);
  t.match(p.opts, { random: 'sd15', device: 'cpu', width: 256, height: 256, batch: 2, steps: 3, generate: false });
  t.equal(p.json, 'out.json');
  t.equal(p.opts.command, 'npm run bench -- --random sd15 --device cpu --size 256 --batch 2 --steps 3 --no-generate --json out.json');
  t.throws(() => parseBenchArgs(['--random', 'sdxl']), { code: 'E_ARGUMENT' });
  t.throws(() => parseBenchArgs(['--steps', 'many']), { code: 'E_ARGUMENT' });
  t.throws(() => parseBenchArgs(['--bogus']));
  t.match(parseBenchArgs(['--sampler', 'dpmpp-2m-karras', '--images', '3']).opts, { sampler: 'dpmpp-2m-karras', images: 3 });
  t.throws(() => parseBenchArgs(['--sampler', 'lms']), { code: 'E_ARGUMENT', message: /sampler/ });
  t.match(parseBenchArgs(['--sampler', 'lcm', '--guidance', '1', '--vae', 'tiny']).opts, { sampler: 'lcm', guidance: 1, vae: 'tiny' });
  t.throws(() => parseBenchArgs(['--guidance', 'x']), { code: 'E_ARGUMENT', message: /guidance/ });
  const f = parseFewstepArgs(['--fewstep', '--random', 'sd15', '--device', 'cpu', '--rounds', '2', '--lora-rank', '64', '--no-preview']);
  t.match(f.opts, { random: 'sd15', device: 'cpu', rounds: 2, loraRank: 64, preview: false });
  t.throws(() => parseFewstepArgs(['--rounds', '0']), { code: 'E_ARGUMENT', message: /rounds/ });
  t.match(parseBenchArgs(['--regions', '2']).opts, { regions: 2 });
});

function checkReport(t: Test, r: BenchReport, withGenerate: boolean): void {
  const pos = (x: unknown, what: string) => t.ok(typeof x === 'number' && Number.isFinite(x) && x > 0, `${what} = ${String(x)}`);
  t.type(r.command, 'string');
  t.ok(!Number.isNaN(Date.parse(r.date)), 'date');
  t.type(r.machine.cpu, 'string');
  pos(r.machine.cpus, 'cpus');
  t.equal(r.machine.isa, backends().cpu.isa, 'the CPU kernels in use');
  pos(r.machine.measuredPeakGflops, 'measured FMA peak');
  t.equal(r.config.device, 'cpu');
  t.equal(r.config.dtype, 'float32');
  const res = r.results;
  pos(res.loadMs, 'loadMs');
  for (const [k, s] of [['text', res.textEncoder], ['unet', res.unet], ['vae', res.vaeDecode]] as const) {
    pos(s.firstMs, `${k} firstMs`);
    for (const q of ['median', 'min', 'max', 'mean'] as const) pos(s.ms[q], `${k} ${q}`);
    t.ok(s.ms.min <= s.ms.median && s.ms.median <= s.ms.max, `${k} min ≤ median ≤ max`);
    t.equal(s.ms.samples.length, r.config.steps);
  }
  pos(res.unet.gflopPerStep, 'UNet GFLOP');
  pos(res.unet.gflops, 'UNet GFLOP/s');
  t.equal(res.unet.outputFinite, true, 'UNet output finite');
  t.ok(res.unet.cpu.own >= 0 && (res.unet.cpu.others ?? 0) >= 0, 'CPU meter');
  pos(res.memory.maxRssBytes, 'maxRSS');
  pos(res.memory.nativePeakBytes.cpu, 'native cpu bytes');
  pos(res.memory.weightsBytes.unet, 'UNet weight bytes');
  if (withGenerate) {
    pos(res.generate?.perImage.median, 'generate s per image');
    pos(res.generate?.perStepMs, 'generate ms per step');
  } else t.equal(res.generate, null);
}

t.test('smoke: bench() on the tiny model', async (t) => {
  const r = await bench({ model: TINY_SD, device: 'cpu', width: 64, height: 64, batch: 2, steps: 2, warmup: 1, sampler: 'euler-a', images: 2 });
  checkReport(t, r, true);
  t.match(r.results.generate, { sampler: 'euler-a', steps: 2, perImage: { n: 2 } });
  t.same(r.config.latent, [8, 8]);
  t.ok(r.results.ops, 'per-op profile');
  const ops = r.results.ops!;
  t.ok(ops.rows.length > 5);
  t.ok(ops.rows.some((x) => x.op === 'conv2d' && x.gflop > 0 && x.calls > 0));
  for (const x of ops.rows) t.ok(Number.isFinite(x.ms) && x.ms >= 0 && Number.isFinite(x.gflop), x.op);
  t.equal(ops.top.length, Math.min(12, ops.rows.reduce((a, x) => a + x.calls, 0)));
  const text = formatReport(r);
  t.match(text, /UNet step \(batch 2\)/);
  t.match(text, /generate\(\): euler-a, 2 steps, guidance 7.5: [\d.]+ s per image/);
  t.match(text, /conv2d/);
  t.ok(JSON.parse(JSON.stringify(r)), 'JSON round trip');
});

t.test('smoke: bench() on random weights with the tiny layout (the --random code path)', async (t) => {
  const configs = (() => {
    using src = openModel(TINY_SD);
    return src.configs;
  })();
  // With --regions 2: the regional step alternates with the plain one (unguided: every row confined).
  const r = await bench({ source: randomModelSource(configs, { seed: 1 }), device: 'cpu', width: 64, batch: 1, steps: 1, warmup: 0, generate: false, ops: false, regions: 2 });
  checkReport(t, r, false);
  t.equal(r.results.ops, null);
  t.match(r.config.model, /^random:custom/);
  const rg = r.results.unet.regions!;
  t.ok(rg.count === 2 && rg.ms.samples.length === 1 && rg.ratio.median > 0 && Number.isFinite(rg.ratio.median), `regions: ${JSON.stringify({ ms: rg.ms.median, ratio: rg.ratio.median })}`);
  t.match(formatReport(r), /UNet with 2 regions \/ plain, per alternating pair: median [\d.]+×/);
  await t.rejects(bench({ model: TINY_SD, regions: 9 }), { code: 'E_ARGUMENT', message: /regions must be an integer in \[0, 8\]/ });
});

t.test('smoke: the few-step settings (--sampler lcm --guidance 1 --vae tiny: a random TAESD of the real architecture)', async (t) => {
  const configs = (() => {
    using src = openModel(TINY_SD);
    return src.configs;
  })();
  const source = randomModelSource(configs, { seed: 1, vae: 'tiny' });
  t.same(source.configs.vae.tiny, { encoderBlockOutChannels: [64, 64, 64, 64], decoderBlockOutChannels: [64, 64, 64, 64], numEncoderBlocks: [1, 3, 3, 3], numDecoderBlocks: [3, 3, 3, 1], decoderOnly: false });
  const r = await bench({ source, device: 'cpu', width: 64, batch: 1, steps: 2, warmup: 0, sampler: 'lcm', guidance: 1, ops: false });
  checkReport(t, r, true);
  t.match(r.results.generate, { sampler: 'lcm', steps: 2, guidance: 1 });
});

t.test('smoke: --dtype float16 on the CPU is float16 weights computing in float32, on the --random path too', async (t) => {
  const configs = (() => {
    using src = openModel(TINY_SD);
    return src.configs;
  })();
  const r = await bench({ source: randomModelSource(configs, { seed: 1, dtype: 'F16' }), device: 'cpu', dtype: 'float16', width: 64, batch: 1, steps: 1, warmup: 0, generate: false, ops: false });
  checkReport(t, r, false);
  t.match(r.config, { device: 'cpu', dtype: 'float32', weights: 'float16' });
});

t.test('the synthesised LoRA covers every attention projection and conv, and merges', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const file = join(tmpdir(), `idforge-bench-lora-${process.pid}.safetensors`);
  t.teardown(() => rmSync(file, { force: true }));
  const { modules } = writeSyntheticLora(file, engine, 4, 0);
  const unet = [...engine.runtime.weights.unet.refs].filter(([n, r]) => n.endsWith('.weight') && (r.shape.length === 4 || /attn[12]\.(to_q|to_k|to_v|to_out\.0)\./.test(n))).length;
  t.equal(modules, unet + 4 * engine.configs.text.numHiddenLayers);
  t.same((await engine.setLoras([{ path: file }])).warnings, []);
});
