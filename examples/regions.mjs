// Two people, each where you put them: regional identities with the bundled tiny models. Two
// identities from two photos (the tiny DreamIdentity encoder), `ann` confined to the left half and
// `bob` to the right, and the attention heatmap of each identity written next to the image; the same
// call without regions for comparison, and a contact sheet of both (docs/regions.png).
//   npm install && node examples/regions.mjs
import { Engine, IdEncoder, attentionHeatmap, saveImage } from 'idforge';
import sharp from 'sharp';

const engine = await Engine.load('test/fixtures/tiny-sd', { device: 'auto' });
const encoder = await IdEncoder.load('test/fixtures/tiny-id-encoder');
const ann = await encoder.encode('test/fixtures/faces/astronaut.jpg');
const bob = await encoder.encode('test/fixtures/faces/grace_hopper.jpg');

const call = {
  prompt: 'a photo of <id:ann> and <id:bob> at the beach',
  identities: { ann, bob },
  width: 256, height: 128, steps: 20, seed: 1,
  captureAttention: { layers: 'cross', reduce: 'mean' },
};
const regions = { ann: [0, 0, 0.5, 1], bob: [0.5, 0, 1, 1] };
const rows = [];
for (const [name, opts] of [['regions', { ...call, regions }], ['plain', call]]) {
  const r = await engine.generate(opts);
  const files = [`${name}.png`, `${name}-ann.png`, `${name}-bob.png`];
  // Each heatmap alone (no image under it): black where the identity's words get no attention.
  const pictures = [r.images[0], await attentionHeatmap(r, '<id:ann>', { alpha: 1 }), await attentionHeatmap(r, '<id:bob>', { alpha: 1 })];
  for (let i = 0; i < 3; i++) await saveImage(pictures[i], files[i]);
  rows.push(pictures);
  console.log(`wrote ${files.join(', ')}`);
}

// The contact sheet: with regions on top, without below; columns image, ann, bob; the boxes outlined.
const W = call.width, H = call.height, gap = 8, label = 22;
const sheet = { width: 3 * W + 4 * gap, height: 2 * (H + label) + 3 * gap };
const text = (x, y, s) => `<text x="${x}" y="${y}" font-family="sans-serif" font-size="13" fill="#222">${s}</text>`;
const titles = ['image', '&lt;id:ann&gt; attention', '&lt;id:bob&gt; attention'];
const rowNames = ['regions: ann left, bob right', 'no regions'];
let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${sheet.width}" height="${sheet.height}">`;
rows.forEach((_, r) => {
  const y = gap + r * (H + label + gap);
  titles.forEach((t, c) => (svg += text(gap + c * (W + gap), y + 15, c === 0 ? `${rowNames[r]}` : t)));
  if (r === 0)  // the two boxes, dashed, over the heatmaps
    for (const [c, x0] of [[1, 0], [2, W / 2]]) {
      svg += `<rect x="${gap + c * (W + gap) + x0 + 1}" y="${y + label + 1}" width="${W / 2 - 2}" height="${H - 2}" fill="none" stroke="#3af" stroke-width="2" stroke-dasharray="6 4"/>`;
    }
});
svg += '</svg>';
const tiles = rows.flatMap((pics, r) => pics.map((p, c) => ({
  input: sharp(Buffer.from(p.data), { raw: { width: p.width, height: p.height, channels: 3 } }).png(),
  left: gap + c * (W + gap), top: gap + r * (H + label + gap) + label,
})));
const inputs = await Promise.all(tiles.map(async (t) => ({ input: await t.input.toBuffer(), left: t.left, top: t.top })));
await sharp({ create: { width: sheet.width, height: sheet.height, channels: 3, background: '#ffffff' } })
  .composite([...inputs, { input: Buffer.from(svg), left: 0, top: 0 }])
  .png({ palette: true, compressionLevel: 9 }).toFile('regions-sheet.png');
console.log('wrote regions-sheet.png');
encoder.dispose();
engine.dispose();
