/**
 * Identity placeholders in prompts: `<id>` names the single identity given, `<id:name>` a named
 * one; each expands to M slot tokens whose token-embedding rows the text encoder replaces with the
 * identity's vectors (before position embeddings are added, so the slot token id itself never
 * reaches the model — see lib/text/clip.ts `inject`).
 *
 * The slot token id is the id of "*" (`*</w>`, 265 in the CLIP vocabulary), the pseudo-word
 * convention of textual inversion; any id but BOS/EOS would do. It must not be EOS: CLIP's pooled
 * output and some pipelines find the end of the prompt as the first / largest EOS id.
 */
import { IdforgeError } from '../errors.js';
import { pack, type ClipTokenizer } from '../text/tokenizer.js';
import { stageIndex, type Identity } from './identity.js';
import { invalid, oneOf, text } from '../validate.js';

/** The text whose token id marks slot positions by default. */
export const SLOT_TEXT = '*';

export interface ExpandOptions {
  /** Placeholder word: `<id>` / `<id:name>` by default. */
  placeholder?: string;
  /** Token id written at slot positions (default: the id of "*"). */
  slotToken?: number;
}

export interface SlotRow {
  /** Key of the identity in the map given. */
  name: string;
  /** Word index within the identity (0..M−1). */
  word: number;
}

export interface ExpandedPrompt {
  /** BOS, content, EOS, EOS padding: 77 ids (what the text encoder embeds). */
  ids: Int32Array;
  /** Per position: −1, or the index of the row of `vectors()` that replaces its embedding. */
  slots: Int32Array;
  /** True when text after the last slot was cut to fit 77 tokens (slots never are). */
  truncated: boolean;
  /** Ids before padding (BOS + content + EOS). */
  tokenCount: number;
  /** What each row of vectors() is; a (name, word) pair used twice in a prompt shares one row. */
  rows: SlotRow[];
  /** Width of the vectors (undefined when the prompt has no placeholder). */
  dim: number | undefined;
  /** Number of stages of the identities used (1 when none; identities with S=1 serve every stage). */
  stages: number;
  /** True when every identity used has v = k: one text-encoder pass per stage serves K and V. */
  kvShared: boolean;
  /** The stage of timestep t: min(stages−1, floor(t·stages/numTrainTimesteps)). */
  stageFor(t: number, numTrainTimesteps?: number): number;
  /** Row vectors [rows.length · D] for one stage and kind (an identity with S=1 ignores the stage). */
  vectors(stage: number, kind: 'k' | 'v'): Float32Array;
}

function idErr(msg: string): IdforgeError {
  return new IdforgeError('E_IDENTITY', msg);
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Expands identity placeholders of `prompt` into ids, slot positions and the vectors for them. */
export function expandPrompt(
  tokenizer: ClipTokenizer,
  prompt: string,
  identities: Map<string, Identity> | undefined,
  opts: ExpandOptions = {},
): ExpandedPrompt {
  text(prompt, 'prompt');
  const word = opts.placeholder ?? 'id';
  if (typeof word !== 'string' || !/^[A-Za-z_][A-Za-z0-9_-]*$/.test(word))
    throw invalid('placeholder', 'a word of letters, digits, _ or -', word);
  if (identities !== undefined && !(identities instanceof Map))
    throw invalid('identities', 'a Map<string, Identity>', identities);
  const ids = identities && identities.size > 0 ? identities : undefined;
  const slotToken = opts.slotToken ?? defaultSlotToken(tokenizer);
  if (!Number.isInteger(slotToken) || slotToken < 0 || slotToken === tokenizer.eos || slotToken === tokenizer.bos)
    throw invalid('slotToken', 'a token id other than BOS/EOS', slotToken);

  const re = new RegExp(`<${escapeRe(word)}(?::([^<>]*))?>`, 'g');
  const content: number[] = [];
  const rows: SlotRow[] = [];
  const rowIndex = new Map<string, number>();
  const slotAt: { pos: number; row: number }[] = [];
  const used = new Map<string, Identity>();
  let last = 0;
  for (const m of prompt.matchAll(re)) {
    content.push(...tokenizer.idsFor(prompt.slice(last, m.index)));
    last = m.index! + m[0].length;
    const name = resolve(m[0], m[1], ids, word);
    const id = ids!.get(name)!;
    used.set(name, id);
    for (let w = 0; w < id.words; w++) {
      const key = `${name}\u0000${w}`;
      let r = rowIndex.get(key);
      if (r === undefined) {
        r = rows.length;
        rows.push({ name, word: w });
        rowIndex.set(key, r);
      }
      slotAt.push({ pos: content.length, row: r });
      content.push(slotToken);
    }
  }
  content.push(...tokenizer.idsFor(prompt.slice(last)));

  if (ids && used.size === 0)
    throw idErr(`${ids.size === 1 ? 'an identity was' : `${ids.size} identities were`} given but the prompt has no <${word}> placeholder: ` +
      `write <${word}> where the person goes (e.g. "a photo of <${word}>")`);

  const room = tokenizer.maxLength - 2;
  const lastSlot = slotAt.length ? slotAt[slotAt.length - 1]!.pos : -1;
  if (lastSlot >= room) {
    const nSlots = slotAt.length;
    throw idErr(`the prompt expands to ${content.length} tokens (${content.length - nSlots} text + ${nSlots} identity slots), ` +
      `but CLIP takes ${room}: the identity slots would be cut off; shorten the prompt or move <${word}> earlier`);
  }
  const packed = pack(content, { bos: tokenizer.bos, eos: tokenizer.eos, maxLength: tokenizer.maxLength });
  const slots = new Int32Array(tokenizer.maxLength).fill(-1);
  for (const s of slotAt) slots[1 + s.pos] = s.row;

  const list = [...used.values()];
  const dims = new Set(list.map((i) => i.dim));
  if (dims.size > 1)
    throw idErr(`the identities in one prompt must have the same dim, got ${[...used].map(([n, i]) => `${n}: ${i.dim}`).join(', ')}`);
  const stages = Math.max(1, ...list.map((i) => i.stages));
  for (const [n, i] of used)
    if (i.stages !== 1 && i.stages !== stages)
      throw idErr(`identities in one prompt must have the same number of stages (or 1): "${n}" has ${i.stages}, another has ${stages}`);
  const dim = list[0]?.dim;
  const kvShared = list.every((i) => i.kvShared);

  return {
    ids: packed.ids,
    slots,
    truncated: packed.truncated,
    tokenCount: packed.tokenCount,
    rows,
    dim,
    stages,
    kvShared,
    stageFor: (t: number, numTrainTimesteps = 1000) => stageIndex(t, stages, numTrainTimesteps),
    vectors(stage: number, kind: 'k' | 'v'): Float32Array {
      if (!Number.isInteger(stage) || stage < 0 || stage >= stages)
        throw invalid('stage', `an integer in [0, ${stages - 1}]`, stage);
      oneOf(kind, 'kind', ['k', 'v'] as const);
      const D = dim ?? 0;
      const out = new Float32Array(rows.length * D);
      rows.forEach((r, i) => {
        const id = used.get(r.name)!;
        const src = kind === 'k' ? id.kFlat(Math.min(stage, id.stages - 1)) : id.vFlat(Math.min(stage, id.stages - 1));
        out.set(src.subarray(r.word * D, (r.word + 1) * D), i * D);
      });
      return out;
    },
  };
}

function defaultSlotToken(tokenizer: ClipTokenizer): number {
  const ids = tokenizer.idsFor(SLOT_TEXT);
  if (ids.length !== 1) throw new IdforgeError('E_INTERNAL', `"${SLOT_TEXT}" is not one token in this vocabulary: pass slotToken`);
  return ids[0]!;
}

function resolve(text: string, rawName: string | undefined, ids: Map<string, Identity> | undefined, word: string): string {
  if (!ids) throw idErr(`the prompt has ${text} but no identity was given: pass an identity (or remove the placeholder)`);
  if (rawName === undefined) {
    if (ids.size > 1)
      throw idErr(`the prompt has <${word}> but ${ids.size} identities were given (${[...ids.keys()].join(', ')}): use <${word}:name>`);
    return ids.keys().next().value!;
  }
  const name = rawName.trim();
  if (!name) throw idErr(`${text} names no identity: write <${word}:name> or <${word}>`);
  if (!ids.has(name)) throw idErr(`the prompt has ${text} but no identity named "${name}" was given (given: ${[...ids.keys()].join(', ')})`);
  return name;
}
