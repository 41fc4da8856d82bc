// The studio page's repeated pieces: an identity in the list, a result in the gallery.

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

function button(label, onClick, props = {}) {
  const b = el('button', { type: 'button', className: 'ghost small', textContent: label, ...props });
  b.addEventListener('click', onClick);
  return b;
}

const METHOD = { dreamidentity: 'DreamIdentity', 'sefi-ide': 'SeFi-IDE', custom: 'custom' };

/** One identity: select (radio), name (renamable in place), method and shape, add to the prompt (<id:name>), download, delete. */
export function identityItem(info, h) {
  const li = el('li', { className: `identity${h.selected ? ' selected' : ''}` });
  li.dataset.testid = 'identity-item';
  li.dataset.id = info.id;
  const radio = el('input', { type: 'radio', name: 'identity', id: `id-${info.id}`, checked: h.selected, value: info.id });
  radio.addEventListener('change', h.select);
  const label = el('label', { htmlFor: radio.id, className: 'identity-name', textContent: info.name || info.id });
  const meta = el('span', { className: 'meta', textContent: `${METHOD[info.method] ?? info.method} · ${info.stages}×${info.words} words` });
  const thumb = h.reference ? el('img', { className: 'thumb', src: h.reference, alt: '' }) : el('span', { className: 'thumb none', ariaHidden: 'true', textContent: (info.name || '?').slice(0, 1).toUpperCase() });
  const main = el('div', { className: 'identity-main' }, label, meta);
  const rename = button('Rename', () => {
    const input = el('input', { type: 'text', value: info.name ?? '', maxLength: 100, className: 'rename' });
    input.setAttribute('aria-label', `New name for ${info.name || info.id}`);
    const done = (save) => {
      if (save && input.value.trim() && input.value.trim() !== info.name) void h.rename(input.value.trim());
      else input.replaceWith(label);
    };
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') done(true);
      if (e.key === 'Escape') done(false);
    });
    input.addEventListener('blur', () => done(true));
    label.replaceWith(input);
    input.focus();
    input.select();
  });
  rename.setAttribute('aria-label', `Rename ${info.name || info.id}`);
  const insert = button('Add to prompt', h.insert);
  insert.setAttribute('aria-label', `Add ${info.name || info.id} to the prompt`);
  const download = button('Download', h.download);
  download.setAttribute('aria-label', `Download ${info.name || info.id} (.safetensors)`);
  const remove = button('Delete', h.remove, { className: 'ghost small danger' });
  remove.setAttribute('aria-label', `Delete ${info.name || info.id}`);
  li.append(radio, thumb, main, el('div', { className: 'identity-actions' }, insert, rename, download, remove));
  return li;
}

/** One picture: the image, its settings, "use this seed", download, its heatmaps ({ src, who }), and the ID similarity. */
export function resultCard(r) {
  const b = r.body;
  const li = el('li', { className: 'result' });
  const img = el('img', { src: r.src, alt: `Generated: ${b.prompt}`, width: b.width, height: b.height });
  img.dataset.testid = 'result-image';
  const pictures = el('div', { className: 'pictures' }, el('figure', {}, img, el('figcaption', { textContent: 'picture' })));
  for (const h of r.heatmaps) {
    const heat = el('img', { src: h.src, alt: `Where ${h.who} attends (heatmap over the picture)`, width: b.width, height: b.height });
    heat.dataset.testid = 'attention-image';
    pictures.append(el('figure', {}, heat, el('figcaption', { textContent: `where ${h.who} attends` })));
  }
  const settings = [
    `seed ${r.seed}`, `${b.width}×${b.height}`, `${b.steps} steps`, b.sampler, `guidance ${b.guidanceScale}`,
    ...(r.who.length ? [`${r.who.join(' + ')} × ${b.identityScale}`] : []),
    ...(b.regions ? [`boxes for ${Object.keys(b.regions).join(', ')}`] : []),
  ];
  const info = el('div', { className: 'result-info' },
    el('p', { className: 'result-prompt', textContent: b.prompt }),
    el('p', { className: 'meta', textContent: settings.join(' · ') }));
  const a = el('a', { href: r.src, download: `idforge-${r.seed}.png`, className: 'ghost small button', textContent: 'Download' });
  const actions = el('div', { className: 'result-actions' }, button('Use this seed', r.useSeed), a);
  li.append(pictures, info, actions);
  if (r.similarity) {
    const sim = el('div', { className: 'similarity' },
      el('img', { src: r.reference, alt: 'Reference photo', className: 'thumb' }),
      el('span', { className: 'meta', textContent: 'ID similarity: measuring…' }));
    sim.dataset.testid = 'similarity';
    li.append(sim);
    r.similarity().then((s) => {
      sim.lastChild.textContent = s.similarity === null
        ? `ID similarity: no face found in the picture${s.reference ? '' : ' or the photo'}`
        : `ID similarity to the photo: ${s.similarity.toFixed(3)} (the same person scores above ~0.91 with this face model)`;
    }, (e) => {
      sim.lastChild.textContent = `ID similarity: ${e.message}`;
    });
  }
  return li;
}
