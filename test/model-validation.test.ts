// A model whose weights do not match its config is refused at load time with a message naming the
// tensor, instead of producing wrong images.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine } from '../lib/engine.js';
import { SafetensorsFile, writeSafetensors, type StDType } from '../lib/io/safetensors.js';
import { TINY_SD } from './helpers/fixtures.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-validate-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A copy of tiny-sd whose UNet file is rewritten by `edit` (name → tensor, or undefined to drop it). */
function variant(name: string, edit: (key: string, shape: number[], data: Buffer) => { shape: number[]; data: Buffer } | undefined, extra?: Record<string, { shape: number[]; data: Buffer }>): string {
  const dir = path.join(tmp, name);
  fs.cpSync(TINY_SD, dir, { recursive: true });
  const file = path.join(dir, 'unet/diffusion_pytorch_model.safetensors');
  const src = SafetensorsFile.open(path.join(TINY_SD, 'unet/diffusion_pytorch_model.safetensors'));
  const out: Record<string, { dtype: StDType; shape: number[]; data: ArrayBufferView }> = {};
  for (const k of src.names()) {
    const info = src.info(k);
    const r = edit(k, [...info.shape], src.readBytes(k));
    if (r) out[k] = { dtype: info.dtype, shape: r.shape, data: r.data };
  }
  for (const [k, v] of Object.entries(extra ?? {})) out[k] = { dtype: 'F16', shape: v.shape, data: v.data };
  src.close();
  writeSafetensors(file, out);
  return dir;
}

t.test('a weight of the wrong shape is refused at load', async (t) => {
  // conv_in.weight [32, 4, 3, 3] stored as [32, 4, 1, 1] (same bytes would not fit: take a slice).
  const dir = variant('shape', (k, shape, data) => (k === 'conv_in.weight' ? { shape: [32, 4, 1, 1], data: data.subarray(0, 32 * 4 * 2) } : { shape, data }));
  await t.rejects(Engine.load(dir, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /conv_in\.weight.*\[32,4,1,1\].*\[32,4,3,3\]/ });
});

t.test('a missing bias is refused at load', async (t) => {
  const dir = variant('missing', (k, shape, data) => (k === 'conv_in.bias' ? undefined : { shape, data }));
  await t.rejects(Engine.load(dir, { device: 'cpu' }), { code: 'E_MODEL_FORMAT', message: /no weight 'conv_in\.bias'/ });
});

t.test('unknown extra tensors load with a warning', async (t) => {
  const dir = variant('extra', (_k, shape, data) => ({ shape, data }), { 'mystery.weight': { shape: [2], data: Buffer.alloc(4) } });
  const e = await Engine.load(dir, { device: 'cpu' });
  t.match(e.loadWarnings.join('\n'), /unet: 1 tensor\(s\) the model does not use were ignored \(e\.g\. 'mystery\.weight'\)/);
  e.dispose();
});
