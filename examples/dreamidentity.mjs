// DreamIdentity with the bundled tiny models: a face photo → M² ID encoder → pseudo-words → <id>.
//   npm install && node examples/dreamidentity.mjs
import { Engine, IdEncoder, attentionHeatmap, saveImage } from 'idforge';

const engine = await Engine.load('test/fixtures/tiny-sd', { device: 'auto' });
const encoder = await IdEncoder.load('test/fixtures/tiny-id-encoder');
// The face detector (lib/faces) finds five landmarks (eyes, nose, mouth corners) that align the
// face onto the ArcFace template; { landmarks: 'centre' } takes the photo's centre instead.
const identity = await encoder.encode('test/fixtures/faces/astronaut.jpg');
identity.save('astronaut.idforge.safetensors', { textDim: 32, vocabHash: engine.tokenizer.vocabHash });

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
