// `npm run demo`: the product's job on the bundled tiny models, as the two commands a user runs —
// an identity from a face photo (DreamIdentity's encoder), then a picture of that person.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Outputs go to the current folder; the fixtures are the package's own.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fixtures = path.relative(process.cwd(), path.join(root, 'test/fixtures')) || '.';
const steps = [
  ['identity', 'encode', '--encoder', `${fixtures}/tiny-id-encoder`, '--photo', `${fixtures}/faces/astronaut.jpg`, '--out', 'demo-identity.safetensors'],
  ['generate', '--model', `${fixtures}/tiny-sd`, '--identity', 'demo-identity.safetensors', '--prompt', 'a photo of <id>, oil painting',
    '--steps', '10', '--seed', '42', '--width', '128', '--height', '128', '--attention-map', 'demo-attention.png', '--out', 'demo.png'],
];
for (const args of steps) {
  process.stdout.write(`$ idforge ${args.map((a) => (/[\s<>]/.test(a) ? JSON.stringify(a) : a)).join(' ')}\n`);
  const r = spawnSync(process.execPath, [path.join(root, 'dist/cli.js'), ...args], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
process.stdout.write(`
demo.png is coloured noise, and that is right: the bundled tiny models (SD 1.5's architecture at a
fraction of the width, and a tiny ID encoder) have random, untrained weights; they exist so that the
tests check every stage against diffusers in seconds. The pipeline is the real one: the face in
astronaut.jpg was detected, aligned and encoded into demo-identity.safetensors, and demo-attention.png
shows where its words attended. With a trained SD 1.x model and ID encoder the same two commands
make a picture of that person:
  idforge identity encode --encoder ENCODER_DIR --photo me.jpg --out me.safetensors
  idforge generate --model SD_DIR --identity me.safetensors --prompt "a photo of <id> as a chef"
Or run \`idforge serve --model ${fixtures}/tiny-sd --encoder ${fixtures}/tiny-id-encoder\` and open the studio page.
`);
