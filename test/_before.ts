import { writeFileSync } from 'node:fs';
import { Engine } from '../lib/engine.js';
import { GoldenFile, TINY_SD } from './helpers/fixtures.js';
import { relL2 } from './helpers/metrics.js';
const out = process.argv[2]!;
const eng = await Engine.load(TINY_SD, { device: 'cpu' });
const g = new GoldenFile('pipeline');
const init = g.tensor('init_latents');
const r = await eng.generate({ prompt: 'a photo of the face of person, oil painting', negativePrompt: '', steps: 10, guidanceScale: 7.5, eta: 0, width: 128, height: 128, latents: init });
const res: Record<string, unknown> = {
  pipeline_final_relL2: relL2(r.latents.toFloat32(), g.f32('final_latents')),
  pipeline_image_relL2: relL2(r.pixels.toFloat32(), g.f32('image')),
  images: {} as Record<string, number[]>,
};
let md = 0; const u8 = g.file.readBytes('image_u8_hwc');
for (let i = 0; i < u8.length; i++) md = Math.max(md, Math.abs(u8[i]! - r.images[0]!.data[i]!));
res.pipeline_u8_maxdiff = md;
for (const seed of [1, 2, 3]) for (const eta of [0, 1]) {
  const q = await eng.generate({ prompt: 'a photo of the face of person, oil painting', steps: 10, width: 128, height: 128, seed, eta: 0 });
  (res.images as Record<string, number[]>)[`s${seed}`] = [...q.images[0]!.data];
}
writeFileSync(out, JSON.stringify(res));
console.log(res.pipeline_final_relL2, res.pipeline_image_relL2, md);
eng.dispose();
