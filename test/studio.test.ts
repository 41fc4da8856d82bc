// The studio page in a real browser: Debian's chromium (/usr/bin/chromium; .ci/run installs it)
// driven by playwright-core, against `idforge serve` child processes on the tiny models, in-process
// and over Redis with a token. A person's whole job — a photo, an identity, a picture — plus a photo
// without a face, SeFi-IDE learning, renaming, downloading (the file loads with Identity.load) and
// deleting; no page error and no console error anywhere. IDFORGE_STUDIO_SCREENSHOT=1 writes the
// README's docs/studio.png from the first flow.
import t from 'tap';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { Identity } from '../lib/identity/identity.js';
import { TINY_ID, TINY_SD, fixture } from './helpers/fixtures.js';
import { cli, hasRedis, redis, root, serveCli, stop, type Child } from './helpers/serve.js';

const CHROMIUM = process.env.IDFORGE_CHROMIUM ?? '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  // CI installs it (.ci/run): there, a missing browser is a failure, not a skip.
  if (process.env.CI) t.fail(`${CHROMIUM} is missing: .ci/run installs Debian's chromium`);
  else t.plan(0, `${CHROMIUM} not installed (apt-get install chromium; .ci/run installs it)`);
  process.exit(process.env.CI ? 1 : 0);
}

const t0 = Date.now();
const dir = mkdtempSync(path.join(os.tmpdir(), 'idforge-studio-'));
const children: Child[] = [];
const { chromium } = await import('playwright-core');
const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu'] });
t.teardown(async () => {
  await browser.close();
  for (const c of children) await stop(c, 'SIGKILL');
  rmSync(dir, { recursive: true, force: true });
  t.comment(`studio: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});

/** A page that records every page error, console error or warning, and every URL it requests. */
async function open(base: string, width = 1280): Promise<{ page: Page; problems: string[]; urls: string[] }> {
  const page = await browser.newPage({ viewport: { width, height: 900 }, acceptDownloads: true });
  const problems: string[] = [];
  const urls: string[] = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('request', (r) => urls.push(r.url()));
  // Every text the progress line shows, so that a step seen only for a moment is still seen.
  await page.addInitScript(() => {
    (window as unknown as { progressTexts: string[] }).progressTexts = [];
    new MutationObserver(() => {
      for (const id of ['gen-text', 'learn-text']) {
        const el = document.getElementById(id);
        const list = (window as unknown as { progressTexts: string[] }).progressTexts;
        if (el?.textContent && el.offsetParent !== null && list.at(-1) !== el.textContent) list.push(el.textContent);
      }
    }).observe(document, { subtree: true, childList: true, characterData: true });
  });
  await page.goto(base);
  return { page, problems, urls };
}

/** An image's natural width once it has loaded. */
const loadedWidth = (img: ReturnType<Page['getByTestId']>) => img.evaluate(async (i) => {
  await (i as HTMLImageElement).decode();
  return (i as HTMLImageElement).naturalWidth;
});

/** Drags a box over the left half of the region frame (from inside its rounded corner); returns the frame's box. */
async function dragLeftHalf(page: Page): Promise<{ x: number; y: number; width: number; height: number }> {
  const canvas = page.getByTestId('region-canvas');
  await canvas.scrollIntoViewIfNeeded();
  const frame = (await canvas.boundingBox())!;
  await page.mouse.move(frame.x + 4, frame.y + 4);
  await page.mouse.down();
  await page.mouse.move(frame.x + frame.width / 2, frame.y + frame.height - 4, { steps: 4 });
  await page.mouse.up();
  return frame;
}

async function generate(page: Page, prompt: string, steps: number): Promise<void> {
  await page.getByTestId('prompt').fill(prompt);
  const adv = page.locator('details.advanced');
  if (!(await adv.evaluate((d) => (d as HTMLDetailsElement).open))) await adv.locator('summary').click();
  await page.selectOption('#width', '128');
  await page.selectOption('#height', '128');
  await page.fill('#steps', String(steps));
  await page.getByTestId('generate').click();
}

t.test('in-process server: photo → identity → picture, and the rest of the page', async (t) => {
  // With a LoRA to pick and live previews (the tiny autoencoder).
  mkdirSync(path.join(dir, 'loras'));
  cpSync(fixture('tiny-lora/kohya.safetensors'), path.join(dir, 'loras', 'style.safetensors'));
  const { child, base } = await serveCli(['--model', TINY_SD, '--encoder', TINY_ID, '--identities', path.join(dir, 'local'), '--max-size', '256',
    '--loras', path.join(dir, 'loras'), '--preview-vae', fixture('tiny-taesd')]);
  children.push(child);
  const { page, problems } = await open(base);

  // A photo without a face: a clear message, and nothing to create from it.
  await page.getByTestId('photo-input').setInputFiles(fixture('faces/chelsea.jpg'));
  await t.resolves(page.getByRole('alert').filter({ hasText: 'No face found in this photo' }).waitFor(), 'no-face message shown');
  t.ok(await page.getByTestId('create-identity').isDisabled(), 'create is disabled for a photo without a face');

  // The face photo: its face box is drawn over it.
  await page.getByTestId('photo-input').setInputFiles(fixture('faces/astronaut.jpg'));
  await page.getByTestId('face-box').first().waitFor();
  const box = await page.getByTestId('face-box').first().boundingBox();
  const photo = await page.locator('.photo.chosen img').boundingBox();
  t.ok(box && photo && box.width > 0.1 * photo.width && box.width < 0.8 * photo.width, `face box inside the photo (${box?.width} of ${photo?.width} px)`);

  // DreamIdentity: instant.
  await page.getByTestId('method').selectOption('dreamidentity');
  await page.fill('#identity-name', 'Eileen');
  await page.getByTestId('create-identity').click();
  await page.getByTestId('identity-item').filter({ hasText: 'Eileen' }).waitFor();
  t.match(await page.getByTestId('prompt').inputValue(), /<id>/, 'the prompt names the selected identity');

  // Generate, with the progress seen while the job runs.
  await generate(page, 'a photo of <id> as an astronaut, portrait', 12);
  await page.getByTestId('progress').waitFor();
  const img = page.getByTestId('result-image').first();
  await img.waitFor({ timeout: 60_000 });
  const texts = await page.evaluate(() => (window as unknown as { progressTexts: string[] }).progressTexts);
  t.ok(texts.some((x) => /^Step ([1-9]|1[01]) of 12/.test(x)), `a step before the last was shown (${JSON.stringify(texts.slice(0, 4))}…)`);
  t.equal(await loadedWidth(img), 128, 'the picture is 128 px wide');
  const preview = page.locator('#gen-preview');
  t.ok(await preview.isVisible() && (await preview.getAttribute('src'))?.startsWith('data:image/jpeg;base64,'), 'the live preview is shown');
  t.ok(await preview.evaluate(async (i) => (await (i as HTMLImageElement).decode(), (i as HTMLImageElement).naturalWidth > 0)), 'and decodes');
  await page.locator('#server-info').filter({ hasText: 'live previews' }).waitFor();
  const heat = page.getByTestId('attention-image').first();
  t.equal(await loadedWidth(heat), 128, 'the heatmap of where the identity attends is beside it');
  t.equal(await heat.getAttribute('alt'), 'Where Eileen attends (heatmap over the picture)');
  const meta = await page.locator('.result .meta').first().textContent();
  const seed = /seed (\d+)/.exec(meta ?? '')?.[1];
  t.ok(seed, `settings shown: ${meta}`);
  await page.getByRole('button', { name: 'Use this seed' }).first().click();
  t.equal(await page.inputValue('#seed'), seed, '"use this seed" fills the seed');
  await t.resolves(page.getByTestId('similarity').filter({ hasText: /ID similarity: (no face found|[0-9.]+)/ }).waitFor(), 'the ID similarity is measured');

  // Where the person goes: a box dragged on the frame (the left half) goes with the request as
  // regions, keyed by the identity's name; "Clear" takes it away again.
  const frame = await dragLeftHalf(page);
  t.ok(Math.abs(frame.width / frame.height - 1) < 0.02, `the frame has the picture's 128x128 shape (${frame.width}x${frame.height})`);
  // And a LoRA picked, at half strength.
  await page.getByLabel('style', { exact: true }).check();
  await page.getByLabel('Strength of style').fill('0.5');
  const sent = page.waitForRequest((r) => r.url().endsWith('/generate') && r.method() === 'POST');
  await generate(page, 'a photo of <id> as an astronaut, portrait', 2);
  const { regions, loras } = (await sent).postDataJSON();
  t.same(loras, [{ name: 'style', scale: 0.5 }], 'the picked LoRA goes with the request');
  await page.getByLabel('style', { exact: true }).uncheck();
  const near = (a: number[], b: number[]) => a.length === 4 && a.every((v, i) => Math.abs(v - b[i]!) < 0.03);
  t.ok(regions && near(regions.Eileen, [0, 0, 0.5, 1]), `regions sent: ${JSON.stringify(regions)}`);
  await page.getByTestId('result-image').nth(1).waitFor({ timeout: 60_000 });
  await page.getByRole('button', { name: 'Clear the box of Eileen' }).click();
  t.equal(await page.getByTestId('region-box').count(), 0, '"Clear" takes the box away');

  // Several people: a second identity; both added to the prompt as <id:name>, a box each (Eileen's
  // dragged, Bob's typed as four edges: the keyboard's way), sent as identities and regions; a heatmap each.
  await page.fill('#identity-name', 'Bob');
  await page.getByTestId('create-identity').click();
  await page.getByTestId('identity-item').filter({ hasText: 'Bob' }).waitFor();
  await page.getByTestId('prompt').fill('a photo of');
  await page.getByRole('button', { name: 'Add Eileen to the prompt' }).click();
  await page.getByTestId('prompt').press('End');
  await page.getByTestId('prompt').pressSequentially(' and ');
  await page.getByRole('button', { name: 'Add Bob to the prompt' }).click();
  const two = 'a photo of <id:eileen> and <id:bob>';
  t.equal(await page.getByTestId('prompt').inputValue(), two, '"Add to prompt" writes <id:name>');
  t.equal(await page.getByTestId('region-row').count(), 2, 'a box row per person');
  await dragLeftHalf(page);
  const type = async (edge: string, v: string) => {
    const input = page.getByLabel(`Bob: ${edge} edge`);
    await input.fill(v);
    await input.press('Tab');
  };
  for (const [edge, v] of [['top', '0'], ['right', '100'], ['bottom', '100'], ['left', '100']]) await type(edge!, v!);
  t.equal(await page.getByLabel('Bob: left edge').getAttribute('aria-invalid'), 'true', 'a box with left = right is marked');
  await page.getByTestId('generate').click();
  await t.resolves(page.locator('#notice').filter({ hasText: 'The box of Bob is not one' }).waitFor(), 'and Generate says what to fix');
  await type('left', '50');
  t.same(await page.getByTestId('region-box').evaluateAll((boxes) => boxes.map((b) => (b as HTMLElement).dataset.name)), ['eileen', 'bob'], 'both boxes drawn on the frame');
  const sentTwo = page.waitForRequest((r) => r.url().endsWith('/generate') && r.method() === 'POST');
  await generate(page, two, 2);
  const body = (await sentTwo).postDataJSON();
  const ids = Object.fromEntries(await Promise.all(['Eileen', 'Bob'].map(async (n) => [n.toLowerCase(), await page.getByTestId('identity-item').filter({ hasText: n }).getAttribute('data-id')])));
  t.same(body.identities, ids, `identities sent: ${JSON.stringify(body.identities)}`);
  t.ok(near(body.regions.eileen, [0, 0, 0.5, 1]) && near(body.regions.bob, [0.5, 0, 1, 1]), `regions sent: ${JSON.stringify(body.regions)}`);
  await page.getByTestId('result-image').nth(2).waitFor({ timeout: 60_000 });
  const heatmaps = page.locator('.result').first().getByTestId('attention-image');
  t.same(await heatmaps.evaluateAll((imgs) => imgs.map((i) => (i as HTMLImageElement).alt)),
    ['Where Eileen attends (heatmap over the picture)', 'Where Bob attends (heatmap over the picture)'], 'a heatmap per person');
  if (process.env.IDFORGE_STUDIO_SCREENSHOT) await page.screenshot({ path: path.join(root, 'docs/studio.png'), fullPage: true });

  // Rename, then download: the file is the identity, renamed.
  const item = page.getByTestId('identity-item').filter({ hasText: 'Eileen' });
  await item.getByRole('button', { name: /^Rename/ }).click();
  await page.keyboard.press('ControlOrMeta+A');
  await page.keyboard.type('Commander Collins');
  await page.keyboard.press('Enter');
  const renamed = page.getByTestId('identity-item').filter({ hasText: 'Commander Collins' });
  await renamed.waitFor();
  const [download] = await Promise.all([page.waitForEvent('download'), renamed.getByRole('button', { name: /^Download/ }).click()]);
  const file = path.join(dir, 'downloaded.safetensors');
  await download.saveAs(file);
  t.match(await page.getByTestId('prompt').inputValue(), /^a photo of <id:commander-collins> and <id:bob>/, 'the prompt follows the new name');
  const id = Identity.load(file);
  t.same([id.method, id.name, id.stages, id.words, id.dim], ['dreamidentity', 'Commander Collins', 1, 4, 32], 'the downloaded file loads with Identity.load');

  // SeFi-IDE: a learning job with its progress.
  await page.getByTestId('method').selectOption('sefi-ide');
  await page.fill('#identity-name', 'Learned');
  await page.fill('#learn-steps', '4');
  await page.getByTestId('create-identity').click();
  await page.getByTestId('identity-item').filter({ hasText: 'Learned' }).waitFor({ timeout: 60_000 });
  t.match(await page.getByTestId('identity-item').filter({ hasText: 'Learned' }).textContent(), /SeFi-IDE · 5×1 words/);
  const learnTexts = await page.evaluate(() => (window as unknown as { progressTexts: string[] }).progressTexts);
  t.ok(learnTexts.some((x) => /^Learning: step [1-4] of 4 · loss \d/.test(x)), `learning progress with its loss shown (${JSON.stringify(learnTexts.filter((x) => x.startsWith('Learn')))})`);
  t.ok(await page.locator('#loss-chart').isVisible(), 'the loss is drawn');

  // Delete (after the confirmation).
  page.once('dialog', (d) => void d.accept());
  await renamed.getByRole('button', { name: /^Delete/ }).click();
  await renamed.waitFor({ state: 'detached' });
  t.equal(await page.getByTestId('identity-item').count(), 2, 'two identities left');

  // Phone width: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  t.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 390), 'no horizontal scrolling at 390 px');
  t.same(problems, [], 'no page or console errors');
  await page.close();
});

t.test('Redis server with --token: asked once, sent as a header, never in a URL', { skip: hasRedis ? false : 'redis-server not installed (.ci/run installs it)' }, async (t) => {
  const r = await redis();
  t.teardown(() => r.stop());
  const queue = `idforge-studio-${process.pid}`;
  const secret = 'studio-secret-token-42';
  const w = cli(['worker', '--redis', r.url, '--model', TINY_SD, '--device', 'cpu', '--queue', queue]);
  children.push(w);
  await w.waitFor(/idforge worker ready/);
  const { child, base } = await serveCli(['--redis', r.url, '--queue', queue, '--encoder', TINY_ID, '--identities', path.join(dir, 'redis'), '--max-size', '256', '--token', secret]);
  children.push(child);
  const { page, problems, urls } = await open(base);

  // The page itself is public; its first call asks for the token.
  const dialog = page.getByRole('dialog', { name: 'Access token' });
  await dialog.waitFor();
  await page.fill('#token-input', 'wrong');
  await page.keyboard.press('Enter');
  await t.resolves(page.locator('#notice').filter({ hasText: 'needs an access token' }).waitFor(), 'a refused token is said');
  await page.getByRole('button', { name: 'Access token' }).click();
  await page.fill('#token-input', secret);
  await page.keyboard.press('Enter');
  await page.locator('#server-info').filter({ hasText: 'Redis workers' }).waitFor();

  await page.getByTestId('photo-input').setInputFiles(fixture('faces/astronaut.jpg'));
  await page.getByTestId('face-box').first().waitFor();
  await page.fill('#identity-name', 'Eileen');
  await page.getByTestId('create-identity').click();
  await page.getByTestId('identity-item').first().waitFor();
  await generate(page, 'a photo of <id>, oil painting', 4);
  await page.getByTestId('result-image').first().waitFor({ timeout: 60_000 });
  t.equal(await loadedWidth(page.getByTestId('result-image').first()), 128, 'the picture came back through the header-carrying fetch');
  t.equal(await loadedWidth(page.getByTestId('attention-image').first()), 128, 'and its heatmap, made by the worker');
  t.equal(await page.evaluate(() => sessionStorage.getItem('idforge.token')), secret, 'the token is kept in sessionStorage');
  t.same(urls.filter((u) => u.includes(secret)), [], 'no URL carries the token');

  // A reload asks nothing: the tab keeps the token.
  await page.reload();
  await page.getByTestId('identity-item').first().waitFor();
  t.notOk(await dialog.isVisible(), 'no second question after a reload');
  t.same(problems.filter((p) => !/401 \(Unauthorized\)/.test(p)), [], 'no page or console errors (the two 401s of the token exchange aside)');
  await page.close();
});

