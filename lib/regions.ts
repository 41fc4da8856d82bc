// Regional prompting: each region's tokens confined to a box of the image through cross-attention
// (native/regions.h states the rule and the table; the ATTENTION op applies it). Here: the region
// type, its argument checks and the host side of the table a UNet program takes as an input.
import { invalid, numberIn, shown } from './validate.js';

/** A box [x0, y0, x1, y1): fractions of the image's width and height. */
export type Box = readonly [number, number, number, number];

/** Token indices of the context confined to a box. */
export interface Region {
  tokens: readonly number[];
  box: Box;
}

/**
 * Regions one table holds. Every UNet program with regions takes a table of this capacity, so one
 * compiled program serves 1 to REGION_CAPACITY regions (per-call regions are an input, never a
 * recompile); unused slots own no token and cost nothing.
 */
export const REGION_CAPACITY = 8;

/** Columns of a table for `keys` context tokens: the owner of each key, then 4 box values per region. */
export const regionColumns = (keys: number, capacity = REGION_CAPACITY): number => keys + 4 * capacity;

/**
 * The int32 region table [rows, regionColumns(keys, capacity)] (row-major): row i confines
 * `regions` when confined[i], else nothing (the unconditional rows of classifier-free guidance).
 * Regions are assumed valid (regionList) and at most `capacity`.
 */
export function regionTable(regions: readonly Region[], keys: number, confined: readonly boolean[], capacity = REGION_CAPACITY): Int32Array {
  const cols = regionColumns(keys, capacity);
  const table = new Int32Array(confined.length * cols).fill(-1);
  const boxes = new Float32Array(table.buffer);
  confined.forEach((on, row) => {
    const base = row * cols;
    table.fill(0, base + keys, base + cols); // empty boxes (+0.0 bits) for unused slots
    if (!on) return;
    regions.forEach((r, i) => {
      for (const t of r.tokens) table[base + t] = i;
      r.box.forEach((v, c) => (boxes[base + keys + 4 * i + c] = v));
    });
  });
  return table;
}

/** A region's box [x0, y0, x1, y1): fractions of the image in [0, 1] with x0 < x1 and y0 < y1. */
export function regionBox(v: unknown, name: string): [number, number, number, number] {
  if (!Array.isArray(v) || v.length !== 4) throw invalid(name, '[x0, y0, x1, y1], fractions of the image', v);
  const [x0, y0, x1, y1] = v.map((x, i) => numberIn(x, `${name}[${i}]`, 0, 1)) as [number, number, number, number];
  if (x0 >= x1 || y0 >= y1) throw invalid(name, 'a box with x0 < x1 and y0 < y1', v);
  return [x0, y0, x1, y1];
}

/**
 * Regions over a context of `keys` tokens (lib/regions.ts): at most REGION_CAPACITY, each owning
 * token indices in [0, keys), no token in two regions, at least one token left unconfined (the
 * positions outside every box attend to those).
 */
export function regionList(v: unknown, keys: number, name = 'regions'): Region[] {
  if (!Array.isArray(v) || v.length > REGION_CAPACITY) throw invalid(name, `an array of at most ${REGION_CAPACITY} regions { tokens, box }`, v);
  const owner = new Map<number, number>();
  const list = v.map((r: { tokens?: unknown; box?: unknown } | null, i): Region => {
    const at = `${name}[${i}]`;
    if (r === null || typeof r !== 'object') throw invalid(at, '{ tokens, box }', r);
    const box = regionBox(r.box, `${at}.box`);
    if (!Array.isArray(r.tokens) || r.tokens.length === 0) throw invalid(`${at}.tokens`, 'a non-empty array of token indices', r.tokens);
    const tokens = r.tokens.map((x, j) => {
      if (!Number.isSafeInteger(x) || x < 0 || x >= keys) throw invalid(`${at}.tokens[${j}]`, `a token index of the ${keys}-token context, in [0, ${keys - 1}]`, x);
      return x as number;
    });
    for (const x of tokens) {
      const o = owner.get(x);
      if (o !== undefined && o !== i) throw invalid(`${at}.tokens`, `tokens no other region owns (token ${x} is in ${name}[${o}] too)`, r.tokens);
      owner.set(x, i);
    }
    return { tokens, box };
  });
  if (owner.size === keys) throw invalid(name, `regions that leave some of the ${keys} tokens unconfined (positions outside every box attend to those)`, shown(`all ${keys} confined`));
  return list;
}

/** generate()'s `regions` option: identity name → box, checked (at most REGION_CAPACITY). */
export function regionBoxes(v: unknown): ReadonlyMap<string, Box> {
  if (v === undefined) return new Map();
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw invalid('regions', 'an object of identity name → [x0, y0, x1, y1]', v);
  const m = v instanceof Map ? (v as Map<unknown, unknown>) : new Map(Object.entries(v));
  if (m.size > REGION_CAPACITY) throw invalid('regions', `boxes for at most ${REGION_CAPACITY} identities`, shown(`${m.size}`));
  return new Map([...m].map(([name, box]) => [String(name), regionBox(box, `regions.${String(name)}`)]));
}

/**
 * The regions of generate(): each identity's slot positions of the expanded prompt (slots: per
 * position the slot row or −1; rows: each slot row's identity name) confined to its box. A name
 * no identity of the prompt has is refused.
 */
export function identityRegions(boxes: ReadonlyMap<string, Box>, e: { slots: Int32Array; rows: readonly { name: string }[] }): Region[] {
  const names = [...new Set(e.rows.map((r) => r.name))];
  return [...boxes].map(([name, box]): Region => {
    const tokens = [...e.slots.keys()].filter((i) => e.slots[i]! >= 0 && e.rows[e.slots[i]!]!.name === name);
    if (tokens.length === 0)
      throw invalid(`regions.${name}`, `the box of an identity in the prompt (${names.length ? names.join(', ') : 'the prompt has none'})`, shown(`no <id:${name}> in the prompt`));
    return { tokens, box };
  });
}
