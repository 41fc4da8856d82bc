// DreamIdentity with the bundled tiny models: a face photo → M² ID encoder → pseudo-words → <id>.
//   npm install && node examples/dreamidentity.mjs
import { Engine, IdEncoder, attentionHeatmap, saveImage } from 'idforge';

const engine = await Engine.load('test/fixtures/tiny-sd', { device: 'auto' });
const encoder = await IdEncoder.load('test/fixtures/tiny-id-encoder');
// Five landmarks (eyes, nose, mouth corners) align the face onto the ArcFace template; without
// them the face is centre-cropped (with a warning).
const identity = await encoder.encode('test/fixtures/faces/face-a.png');
identity.save('face-a.idforge.safetensors', { textDim: 32, vocabHash: engine.tokenizer.vocabHash });

const result = await engine.generate({
  prompt: 'a photo of <id> as an astronaut, oil painting',
  identity,
  width: 128, height: 128, steps: 20, seed: 1,
  captureAttention: { layers: 'cross', reduce: 'mean' },
});
await saveImage(result.images[0], 'dreamidentity.png');
await saveImage(await attentionHeatmap(result, '<id>'), 'dreamidentity-attention.png');
console.log('wrote dreamidentity.png and dreamidentity-attention.png');
encoder.dispose();
engine.dispose();
