// The identity job on the command line, each case a real child process of the compiled CLI:
// `identity encode|learn|show`, `generate --identity/--identity-scale/--attention-map`, every flag
// checked before a model loads (the model path does not exist in those cases, so an error about
// the flag proves that nothing was loaded first), one error line with its code, Ctrl-C in learning.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateCmd } from '../lib/cli/generate.js';
import { identityCmd } from '../lib/cli/identity.js';
import type { IdforgeError } from '../lib/errors.js';
import { IdEncoder } from '../lib/dreamidentity/encoder.js';
import { Identity } from '../lib/identity/identity.js';
import { loadImage } from '../lib/io/image.js';
import { TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';
import { compiledCli, root } from './helpers/serve.js';

const cli = compiledCli();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-cli-id-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
const FACE = fixture('faces/astronaut.jpg');
const t0 = Date.now();
t.teardown(() => t.comment(`cli-identity: ${((Date.now() - t0) / 1000).toFixed(1)} s`));

function idforge(...args: string[]): { status: number | null; stdout: string; stderr: string; lines: string[] } {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: tmp, encoding: 'utf8', timeout: 120_000, env: { ...process.env, NODE_OPTIONS: '' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, lines: r.stderr.split(/[\r\n]/).filter((l) => l.trim() !== '' && !l.startsWith('[')) };
}
const out = (name: string) => path.join(tmp, name);

// The checks run in this process (a child costs 1-2 s on a busy 2-core machine): each case names a
// model path that does not exist, so the flag's error, not E_NOT_FOUND for the model, proves that
// it was checked before loading. The process-level contract (one line, the code, the exit status)
// is checked on a few children below.
t.test('every flag is checked before a model loads', async (t) => {
  const junk = out('junk.safetensors');
  fs.writeFileSync(junk, 'not a safetensors file');
  const gen = ['generate', '--model', '/does/not/exist'];
  const enc = ['encode', '--encoder', '/does/not/exist', '--photo', FACE];
  const learn = ['learn', '--model', '/does/not/exist', '--photo', FACE, '--out', out('a.safetensors')];
  const idFile = out('tiny-id.safetensors');
  new Identity({ k: new Float32Array(32).fill(0.01), words: 1, dim: 32, method: 'custom' }).save(idFile);
  const two = ['--prompt', '<id:ann> and <id:bob>', '--identity', `ann=${idFile}`, '--identity', `bob=${idFile}`];
  const cases: [string[], string, RegExp][] = [
    [['forge'], 'E_ARGUMENT', /^unknown identity command 'forge'/],
    [[...gen], 'E_ARGUMENT', /^generate needs --prompt/],
    [['generate', '--prompt', 'x'], 'E_ARGUMENT', /^generate needs --model/],
    [[...gen, '--prompt', 'x', '--steps', '0'], 'E_ARGUMENT', /^steps must be an integer in \[1, 1000\], got 0$/],
    [[...gen, '--prompt', 'x', '--width', '100'], 'E_SHAPE', /^width must be a multiple of 64 .*nearest valid: 64 or 128.*got 100$/],
    [[...gen, '--prompt', 'x', '--steps', 'many'], 'E_ARGUMENT', /^--steps must be a number, got "many"$/],
    [[...gen, '--prompt', 'x', '--steps', '2', '--steps', '3'], 'E_ARGUMENT', /^--steps was given 2 times; it takes one value$/],
    [[...gen, '--prompt', 'x', '--sampler', 'plms'], 'E_ARGUMENT', /plms/],
    [[...gen, '--prompt', 'x', '--guidance', '-1'], 'E_ARGUMENT', /^guidanceScale must be a finite number in \[0, \d+\], got -1$/],
    [[...gen, '--prompt', 'a photo of <id>'], 'E_IDENTITY', /^the prompt has <id> but no identity was given/],
    [[...gen, '--prompt', 'x', '--identity-scale', '2'], 'E_ARGUMENT', /^--identity-scale sets the strength of an identity: pass --identity too$/],
    [[...gen, '--prompt', 'x', '--attention-map', 'a.png'], 'E_ARGUMENT', /^--attention-map shows where an identity attends: pass --identity too$/],
    [[...gen, '--prompt', '<id>', '--identity', out('none.safetensors')], 'E_NOT_FOUND', /none\.safetensors/],
    [[...gen, '--prompt', '<id>', '--identity', junk], 'E_MODEL_FORMAT', /junk\.safetensors/],
    [[...gen, '--prompt', '<id>', '--identity', junk, '--identity', junk], 'E_ARGUMENT', /^--identity needs NAME=FILE when several identities are given/],
    [[...gen, '--prompt', 'x', '--image', out('none.png')], 'E_NOT_FOUND', /^image not found: /],
    [[...gen, '--prompt', 'x', '--image', FACE, '--strength', '0'], 'E_ARGUMENT', /^strength must be .*\(0, 1\], got 0$/],
    [[...gen, '--prompt', 'x', '--image', fixture('faces/grace_hopper.jpg')], 'E_SHAPE', /^--image .*is 512x600, not a multiple of 64 a side; pass --width and --height to resize it$/],
    [[...gen, '--prompt', 'x', '--out', out('x.bmp')], 'E_ARGUMENT', /unknown image format '\.bmp'/],
    [['encode', '--photo', FACE, '--out', out('a.safetensors')], 'E_ARGUMENT', /^identity encode needs --encoder/],
    [[...enc, '--out', out('a.id')], 'E_ARGUMENT', /^--out must name a \.safetensors file/],
    [[...enc], 'E_ARGUMENT', /^identity encode needs --out/],
    [['encode', '--encoder', '/does/not/exist', '--photo', out('none.jpg'), '--out', out('a.safetensors')], 'E_NOT_FOUND', /^image not found/],
    [[...enc, '--out', out('a.safetensors'), '--face-index', '-1'], 'E_ARGUMENT', /^--face-index must be ≥ 0/],
    [[...enc, '--out', out('a.safetensors'), '--device', 'tpu'], 'E_ARGUMENT', /device must be 'auto', 'cpu' or 'cuda'/],
    [[...learn, '--steps', '0'], 'E_ARGUMENT', /^learnIdentity: steps must be an integer/],
    [[...learn, '--lr', '0'], 'E_ARGUMENT', /^learnIdentity: lr must be a finite number > 0/],
    [[...learn, '--photo', FACE], 'E_ARGUMENT', /^--photo was given 2 times/],
    [[...learn, '--dtype', 'float16'], 'E_ARGUMENT', /^--dtype float16: learning needs float32/],
    [['show'], 'E_ARGUMENT', /^identity show takes one identity file, got 0/],
    [['show', junk], 'E_MODEL_FORMAT', /junk\.safetensors/],
    [[...gen, '--prompt', 'x', '--region', 'ann=0,0,0.5'], 'E_ARGUMENT', /^--region takes NAME=x0,y0,x1,y1 \(fractions of the image, e\.g\. ann=0,0,0\.5,1\), got 'ann=0,0,0\.5'$/],
    [[...gen, '--prompt', 'x', '--region', '0,0,1,1'], 'E_ARGUMENT', /^--region takes NAME=x0,y0,x1,y1/],
    [[...gen, '--prompt', 'x', '--region', 'ann=0,0,1,1'], 'E_ARGUMENT', /^--region keeps an identity inside a box: pass --identity too$/],
    [[...gen, ...two, '--region', 'ann=0,0,1,1', '--region', 'ann=0,0,0.5,1'], 'E_ARGUMENT', /^--region gives 'ann' two boxes$/],
    [[...gen, ...two, '--region', 'ann=0,0,1.5,1'], 'E_ARGUMENT', /^regions\.ann\[2\] must be a finite number in \[0, 1\], got 1\.5$/],
    [[...gen, ...two, '--region', 'ann=0.5,0,0.5,1'], 'E_ARGUMENT', /^regions\.ann must be a box with x0 < x1 and y0 < y1/],
    [[...gen, ...two, '--region', 'dan=0,0,1,1'], 'E_ARGUMENT', /^regions\.dan must be the box of an identity in the prompt \(ann, bob\), got no <id:dan> in the prompt$/],
  ];
  for (const [args, code, re] of cases) {
    const run = args[0] === 'generate' ? generateCmd(args.slice(1)) : identityCmd(args);
    const e = await run.then(() => undefined, (err: unknown) => err as IdforgeError);
    t.match(e, { code, message: re }, args.join(' '));
  }
});

t.test('a failing command prints one line with its code and exits with its status', async (t) => {
  const cases: [string[], number, RegExp][] = [
    [['frobnicate'], 2, /^idforge: E_ARGUMENT: unknown command 'frobnicate' \(commands: generate, identity,/],
    [['identity'], 2, /^idforge: E_ARGUMENT: identity needs a command: encode, learn or show/],
    [['generate', '--model', '/does/not/exist', '--prompt', 'x', '--width', '100'], 1, /^idforge: E_SHAPE: width must be a multiple of 64/],
    [['generate', '--model', '/does/not/exist', '--prompt', 'x', '--bogus'], 2, /^idforge: E_ARGUMENT: Unknown option '--bogus'/],
  ];
  for (const [args, status, re] of cases) {
    const r = idforge(...args);
    t.equal(r.status, status, `${args.join(' ')}: exit ${status}`);
    t.equal(r.lines.length, 1, `${args.join(' ')}: one line (${JSON.stringify(r.lines)})`);
    t.match(r.lines[0], re);
  }
});

t.test('--version and --help', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  const v = idforge('--version');
  t.equal(v.status, 0);
  t.equal(v.stdout, `idforge ${pkg.version}\n`);
  const h = idforge('generate', '--help');
  t.equal(h.status, 0);
  for (const flag of ['--identity FILE|NAME=FILE', '--identity-scale X', '--attention-map FILE', '--region NAME=X0,Y0,X1,Y1', '--image FILE']) t.match(h.stdout, flag);
  t.match(idforge('identity', '--help').stdout, /identity encode --encoder DIR --photo FILE --out ID\.safetensors/);
});

// `npm run demo` is the identity job in two commands (encode, then generate with --identity and
// --attention-map): its files are checked here, then used by the cases that follow.
t.test('npm run demo: encode → generate with the identity; show; identity strength; two identities', async (t) => {
  const r = spawnSync(process.execPath, [path.join(root, 'scripts/demo.mjs')], { cwd: tmp, encoding: 'utf8', timeout: 120_000, env: { ...process.env, NODE_OPTIONS: '' } });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /\$ idforge identity encode .*astronaut\.jpg/);
  t.match(r.stdout, /\$ idforge generate .*--identity demo-identity\.safetensors/);
  t.match(r.stdout, /demo\.png is coloured noise, and that is right/);
  t.match(r.stderr, /wrote demo\.png, demo-attention\.png \(128x128, seed 42, cpu float32\)/);
  const id = out('demo-identity.safetensors');
  // The file holds what the library's encoder makes of the same photo.
  const encoder = await IdEncoder.load(TINY_ID, { device: 'cpu' });
  const want = await encoder.encode(FACE);
  encoder.dispose();
  const got = Identity.load(id);
  t.same([got.method, got.stages, got.words], ['dreamidentity', 1, 4]);
  t.ok(Buffer.from(got.kData.buffer).equals(Buffer.from(want.kData.buffer)), 'the file equals IdEncoder.encode of the photo');
  const [img, att] = await Promise.all([loadImage(out('demo.png')), loadImage(out('demo-attention.png'))]);
  t.same([img.width, img.height, att.width, att.height], [128, 128, 128, 128]);
  t.notSame(Buffer.from(att.data), Buffer.from(img.data), 'the heatmap is drawn over the image');

  const s = idforge('identity', 'show', id);
  t.equal(s.status, 0, s.stderr);
  for (const re of [/method +DreamIdentity/, /1 stage\(s\) × 4 word\(s\) × 32/, /photo +astronaut\.jpg/, /size +1\.\d KiB/]) t.match(s.stdout, re);

  // Strength 0 is a generic person: another picture than the demo's (same seed and settings).
  const args = ['generate', '--model', TINY_SD, '--identity', id, '--prompt', 'a photo of <id>, oil painting', '--steps', '10', '--width', '128', '--height', '128', '--seed', '42'];
  t.equal(idforge(...args, '--identity-scale', '0', '--out', out('generic.png')).status, 0);
  t.notSame(Buffer.from((await loadImage(out('generic.png'))).data), Buffer.from(img.data), 'identity-scale 0 differs from 1');
  // Two named identities: one heatmap each; --region keeps ann on the left half, where her heatmap
  // is: on the right, heat 0 leaves the image at (1 − 0.55) of itself (attentionHeatmap's blend).
  const two = idforge('generate', '--model', TINY_SD, '--identity', `ann=${id}`, '--identity', `bob=${id}`, '--prompt', '<id:ann> and <id:bob>',
    '--steps', '1', '--width', '128', '--height', '64', '--region', 'ann=0,0,0.5,1', '--attention-map', out('pair.png'), '--out', out('pair-img.png'));
  t.equal(two.status, 0, two.stderr);
  t.ok(fs.existsSync(out('pair-ann.png')) && fs.existsSync(out('pair-bob.png')), 'pair-ann.png and pair-bob.png');
  const [pi, pa] = await Promise.all([loadImage(out('pair-img.png')), loadImage(out('pair-ann.png'))]);
  const unheated = (x0: number, x1: number) => {
    let off = 0;
    for (let y = 0; y < pi.height; y++)
      for (let x = Math.floor(x0 * pi.width); x < x1 * pi.width; x++)
        for (let c = 0; c < 3; c++) off = Math.max(off, Math.abs(pa.data[(y * pi.width + x) * 3 + c]! - Math.round(0.45 * pi.data[(y * pi.width + x) * 3 + c]!)));
    return off <= 1;
  };
  t.ok(unheated(0.875, 1) && !unheated(0, 0.125), '--region ann=0,0,0.5,1: no heat on the right eighth of pair-ann.png, heat on the left');
  t.match(JSON.parse(idforge('identity', 'show', id, '--json').stdout), { method: 'dreamidentity', photo: 'astronaut.jpg', words: 4, dim: 32 });
});

t.test('a photo without a face is E_NO_FACE in one line', async (t) => {
  const r = idforge('identity', 'encode', '--encoder', TINY_ID, '--photo', fixture('faces/chelsea.jpg'), '--out', out('cat.safetensors'));
  t.equal(r.status, 1);
  t.equal(r.lines.length, 1, JSON.stringify(r.lines));
  t.match(r.lines[0], /^idforge: E_NO_FACE: no face found in .*chelsea\.jpg \(.*pass --centre/);
  t.notOk(fs.existsSync(out('cat.safetensors')));
});

t.test('--image with --width/--height is resized to cover that size', async (t) => {
  const r = idforge('generate', '--model', TINY_SD, '--prompt', 'a portrait', '--image', fixture('faces/grace_hopper.jpg'), '--width', '128', '--height', '64', '--steps', '2', '--out', out('i2i.png'));
  t.equal(r.status, 0, r.stderr);
  const img = await loadImage(out('i2i.png'));
  t.same([img.width, img.height], [128, 64]);
  // One side given: the other keeps the photo's aspect (512x600 → 128 x 150 → 128, the nearest multiple of 64).
  t.equal(idforge('generate', '--model', TINY_SD, '--prompt', 'a portrait', '--image', fixture('faces/grace_hopper.jpg'), '--height', '192', '--steps', '2', '--out', out('i2i-h.png')).status, 0);
  const h = await loadImage(out('i2i-h.png'));
  t.same([h.width, h.height], [192, 192]);
});

t.test('learn writes a SeFi-IDE identity; Ctrl-C keeps what was learned and the same command continues', async (t) => {
  const id = out('learned.safetensors');
  const r = idforge('identity', 'learn', '--model', TINY_SD, '--photo', FACE, '--steps', '3', '--seed', '1', '--out', id);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stderr, /learning 3\/3 +loss \d+\.\d+ .*ETA/);
  t.match(r.stderr, /checkpoint .*learned\.checkpoint/);
  const got = Identity.load(id);
  t.same([got.method, got.stages, got.words, got.kvShared], ['sefi-ide', 5, 1, false]);

  const stopped = out('stopped.safetensors');
  const args = ['identity', 'learn', '--model', TINY_SD, '--photo', FACE, '--seed', '2', '--out', stopped];
  const child = spawn(process.execPath, [cli, ...args, '--steps', '100000'], { env: { ...process.env, NODE_OPTIONS: '' } });
  let stderr = '';
  let sent = 0;
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (!sent && /learning 2\//.test(stderr)) {
      sent = Date.now();
      child.kill('SIGINT');
    }
  });
  const kill = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const status = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  clearTimeout(kill);
  t.ok(sent > 0, 'learning reported progress');
  t.equal(status, 130, 'exit 130');
  const m = /idforge: E_ABORTED: stopped after step (\d+) of 100000: the identity learned so far is in .*stopped\.safetensors; the same command continues/.exec(stderr);
  t.ok(m, `the stop says what was kept (${stderr.split('\n').at(-2)})`);
  t.ok(Date.now() - sent < 5000, `exited ${Date.now() - sent} ms after SIGINT`);
  t.same(Identity.load(stopped).method, 'sefi-ide', 'the partial identity loads');
  // The same command continues from the step it stopped at.
  const done = Number(m?.[1] ?? 2);
  const again = idforge(...args, '--steps', String(done + 2));
  t.equal(again.status, 0, again.stderr);
  t.match(again.stderr, new RegExp(`learning ${done + 1}/${done + 2} `), `continues at step ${done + 1}`);
  t.notMatch(again.stderr, /learning 1\//, 'does not start over');
  t.match(again.stderr, new RegExp(`continued from step ${done}`));
});
