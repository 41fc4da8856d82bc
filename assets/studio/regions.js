// Where each person goes: a box per identity of the prompt (each <id:name>, or a lone <id>), drawn
// by dragging on a frame of the picture's shape or typed as four edges in percent (the keyboard's
// way, and the exact one). Boxes are sent as generate's `regions`: name → [x0, y0, x1, y1], fractions.

const COLOURS = ['#22d3a0', '#f5b83d', '#60a5fa', '#f472b6', '#a78bfa', '#fb7185', '#34d399', '#facc15'];
const EDGES = [['left', 'x0'], ['top', 'y0'], ['right', 'x1'], ['bottom', 'y1']];
/** A drag shorter than this (a fraction of the frame) is a click, not a box. */
const MIN_DRAG = 0.02;

const clamp = (v) => Math.min(1, Math.max(0, v));
const pct = (v) => String(Math.round(v * 1000) / 10);

/**
 * The editor over its fieldset: `show(people, width, height)` with the prompt's identities
 * ({ name: the regions key, label, token: its placeholder }), `regions()` the boxes to send
 * (throws an Error saying what to fix).
 */
export function regionEditor(fieldset) {
  const frame = fieldset.querySelector('.region-frame');
  const list = fieldset.querySelector('.region-rows');
  const boxes = new Map(); // name → [x0, y0, x1, y1] (kept while the name leaves the prompt and comes back)
  let people = [];
  let current = null;

  const colour = (name) => COLOURS[people.findIndex((p) => p.name === name) % COLOURS.length];

  function render() {
    fieldset.hidden = people.length === 0;
    frame.replaceChildren(...people.filter((p) => boxes.has(p.name)).map((p) => {
      const [x0, y0, x1, y1] = boxes.get(p.name);
      const d = document.createElement('div');
      d.className = `region-box${p.name === current ? ' current' : ''}`;
      d.dataset.testid = 'region-box';
      d.dataset.name = p.name;
      d.textContent = p.label;
      Object.assign(d.style, { left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%`, borderColor: colour(p.name), color: colour(p.name) });
      return d;
    }));
    for (const li of list.children) {
      const box = boxes.get(li.dataset.name);
      li.classList.toggle('current', li.dataset.name === current);
      li.querySelector('input[type=radio]').checked = li.dataset.name === current;
      for (const [i, [, key]] of EDGES.entries()) {
        const input = li.querySelector(`[data-edge=${key}]`);
        if (document.activeElement !== input) input.value = box ? pct(box[i]) : '';
        input.removeAttribute('aria-invalid');
      }
    }
  }

  function row(p, i) {
    const li = document.createElement('li');
    li.className = 'region-row';
    li.dataset.testid = 'region-row';
    li.dataset.name = p.name;
    const pick = Object.assign(document.createElement('input'), { type: 'radio', name: 'region-pick', id: `region-${i}` });
    pick.addEventListener('change', () => {
      current = p.name;
      render();
    });
    const swatch = Object.assign(document.createElement('span'), { className: 'swatch', ariaHidden: 'true' });
    swatch.style.background = colour(p.name);
    const label = Object.assign(document.createElement('label'), { htmlFor: pick.id, className: 'region-who', textContent: `${p.label} ` });
    label.prepend(swatch);
    label.append(Object.assign(document.createElement('code'), { textContent: p.token }));
    const edges = document.createElement('div');
    edges.className = 'edges';
    for (const [word, key] of EDGES) {
      const input = Object.assign(document.createElement('input'), { type: 'number', min: '0', max: '100', step: 'any', inputMode: 'decimal', placeholder: '–' });
      input.dataset.edge = key;
      input.setAttribute('aria-label', `${p.label}: ${word} edge, percent of the ${key.startsWith('x') ? 'width' : 'height'}`);
      input.addEventListener('change', () => typed(li, p.name));
      const l = Object.assign(document.createElement('label'), { className: 'edge', textContent: word });
      l.append(input);
      edges.append(l);
    }
    const clear = Object.assign(document.createElement('button'), { type: 'button', className: 'ghost small', textContent: 'Clear' });
    clear.setAttribute('aria-label', `Clear the box of ${p.label}`);
    clear.addEventListener('click', () => {
      boxes.delete(p.name);
      render();
    });
    li.append(pick, label, edges, clear);
    return li;
  }

  /** A row's four inputs: null when all are empty, the box when they make one, else 'bad' ('partial' while some are empty). */
  function parse(li) {
    const values = EDGES.map(([, key]) => li.querySelector(`[data-edge=${key}]`).value.trim()).map((v) => (v === '' ? null : Number(v) / 100));
    if (values.every((v) => v === null)) return null;
    if (values.some((v) => v === null)) return 'partial';
    const [x0, y0, x1, y1] = values;
    return values.every((v) => v >= 0 && v <= 1) && x0 < x1 && y0 < y1 ? values : 'bad';
  }

  /** Typed edges → the box once all four are there and make one; a wrong one is marked. */
  function typed(li, name) {
    const box = parse(li);
    if (box === 'partial') return;
    if (box === 'bad') {
      for (const i of li.querySelectorAll('[data-edge]')) i.setAttribute('aria-invalid', 'true');
      return;
    }
    if (box) boxes.set(name, box);
    else boxes.delete(name);
    current = name;
    render();
  }

  // Dragging on the frame draws the current person's box (the first one's when none is chosen).
  let start = null;
  const at = (e) => {
    const r = frame.getBoundingClientRect();
    return [clamp((e.clientX - r.left) / r.width), clamp((e.clientY - r.top) / r.height)];
  };
  frame.addEventListener('pointerdown', (e) => {
    if (!people.length) return;
    current ??= people[0].name;
    start = at(e);
    frame.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  frame.addEventListener('pointermove', (e) => {
    if (!start) return;
    const [x, y] = at(e);
    if (Math.abs(x - start[0]) < MIN_DRAG || Math.abs(y - start[1]) < MIN_DRAG) return;
    boxes.set(current, [Math.min(x, start[0]), Math.min(y, start[1]), Math.max(x, start[0]), Math.max(y, start[1])]);
    render();
  });
  const end = () => {
    start = null;
  };
  frame.addEventListener('pointerup', end);
  frame.addEventListener('pointercancel', end);

  return {
    show(next, width, height) {
      frame.style.aspectRatio = `${width} / ${height}`;
      const same = next.length === people.length && next.every((p, i) => ['name', 'label', 'token'].every((k) => p[k] === people[i][k]));
      people = next;
      if (!people.some((p) => p.name === current)) current = people[0]?.name ?? null;
      if (!same) list.replaceChildren(...people.map((p, i) => row(p, i)));
      render();
    },
    regions() {
      const out = {};
      for (const li of list.children) {
        const box = parse(li);
        const who = people.find((p) => p.name === li.dataset.name)?.label ?? li.dataset.name;
        if (box === 'partial' || box === 'bad') throw new Error(`The box of ${who} is not one: give all four edges, in percent, with left < right and top < bottom (or clear it).`);
        if (box) out[li.dataset.name] = box.map((v) => Math.round(v * 10000) / 10000);
      }
      return out;
    },
  };
}
