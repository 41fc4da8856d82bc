// SeFi-IDE with the bundled tiny model: learn 5 staged K/V tokens from one face, save, generate.
//   npm install && node examples/sefi-ide.mjs
import { Engine, Identity, saveImage } from 'idforge';

// Learning needs float32 compute (the CPU, or CUDA loaded with { dtype: 'float32' }).
const engine = await Engine.load('test/fixtures/tiny-sd', { dtype: 'float32' });
// The photo is cropped to a square around the detected face (init 'person'); face: false keeps the whole photo.
const identity = await engine.learnIdentity('test/fixtures/faces/astronaut.jpg', {
  steps: 30, // the paper uses ~1000 on SD 1.5
  seed: 1,
  onProgress: ({ step, steps, loss }) => process.stdout.write(`\rstep ${step}/${steps} loss ${loss.toFixed(4)}`),
});
identity.save('astronaut.sefi.safetensors', { textDim: 32, vocabHash: engine.tokenizer.vocabHash });
const again = Identity.load('astronaut.sefi.safetensors', { dim: 32 });
const { images } = await engine.generate({ prompt: 'a close-up photo of the face of <id>, oil painting', identity: again, width: 128, height: 128, steps: 20, seed: 2 });
await saveImage(images[0], 'sefi-ide.png');
console.log('\nwrote sefi-ide.png');
engine.dispose();
