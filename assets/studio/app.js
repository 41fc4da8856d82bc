// The studio page: a face photo → an identity (DreamIdentity at once, or a SeFi-IDE learning job)
// → pictures of that person with live progress, each with its settings, the attention heatmap of
// the identity and, when the server has the face models, the ID similarity to the photo.
// Plain ES modules, no build step; every request goes to the server that served the page.
import { ApiError, api, blobUrl, followJob, onTokenNeeded, photoPayload, token } from './api.js';
import { regionEditor } from './regions.js';
import { identityItem, resultCard } from './views.js';

const $ = (id) => document.getElementById(id);
const state = {
  config: null,
  photos: [], // { id, name, payload, faces, error, status }
  photo: null, // the chosen photo's id
  identities: [],
  selected: null, // identity id
  references: new Map(), // identity id → the photo's data: URL (this tab only)
  busy: false,
};

const STYLES = [
  { name: 'None', prompt: '', negative: '' },
  { name: 'Photo', prompt: ', professional photo, natural light, 85mm, sharp focus', negative: 'painting, drawing, cartoon' },
  { name: 'Cinematic', prompt: ', cinematic still, dramatic lighting, film grain', negative: 'cartoon, flat lighting' },
  { name: 'Oil painting', prompt: ', oil painting, visible brush strokes, classical portrait', negative: 'photo, 3d render' },
  { name: 'Watercolour', prompt: ', watercolour illustration, soft washes, paper texture', negative: 'photo, 3d render' },
  { name: 'Comic', prompt: ', comic book art, bold ink lines, flat colours', negative: 'photo, blurry' },
  { name: '3D', prompt: ', 3d render, soft studio lighting, octane', negative: 'photo, sketch' },
];
let style = STYLES[0];

function notify(message, kind = 'info') {
  const n = $('notice');
  n.textContent = message;
  n.className = `notice ${kind}`;
  n.hidden = !message;
}

/** A failure in words for a person (the server's own message, which names what to do). */
function explain(e) {
  if (e instanceof ApiError) {
    if (e.code === 'E_NO_FACE') return 'No face was found in that photo. Use a photo where one face is clearly visible, facing the camera.';
    if (e.code === 'E_UNAUTHORIZED') return 'This server needs an access token (button at the top right).';
    return `${e.message} (${e.code})`;
  }
  return e?.message ?? String(e);
}

// ---- token

function askForToken(reason) {
  const dialog = $('token-dialog');
  $('token-error').hidden = !reason;
  $('token-error').textContent = reason;
  $('token-input').value = '';
  dialog.showModal();
  $('token-input').focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok' ? $('token-input').value.trim() || null : null), { once: true });
  });
}

// ---- photos

async function addPhotos(files) {
  for (const file of files) {
    if (!/^image\/(jpeg|png|webp)$/.test(file.type)) {
      notify(`${file.name} is not a JPEG, PNG or WebP picture.`, 'error');
      continue;
    }
    const p = { id: crypto.randomUUID(), name: file.name, payload: null, faces: null, error: null, status: 'reading…' };
    state.photos.push(p);
    state.photo = p.id;
    renderPhotos();
    try {
      p.payload = await photoPayload(file);
      p.status = state.config?.faces ? 'looking for the face…' : '';
      renderPhotos();
      if (state.config?.faces) {
        const r = await api('/studio/faces', { method: 'POST', body: { image: p.payload.base64 } });
        p.faces = r.faces;
        p.status = r.faces.length === 0 ? '' : `${r.faces.length === 1 ? 'face found' : `${r.faces.length} faces: the largest is used`}`;
        if (r.faces.length === 0) p.error = 'No face found in this photo: use one where a face is clearly visible, facing the camera.';
      }
    } catch (e) {
      p.error = explain(e);
      p.status = '';
    }
    renderPhotos();
  }
  updateCreate();
}

function renderPhotos() {
  const ul = $('photos');
  ul.replaceChildren(...state.photos.map((p) => {
    const li = document.createElement('li');
    li.className = `photo${p.id === state.photo ? ' chosen' : ''}${p.error ? ' bad' : ''}`;
    const figure = document.createElement('button');
    figure.type = 'button';
    figure.className = 'photo-pick';
    figure.setAttribute('aria-pressed', String(p.id === state.photo));
    figure.setAttribute('aria-label', `Use ${p.name}`);
    figure.addEventListener('click', () => {
      state.photo = p.id;
      renderPhotos();
      updateCreate();
    });
    const frame = document.createElement('span');
    frame.className = 'frame';
    if (p.payload) {
      const img = document.createElement('img');
      img.src = p.payload.dataUrl;
      img.alt = p.name;
      frame.append(img);
      for (const [i, f] of (p.faces ?? []).entries()) {
        const [x0, y0, x1, y1] = f.box;
        const box = document.createElement('span');
        box.className = `facebox${i === 0 ? '' : ' other'}`;
        box.dataset.testid = 'face-box';
        Object.assign(box.style, {
          left: `${(100 * x0) / p.payload.width}%`, top: `${(100 * y0) / p.payload.height}%`,
          width: `${(100 * (x1 - x0)) / p.payload.width}%`, height: `${(100 * (y1 - y0)) / p.payload.height}%`,
        });
        frame.append(box);
      }
    }
    figure.append(frame);
    const caption = document.createElement('span');
    caption.className = 'caption';
    caption.textContent = p.error ?? (p.status || p.name);
    if (p.error) caption.setAttribute('role', 'alert');
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'icon';
    remove.textContent = '×';
    remove.setAttribute('aria-label', `Remove ${p.name}`);
    remove.addEventListener('click', () => {
      state.photos = state.photos.filter((q) => q !== p);
      if (state.photo === p.id) state.photo = state.photos.at(-1)?.id ?? null;
      renderPhotos();
      updateCreate();
    });
    li.append(figure, caption, remove);
    return li;
  }));
}

const chosenPhoto = () => state.photos.find((p) => p.id === state.photo);

function updateCreate() {
  const p = chosenPhoto();
  const method = $('method').value;
  const ready = p?.payload && !p.error && !(method === 'dreamidentity' && !state.config?.encoder);
  $('create-identity').disabled = state.busy || !ready;
  $('learn-steps-box').hidden = method !== 'sefi-ide';
  $('method-hint').textContent = method === 'dreamidentity'
    ? (state.config?.encoder ? 'An ID encoder turns the face into words at once.' : 'This server has no ID encoder (start it with --encoder DIR): choose SeFi-IDE.')
    : 'Learns the person on this server’s model: about a minute per 100 steps on a CPU for the tiny model, ~6 minutes for 1000 steps of SD 1.5 on a GPU.';
}

// ---- identities

async function createIdentity() {
  const p = chosenPhoto();
  const method = $('method').value;
  const name = $('identity-name').value.trim();
  const body = { image: p.payload.base64, method, ...(name ? { name } : {}) };
  if (method === 'sefi-ide') body.steps = Math.max(1, Math.round(Number($('learn-steps').value) || 200));
  state.busy = true;
  updateCreate();
  notify('');
  try {
    if (method === 'dreamidentity') {
      $('create-identity').textContent = 'Encoding…';
      const info = await api('/identities', { method: 'POST', body });
      state.references.set(info.id, p.payload.dataUrl);
      await loadIdentities(info.id);
    } else {
      const sub = await api('/identities', { method: 'POST', body });
      state.references.set(sub.identity, p.payload.dataUrl);
      await learn(sub);
      await loadIdentities(sub.identity);
    }
    $('identity-name').value = '';
    $('prompt').focus();
  } catch (e) {
    notify(explain(e), 'error');
  } finally {
    state.busy = false;
    $('create-identity').textContent = 'Create identity';
    updateCreate();
  }
}

async function learn(sub) {
  const box = $('learn-job');
  const bar = $('learn-progress');
  const text = $('learn-text');
  const losses = [];
  box.hidden = false;
  $('loss-chart').toggleAttribute('hidden', true);
  bar.removeAttribute('value');
  text.textContent = 'Learning: waiting for a worker…';
  const t0 = performance.now();
  try {
    await followJob(sub.id, (event, d) => {
      if (event !== 'progress') return;
      bar.max = d.steps;
      bar.value = d.step;
      const s = (performance.now() - t0) / 1000;
      const eta = d.step > 0 ? ((d.steps - d.step) * s) / d.step : 0;
      text.textContent = `Learning: step ${d.step} of ${d.steps}${d.loss !== undefined ? ` · loss ${d.loss.toFixed(4)}` : ''} · ${Math.round(eta)} s left`;
      if (d.loss !== undefined) drawLoss(losses, d.loss);
    });
    text.textContent = `Learned in ${Math.round((performance.now() - t0) / 1000)} s.`;
  } finally {
    bar.value = bar.max;
  }
}

function drawLoss(losses, v) {
  losses.push(v);
  $('loss-chart').toggleAttribute('hidden', false);
  const lo = Math.min(...losses);
  const hi = Math.max(...losses);
  const n = Math.max(2, losses.length);
  const pts = losses.map((l, i) => `${((200 * i) / (n - 1)).toFixed(1)},${(38 - (36 * (l - lo)) / (hi - lo || 1)).toFixed(1)}`);
  $('loss-chart').querySelector('polyline').setAttribute('points', pts.join(' '));
}

async function loadIdentities(select) {
  const { identities } = await api('/identities');
  state.identities = identities.sort((a, b) => String(b.created).localeCompare(String(a.created)));
  if (select !== undefined) state.selected = select;
  if (!state.identities.some((i) => i.id === state.selected)) state.selected = state.identities[0]?.id ?? null;
  renderIdentities();
  if (select !== undefined) promptForIdentity();
  updateRegions();
}

function renderIdentities() {
  $('no-identities').hidden = state.identities.length > 0;
  $('identities').replaceChildren(...state.identities.map((info) => identityItem(info, {
    selected: info.id === state.selected,
    reference: state.references.get(info.id),
    select: () => {
      state.selected = info.id;
      renderIdentities();
      promptForIdentity();
      updateRegions();
    },
    insert: () => insertPerson(info),
    rename: async (name) => {
      try {
        const before = personName(info);
        await api(`/identities/${info.id}`, { method: 'PATCH', body: { name } });
        await loadIdentities();
        // The prompt follows the new name.
        const after = personName(state.identities.find((i) => i.id === info.id));
        if (before && after) $('prompt').value = $('prompt').value.replaceAll(`<id:${before}>`, `<id:${after}>`);
        updateRegions();
      } catch (e) {
        notify(explain(e), 'error');
      }
    },
    download: async () => {
      try {
        const url = await blobUrl(`/identities/${info.id}/file`);
        const a = Object.assign(document.createElement('a'), { href: url, download: `${(info.name || info.id).replace(/[^\w.-]+/g, '_')}.safetensors` });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60_000);
      } catch (e) {
        notify(explain(e), 'error');
      }
    },
    remove: async () => {
      if (!confirm(`Delete the identity ${info.name || info.id}? Its file is removed from the server.`)) return;
      try {
        await api(`/identities/${info.id}`, { method: 'DELETE' });
        await loadIdentities();
      } catch (e) {
        notify(explain(e), 'error');
      }
    },
  })));
}

/** Puts <id> in the prompt when an identity is selected and the prompt names nobody. */
function promptForIdentity() {
  const p = $('prompt');
  if (!state.selected || named(p.value).length) return;
  if (!p.value.trim()) p.value = 'a photo of <id>';
  else if (!p.value.includes('<id>')) p.value = `${p.value.replace(/\s+$/, '')}, <id>`;
}

function insertText(text) {
  const p = $('prompt');
  const at = p.selectionStart ?? p.value.length;
  const before = p.value.slice(0, at);
  const pad = before && !/\s$/.test(before) ? ' ' : '';
  p.value = `${before}${pad}${text}${p.value.slice(p.selectionEnd ?? at)}`;
  p.focus();
  p.selectionStart = p.selectionEnd = at + pad.length + text.length;
  updateRegions();
}

// ---- several people: <id:name> placeholders, each with an optional box

/** The names the prompt's <id:name> placeholders use, once each, in order. */
const named = (prompt) => [...new Set([...prompt.matchAll(/<id:([^<>]*)>/g)].map((m) => m[1]))];

const slug = (s) => s.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '');

/** Each identity's placeholder name: its name (or id) as one word; a clash takes the id too (the older identity keeps the plain one). */
function placeholderNames() {
  const names = new Map();
  for (const info of [...state.identities].sort((a, b) => String(a.created).localeCompare(String(b.created)))) {
    const base = slug(info.name || info.id);
    names.set(!base || names.has(base) ? `${base ? `${base}-` : ''}${info.id}` : base, info);
  }
  return names;
}

const personName = (info) => info && [...placeholderNames()].find(([, i]) => i.id === info.id)?.[0];

/** Adds a person to the prompt as <id:name>; a plain <id> becomes the selected identity's name (a prompt names people one way). */
function insertPerson(info) {
  const p = $('prompt');
  const selected = personName(state.identities.find((i) => i.id === state.selected));
  if (p.value.includes('<id>') && selected) p.value = p.value.replaceAll('<id>', `<id:${selected}>`);
  insertText(`<id:${personName(info)}>`);
}

const regions = regionEditor($('regions'));

/** The region editor follows the prompt: a box per <id:name>, or one for a lone <id>. */
function updateRegions() {
  const prompt = $('prompt').value;
  const names = placeholderNames();
  let people = named(prompt).map((name) => ({ name, label: names.get(name)?.name || names.get(name)?.id || name, token: `<id:${name}>` }));
  const lone = state.identities.find((i) => i.id === state.selected);
  // The server names a lone identity by its name, or 'id' when it has none (generate()'s identityMap).
  if (!people.length && prompt.includes('<id>') && lone) people = [{ name: lone.name ?? 'id', label: lone.name || lone.id, token: '<id>' }];
  regions.show(people, Number($('width').value) || 512, Number($('height').value) || 512);
}

// ---- generation

/** The generate request of the form; throws an Error a person can act on. */
function settings() {
  const num = (id) => (($(id).value ?? '').trim() === '' ? undefined : Number($(id).value));
  const prompt = $('prompt').value.trim();
  const people = named(prompt);
  const names = placeholderNames();
  for (const n of people) if (!names.has(n)) throw new Error(`The prompt names <id:${n}>, but no identity goes by that name: use “Add to prompt” on an identity.`);
  const identities = people.length ? Object.fromEntries(people.map((n) => [n, names.get(n).id])) : null;
  const identity = !identities && prompt.includes('<id>') ? state.selected : null;
  const boxes = identity || identities ? regions.regions() : {};
  const confined = Object.keys(boxes).length ? { regions: boxes } : {};
  const guidanceScale = num('guidance') ?? 7.5;
  const loras = [...$('lora-list').querySelectorAll('li')].filter((li) => li.querySelector('input[type=checkbox]').checked)
    .map((li) => ({ name: li.dataset.name, scale: Number(li.querySelector('input[type=number]').value) || 0 }));
  const negative = [$('negative').value.trim(), style.negative].filter(Boolean).join(', ');
  return {
    prompt: prompt + style.prompt, steps: num('steps') ?? 25, guidanceScale, sampler: $('sampler').value,
    width: Number($('width').value), height: Number($('height').value),
    ...(num('seed') !== undefined ? { seed: num('seed') } : {}),
    ...(negative && guidanceScale > 1 ? { negativePrompt: negative } : {}),
    ...(loras.length ? { loras } : {}),
    ...(identity ? { identity, ...confined } : {}),
    ...(identities ? { identities, ...confined } : {}),
    ...(identity || identities ? { identityScale: Number($('scale').value), ...(state.config?.attention ? { attention: true } : {}) } : {}),
  };
}

async function generate(ev) {
  ev?.preventDefault();
  if (state.busy) return;
  let body;
  try {
    body = settings();
  } catch (e) {
    notify(e.message, 'error');
    return;
  }
  if (!body.prompt) {
    notify('Write a prompt first (with <id> where the person goes).', 'error');
    $('prompt').focus();
    return;
  }
  if (body.prompt.includes('<id') && !body.identity && !body.identities) {
    notify('The prompt names <id>, but no identity is selected: create or select one first.', 'error');
    return;
  }
  state.busy = true;
  $('generate').disabled = true;
  notify('');
  const box = $('gen-job');
  const bar = $('gen-progress');
  const text = $('gen-text');
  const preview = $('gen-preview');
  box.hidden = false;
  bar.removeAttribute('value');
  text.textContent = 'Queued…';
  preview.hidden = true;
  const t0 = performance.now();
  try {
    const sub = await api('/generate', { method: 'POST', body });
    const view = await followJob(sub.id, (event, d) => {
      if (event !== 'progress') return;
      bar.max = d.steps;
      bar.value = d.step;
      text.textContent = `Step ${d.step} of ${d.steps} · ${((performance.now() - t0) / 1000).toFixed(1)} s`;
      if (d.preview) {
        preview.src = `data:image/jpeg;base64,${d.preview}`;
        preview.hidden = false;
      }
    });
    text.textContent = `Done in ${((performance.now() - t0) / 1000).toFixed(1)} s.`;
    bar.value = bar.max;
    await addResult(sub.id, view, body);
  } catch (e) {
    text.textContent = 'Stopped.';
    notify(explain(e), 'error');
  } finally {
    state.busy = false;
    $('generate').disabled = false;
  }
}

async function addResult(jobId, view, body) {
  const images = await Promise.all(view.images.map((u) => blobUrl(u)));
  const byId = (id) => state.identities.find((i) => i.id === id);
  const label = (info, fallback) => info?.name || info?.id || fallback;
  const identity = byId(body.identity);
  const who = body.identities ? Object.entries(body.identities).map(([n, id]) => label(byId(id), n)) : identity ? [label(identity)] : [];
  // One picture per job; a heatmap per identity placeholder, over that picture.
  const heatmaps = (await Promise.all((view.attention ?? []).map(async (a) => {
    const name = /^<id:(.*)>$/.exec(a.token)?.[1];
    return { src: await blobUrl(a.url).catch(() => null), who: name === undefined ? label(identity, 'the identity') : label(byId(body.identities?.[name]), name) };
  }))).filter((h) => h.src);
  const reference = body.identity ? state.references.get(body.identity) : undefined;
  images.forEach((src, i) => {
    const card = resultCard({
      src, heatmaps: i === 0 ? heatmaps : [], seed: view.seed, body, who, reference,
      useSeed: () => {
        $('seed').value = String(view.seed);
        $('seed').closest('details').open = true;
        $('seed').focus();
      },
      similarity: reference && state.config?.faces ? () => api('/studio/similarity', {
        method: 'POST', body: { reference: reference.slice(reference.indexOf(',') + 1), job: jobId, index: i },
      }) : undefined,
    });
    $('gallery').prepend(card);
  });
}

// ---- start

/** The server's LoRAs (GET /loras): a checkbox and a strength each; hidden when it offers none. */
function renderLoras(loras) {
  $('loras').hidden = loras.length === 0;
  $('lora-list').replaceChildren(...loras.map(({ name }, i) => {
    const li = Object.assign(document.createElement('li'), { className: 'lora' });
    li.dataset.name = name;
    const box = Object.assign(document.createElement('input'), { type: 'checkbox', id: `lora-${i}` });
    const label = Object.assign(document.createElement('label'), { htmlFor: box.id, textContent: name });
    const scale = Object.assign(document.createElement('input'), { type: 'number', min: '-10', max: '10', step: '0.05', value: '1', inputMode: 'decimal' });
    scale.setAttribute('aria-label', `Strength of ${name}`);
    li.append(box, label, scale);
    return li;
  }));
}

function fillSelect(sel, values, chosen) {
  sel.replaceChildren(...values.map((v) => Object.assign(document.createElement('option'), { value: String(v), textContent: String(v), selected: v === chosen })));
}

function renderStyles() {
  $('styles').replaceChildren(...STYLES.map((s) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'chip';
    b.textContent = s.name;
    b.setAttribute('role', 'radio');
    b.setAttribute('aria-checked', String(s === style));
    b.tabIndex = s === style ? 0 : -1;
    b.addEventListener('click', () => {
      style = s;
      renderStyles();
      $('styles').querySelector('[aria-checked="true"]').focus();
    });
    b.addEventListener('keydown', (e) => {
      const k = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
      if (!k) return;
      e.preventDefault();
      style = STYLES[(STYLES.indexOf(s) + k + STYLES.length) % STYLES.length];
      renderStyles();
      $('styles').querySelector('[aria-checked="true"]').focus();
    });
    return b;
  }));
}

async function start() {
  onTokenNeeded(askForToken);
  $('token-button').addEventListener('click', async () => {
    const t = await askForToken('');
    if (t) token.set(t);
    notify('');
    await start2().catch(failed);
  });
  const input = $('photo-input');
  input.addEventListener('change', () => {
    void addPhotos([...input.files]);
    input.value = '';
  });
  const drop = $('drop');
  for (const t of ['dragenter', 'dragover']) drop.addEventListener(t, (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  for (const t of ['dragleave', 'drop']) drop.addEventListener(t, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    void addPhotos([...(e.dataTransfer?.files ?? [])]);
  });
  $('method').addEventListener('change', updateCreate);
  $('create-identity').addEventListener('click', () => void createIdentity());
  $('insert-id').addEventListener('click', () => insertText('<id>'));
  $('prompt').addEventListener('input', updateRegions);
  for (const id of ['width', 'height']) $(id).addEventListener('change', updateRegions);
  $('scale').addEventListener('input', () => ($('scale-out').value = Number($('scale').value).toFixed(2)));
  $('generate-form').addEventListener('submit', (e) => void generate(e));
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) void generate(e);
  });
  renderStyles();
  await start2();
}

async function start2() {
  const c = await api('/studio/config');
  state.config = c;
  $('token-button').hidden = !c.token;
  $('server-info').textContent = `${c.mode === 'redis' ? 'Redis workers' : 'in-process engine'} · ${c.encoder ? 'ID encoder ready' : 'no ID encoder'} · ${c.faces ? 'face models ready' : 'no face models'}${c.preview ? ' · live previews' : ''}`;
  fillSelect($('sampler'), c.samplers, c.samplers.includes('dpmpp-2m-karras') ? 'dpmpp-2m-karras' : c.samplers[0]);
  const sides = [];
  for (let s = 64; s <= c.limits.maxSide; s += 64) sides.push(s);
  const side = Math.min(c.defaultSide ?? 512, c.limits.maxSide);
  fillSelect($('width'), sides, side);
  fillSelect($('height'), sides, side);
  $('steps').max = String(c.limits.maxSteps);
  $('learn-steps').max = String(c.limits.maxLearnSteps);
  $('method').querySelector('option[value=dreamidentity]').disabled = !c.encoder;
  if (!c.encoder) $('method').value = 'sefi-ide';
  updateCreate();
  renderLoras((await api('/loras')).loras);
  await loadIdentities();
  if (state.selected) promptForIdentity();
}

function failed(e) {
  // Without a token nothing loads: offer the way to give one.
  if (e instanceof ApiError && e.code === 'E_UNAUTHORIZED') $('token-button').hidden = false;
  notify(explain(e), 'error');
}

start().catch(failed);
