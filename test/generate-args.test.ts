// generate()'s argument errors, in one place: each bad option is refused by resolveGenerate before
// anything runs, with its code and a message that names the argument, what it must be and what it
// got (lib/validate.ts invalid()). About 2 s: one tiny model, no step runs.
import t from 'tap';
import { Engine, type GenerateOptions } from '../lib/engine.js';
import { Identity } from '../lib/identity/identity.js';
import type { RawImage } from '../lib/io/image.js';
import { Tensor } from '../lib/tensor.js';
import { TINY_SD } from './helpers/fixtures.js';

const base = { prompt: 'a photo of the face of person', width: 128, height: 128, steps: 4, seed: 7 };

t.test('generate() refuses each bad option with a typed error naming it', async (t) => {
  const engine = await Engine.load(TINY_SD, { device: 'cpu' });
  t.teardown(() => engine.dispose());
  const D = engine.configs.text.hiddenSize;
  const id = new Identity({ k: new Float32Array(D).fill(0.01), words: 1, dim: D, method: 'custom' });
  const image: RawImage = { width: 128, height: 128, channels: 3, data: new Uint8Array(128 * 128 * 3).fill(100) };
  const tensors: Tensor[] = [];
  const tensor = (shape: number[], fill = 0) => {
    const x = Tensor.from(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill), shape);
    tensors.push(x);
    return x;
  };
  t.teardown(() => tensors.forEach((x) => x.dispose()));
  const cases: [string, Partial<GenerateOptions> | null, 'E_ARGUMENT' | 'E_SHAPE', RegExp][] = [
    ['no options', null, 'E_ARGUMENT', /^prompt must be a string \(generate needs a prompt\)$/],
    ['prompt', { prompt: 42 as never }, 'E_ARGUMENT', /^prompt must be a string \(generate needs a prompt\), got 42$/],
    ['huge prompt', { prompt: 'x'.repeat(750_000) }, 'E_ARGUMENT', /^prompt must be at most 20000 characters .*, got 750000 characters$/],
    ['negativePrompt', { negativePrompt: 5 as never }, 'E_ARGUMENT', /^negativePrompt must be a string, got 5$/],
    ['width', { width: 100 }, 'E_SHAPE', /^width must be a multiple of 64 \(the VAE × UNet downsampling; nearest valid: 64 or 128\), got 100$/],
    ['height 0', { height: 0 }, 'E_SHAPE', /^height must be a positive integer up to 8192, got 0$/],
    ['height < 0', { height: -128 }, 'E_SHAPE', /^height must be a positive integer up to 8192, got -128$/],
    ['width 8193', { width: 8193 }, 'E_SHAPE', /^width must be a positive integer up to 8192, got 8193$/],
    ['width 1e9', { width: 1e9 }, 'E_SHAPE', /got 1000000000$/],
    ['width ∞', { width: Infinity }, 'E_SHAPE', /got Infinity$/],
    ['steps 0', { steps: 0 }, 'E_ARGUMENT', /^steps must be an integer in \[1, 1000\], got 0$/],
    ['steps 1001', { steps: 1001 }, 'E_ARGUMENT', /^steps must be an integer in \[1, 1000\], got 1001$/],
    ['steps 2.5', { steps: 2.5 }, 'E_ARGUMENT', /^steps must be an integer in \[1, 1000\], got 2.5$/],
    // The schedule (leading spacing, steps_offset 1) cannot give 1000 steps: refused up front.
    ['steps 1000', { steps: 1000 }, 'E_ARGUMENT', /^steps must be .*\(1000 steps give timestep 1000\), got 1000$/],
    ['guidanceScale NaN', { guidanceScale: NaN }, 'E_ARGUMENT', /^guidanceScale must be a finite number in \[0, 100\], got NaN$/],
    ['guidanceScale < 0', { guidanceScale: -1 }, 'E_ARGUMENT', /^guidanceScale must be .*, got -1$/],
    ['guidanceScale 1e30', { guidanceScale: 1e30 }, 'E_ARGUMENT', /^guidanceScale must be .*, got 1e\+30$/],
    ['eta', { eta: NaN }, 'E_ARGUMENT', /^eta must be a finite number in \[0, 1\], got NaN$/],
    ['eta 2', { eta: 2 }, 'E_ARGUMENT', /^eta must be a finite number in \[0, 1\], got 2$/],
    ['seed', { seed: -3 }, 'E_ARGUMENT', /^seed must be a non-negative integer, got -3$/],
    ['seed + numImages', { seed: Number.MAX_SAFE_INTEGER, numImages: 2 }, 'E_ARGUMENT', /^seed \+ numImages − 1 must be a safe integer/],
    ['numImages 0', { numImages: 0 }, 'E_ARGUMENT', /^numImages must be an integer in \[1, 64\], got 0$/],
    ['numImages 1.5', { numImages: 1.5 }, 'E_ARGUMENT', /^numImages must be .*, got 1.5$/],
    ['numImages 65', { numImages: 65 }, 'E_ARGUMENT', /^numImages must be .*, got 65$/],
    ['sampler', { sampler: 'k_lms' as never }, 'E_ARGUMENT', /^sampler must be one of ddim, dpmpp-2m, dpmpp-2m-karras, euler, euler-a, lcm, got "k_lms"$/],
    ['latents not a tensor', { latents: [1, 2] as never }, 'E_ARGUMENT', /^latents must be a Tensor, got \[1,2\]$/],
    ['latents size', { latents: tensor([1, 4, 8, 8]) }, 'E_SHAPE', /^latents must be \[numImages, C, h, w\] for 1 image\(s\) of 128x128 = \[1,4,16,16\], got \[1,4,8,8\]$/],
    ['latents channels', { latents: tensor([1, 3, 16, 16]) }, 'E_SHAPE', /^latents must be \[B, 4, h, w\] with h and w multiples of 8, got \[1,3,16,16\]$/],
    ['latents NaN', { latents: tensor([1, 4, 16, 16], Infinity) }, 'E_ARGUMENT', /^latents must be finite, got 1024 NaN\/Inf value\(s\)$/],
    ['stepNoise not a tensor', { sampler: 'euler-a', stepNoise: [1, 2] as never }, 'E_ARGUMENT', /^stepNoise must be a Tensor \[steps, numImages, C, h, w\], got \[1,2\]$/],
    ['stepNoise shape', { sampler: 'euler-a', stepNoise: tensor([4, 2, 4, 16, 16]) }, 'E_SHAPE', /^stepNoise must be \[steps run, numImages, C, h, w\] = \[4,1,4,16,16\], got \[4,2,4,16,16\]$/],
    ['nonFinite', { nonFinite: 'ignore' as never }, 'E_ARGUMENT', /^nonFinite must be 'error' or 'warn', got "ignore"$/],
    ['captureAttention.reduce', { captureAttention: { reduce: 'max' as never } }, 'E_ARGUMENT', /^captureAttention.reduce must be 'mean' or left out, got "max"$/],
    ['captureAttention.layers', { captureAttention: { layers: ['nope'] } }, 'E_ARGUMENT', /^captureAttention.layers must be cross-attention layers of this UNet \(unknown layer\), got "nope"$/],
    ['captureAttention.layers kind', { captureAttention: { layers: 5 as never } }, 'E_ARGUMENT', /^captureAttention.layers must be 'cross', an array of layer names or \{ resolution \}, got 5$/],
    ['captureAttention resolution', { captureAttention: { layers: { resolution: 3 } } }, 'E_ARGUMENT', /^captureAttention.layers.resolution must be a resolution some cross-attention layer works at .*, got 3$/],
    ['captureAttention.steps', { captureAttention: { steps: [99] } }, 'E_ARGUMENT', /^captureAttention.steps must be 'all' or step numbers in \[1, 4\], got \[99\]$/],
    ['identityScale NaN', { identity: id, identityScale: NaN }, 'E_ARGUMENT', /^identityScale must be a finite number ≥ 0, got NaN$/],
    ['identityScale < 0', { identity: id, identityScale: -1 }, 'E_ARGUMENT', /^identityScale must be a finite number ≥ 0, got -1$/],
    ['identity and identities', { identity: id, identities: { x: id } }, 'E_ARGUMENT', /^identities must be left out when identity is given \(pass one or the other\)$/],
    ['identity', { identity: {} as Identity }, 'E_ARGUMENT', /^identity must be an Identity, got \{\}$/],
    ['identities', { identities: { x: 5 as never } }, 'E_ARGUMENT', /^identities.x must be an Identity, got 5$/],
    ['image', { image: 42 as never }, 'E_ARGUMENT', /^image must be a RawImage, a file path or an encoded image Buffer, got 42$/],
    ['image size', { image, width: 256 }, 'E_SHAPE', /^width x height must be the image's size 128x128 \(resize the image or leave width and height out\), got 256x128$/],
    ['strength without image', { strength: 0.5 }, 'E_ARGUMENT', /^strength must be left out without an image \(it applies to image to image: pass an image too\)$/],
    ['strength 0', { image, strength: 0 }, 'E_ARGUMENT', /^strength must be a finite number in \(0, 1\], got 0$/],
    ['strength too small', { image, strength: 0.2 }, 'E_ARGUMENT', /^strength must be at least 0.250 with 4 steps \(int\(steps·strength\) = 0 leaves no denoising step\), or more steps, got 0.2$/],
  ];
  const before = engine.programCount;
  for (const [name, o, code, message] of cases)
    await t.rejects(engine.generate(o === null ? (null as never) : { ...base, ...o }), { code, message }, name);
  t.equal(engine.programCount, before, 'refused before any program was built');
});
