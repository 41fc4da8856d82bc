/**
 * The CLIP BPE tokenizer used by Stable Diffusion 1.x, reimplemented in TypeScript.
 *
 * Behaviour follows Hugging Face `transformers.CLIPTokenizer` when `ftfy` is not installed
 * (the common case), which is also what the openai CLIP tokenizer does on ordinary text:
 *
 *  1. basic cleaning (BERT `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`):
 *     drop NUL, U+FFFD and control / format characters (Cc, Cf; tab, CR and LF are whitespace),
 *     turn whitespace (tab, CR, LF, Zs) into spaces, put spaces around CJK ideographs,
 *     NFC-normalise, split on whitespace, lower-case, and join the words with single spaces;
 *  2. split with the CLIP pattern
 *     `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
 *     (case-insensitive, unicode);
 *  3. map the UTF-8 bytes of every piece through the GPT-2 byte → unicode table, append `</w>`
 *     to the last symbol and merge pairs by merge rank (lowest first), with a cache;
 *  4. `encode`: BOS, at most 75 content ids, EOS, padded with EOS to 77.
 *
 * Accents are kept (no accent stripping); `café` becomes the bytes `c a f Ã ©`.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { IdforgeError } from '../errors.js';
import { invalid } from '../validate.js';

/** The result of {@link ClipTokenizer.encode} / {@link pack}. */
export interface EncodedPrompt {
  /** BOS, content ids, EOS, padding (EOS): exactly `maxLength` ids. */
  ids: Int32Array;
  /** True when content ids were dropped to fit. */
  truncated: boolean;
  /** Number of ids before padding (BOS + kept content + EOS). */
  tokenCount: number;
}

export const CLIP_BOS = 49406;
export const CLIP_EOS = 49407;
export const CLIP_MAX_LENGTH = 77;

const SPLIT_PATTERN =
  /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

/** GPT-2's reversible byte → unicode table: printable bytes map to themselves, the rest to 256+. */
export function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  const printable = new Set<number>();
  for (let b = 0x21; b <= 0x7e; b++) printable.add(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.add(b);
  for (let b = 0xae; b <= 0xff; b++) printable.add(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (printable.has(b)) table[b] = String.fromCharCode(b);
    else table[b] = String.fromCharCode(256 + n++);
  }
  return table;
}

function isChineseChar(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

const RE_WHITESPACE_CHAR = /^[ \t\n\r\p{Zs}]$/u;
const RE_CONTROL_CHAR = /^[\p{Cc}\p{Cf}]$/u;

/**
 * BERT BasicTokenizer cleaning as HF CLIPTokenizer applies it without ftfy
 * (strip_accents=False, no punctuation split): returns the words joined by single spaces.
 */
export function basicClean(text: string): string {
  let out = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (cp === 0 || cp === 0xfffd) continue;
    if (RE_WHITESPACE_CHAR.test(ch)) {
      out += ' ';
      continue;
    }
    if (RE_CONTROL_CHAR.test(ch)) continue;
    if (isChineseChar(cp)) out += ` ${ch} `;
    else out += ch;
  }
  const words = out.normalize('NFC').trim().split(/\s+/).filter((w) => w.length > 0);
  return words.map((w) => w.toLowerCase()).join(' ');
}

function readText(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new IdforgeError('E_NOT_FOUND', `${what} not found: ${path}`, { cause: e });
    throw new IdforgeError('E_MODEL_FORMAT', `cannot read ${what} ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Packs content ids into a fixed-length CLIP prompt: BOS, the first `maxLength - 2` content ids,
 * EOS, then EOS padding. Content can be assembled from several segments (e.g. text around
 * identity placeholders) with {@link ClipTokenizer.idsFor} and concatenated before packing.
 */
export function pack(
  contentIds: ArrayLike<number>,
  opts: { bos?: number; eos?: number; pad?: number; maxLength?: number } = {},
): EncodedPrompt {
  const bos = opts.bos ?? CLIP_BOS;
  const eos = opts.eos ?? CLIP_EOS;
  const pad = opts.pad ?? eos;
  const maxLength = opts.maxLength ?? CLIP_MAX_LENGTH;
  if (!Number.isInteger(maxLength) || maxLength < 2) {
    throw invalid('maxLength', 'an integer ≥ 2', maxLength);
  }
  const room = maxLength - 2;
  const kept = Math.min(room, contentIds.length);
  const ids = new Int32Array(maxLength).fill(pad);
  ids[0] = bos;
  for (let i = 0; i < kept; i++) {
    const id = contentIds[i]!;
    if (!Number.isInteger(id) || id < 0) throw invalid(`token id ${i}`, 'a non-negative integer', id);
    ids[1 + i] = id;
  }
  ids[1 + kept] = eos;
  return { ids, truncated: contentIds.length > room, tokenCount: kept + 2 };
}

export class ClipTokenizer {
  readonly bos = CLIP_BOS;
  readonly eos = CLIP_EOS;
  readonly maxLength = CLIP_MAX_LENGTH;
  /** sha256 (hex) of the vocab.json bytes. */
  readonly vocabHash: string;
  /** Number of entries in the vocabulary. */
  readonly vocabSize: number;

  private readonly encoder: Map<string, number>;
  private readonly decoder: Map<number, string>;
  private readonly ranks: Map<string, number>;
  private readonly byteEncoder = bytesToUnicode();
  private readonly cache = new Map<string, string[]>();
  private readonly utf8 = new TextEncoder();

  private constructor(vocabBytes: Buffer, mergesText: string, source: string) {
    let vocab: unknown;
    try {
      vocab = JSON.parse(vocabBytes.toString('utf8'));
    } catch (e) {
      throw new IdforgeError('E_MODEL_FORMAT', `vocab.json is not valid JSON (${source})`, { cause: e });
    }
    if (vocab === null || typeof vocab !== 'object' || Array.isArray(vocab)) {
      throw new IdforgeError('E_MODEL_FORMAT', `vocab.json must be an object of token → id (${source})`);
    }
    this.encoder = new Map();
    this.decoder = new Map();
    for (const [tok, id] of Object.entries(vocab as Record<string, unknown>)) {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
        throw new IdforgeError('E_MODEL_FORMAT', `vocab.json: bad id for ${JSON.stringify(tok)} (${source})`);
      }
      this.encoder.set(tok, id);
      this.decoder.set(id, tok);
    }
    this.vocabSize = this.encoder.size;
    for (const [name, id] of [['<|startoftext|>', CLIP_BOS], ['<|endoftext|>', CLIP_EOS]] as const) {
      if (this.encoder.get(name) !== id) {
        throw new IdforgeError('E_MODEL_FORMAT', `vocab.json: ${name} must have id ${id} (${source})`);
      }
    }
    // Like HF: skip the "#version" header line, keep at most 49152 - 256 - 2 merges.
    const lines = mergesText.replace(/\r\n/g, '\n').trim().split('\n');
    const start = lines.length > 0 && lines[0]!.startsWith('#version') ? 1 : 0;
    const merges = lines.slice(start, start + 49152 - 256 - 2);
    this.ranks = new Map();
    merges.forEach((line, i) => {
      const parts = line.split(' ');
      if (parts.length !== 2) throw new IdforgeError('E_MODEL_FORMAT', `merges.txt line ${i + start + 1} is not a pair (${source})`);
      const key = `${parts[0]} ${parts[1]}`;
      if (!this.ranks.has(key)) this.ranks.set(key, i);
    });
    this.vocabHash = createHash('sha256').update(vocabBytes).digest('hex');
    this.cache.set('<|startoftext|>', ['<|startoftext|>']);
    this.cache.set('<|endoftext|>', ['<|endoftext|>']);
  }

  /** Reads `vocab.json` and `merges.txt` from a folder (e.g. `<model>/tokenizer`). */
  static fromDir(dir: string): ClipTokenizer {
    let st;
    try {
      st = statSync(dir);
    } catch (e) {
      throw new IdforgeError('E_NOT_FOUND', `tokenizer folder not found: ${dir}`, { cause: e });
    }
    if (!st.isDirectory()) throw new IdforgeError('E_NOT_FOUND', `not a folder: ${dir}`);
    return ClipTokenizer.fromFiles(join(dir, 'vocab.json'), join(dir, 'merges.txt'));
  }

  static fromFiles(vocabPath: string, mergesPath: string): ClipTokenizer {
    const vocab = readText(vocabPath, 'vocab.json');
    const merges = readText(mergesPath, 'merges.txt').toString('utf8');
    return new ClipTokenizer(vocab, merges, vocabPath);
  }

  /** Builds a tokenizer from in-memory contents (vocab.json bytes or object, merges.txt text). */
  static fromContents(vocab: Buffer | string, merges: string): ClipTokenizer {
    const bytes = typeof vocab === 'string' ? Buffer.from(vocab, 'utf8') : vocab;
    return new ClipTokenizer(bytes, merges, '<memory>');
  }

  /** BPE of one pre-token (already byte-encoded); returns its symbols, the last ending in </w>. */
  private bpe(token: string): string[] {
    const cached = this.cache.get(token);
    if (cached) return cached;
    // Byte-encoded characters are all in the BMP, so UTF-16 units are symbols.
    let word: string[] = token.split('');
    word[word.length - 1] += '</w>';
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best]!;
      const second = word[best + 1]!;
      // Merge every non-overlapping occurrence, left to right (as CLIP does).
      const merged: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else {
          merged.push(word[i]!);
          i += 1;
        }
      }
      word = merged;
    }
    if (this.cache.size > 50_000) this.cache.clear();
    if (token.length <= 100) this.cache.set(token, word);
    return word;
  }

  /**
   * BPE pieces of `text`. With `limit`, stops once more than `limit` pieces exist and runs BPE on at
   * most the first 4096 characters of any one word: a prompt is truncated to 75 tokens anyway, and
   * BPE is quadratic in a word's length (a 160k-character word took 8 s).
   */
  private pieces(text: string, limit = Infinity): string[] {
    if (typeof text !== 'string') throw invalid('text', 'a string', text);
    const clean = basicClean(text);
    const out: string[] = [];
    for (const m of clean.matchAll(SPLIT_PATTERN)) {
      if (out.length > limit) break;
      const piece = Number.isFinite(limit) ? m[0].slice(0, 4096) : m[0];
      let encoded: string;
      if (piece === '<|startoftext|>' || piece === '<|endoftext|>') encoded = piece;
      else {
        encoded = '';
        for (const b of this.utf8.encode(piece)) encoded += this.byteEncoder[b];
      }
      for (const sym of this.bpe(encoded)) out.push(sym);
    }
    return out;
  }

  /** The BPE pieces of `text` (vocabulary strings, without BOS/EOS). */
  tokenize(text: string): string[] {
    return this.pieces(text);
  }

  /** Content ids of `text`: no BOS/EOS; with `limit`, stops after a little more than `limit` ids. */
  idsFor(text: string, limit = Infinity): number[] {
    return this.pieces(text, limit).map((p) => {
      const id = this.encoder.get(p);
      if (id === undefined) throw new IdforgeError('E_MODEL_FORMAT', `BPE piece ${JSON.stringify(p)} is not in vocab.json`);
      return id;
    });
  }

  /** BOS + up to 75 content ids + EOS, padded with EOS to 77. */
  encode(text: string): EncodedPrompt {
    return pack(this.idsFor(text, this.maxLength - 1), { bos: this.bos, eos: this.eos, maxLength: this.maxLength });
  }

  /** The token string of a vocabulary id (e.g. 1125 → "photo</w>"), or undefined. */
  piece(id: number): string | undefined {
    return this.decoder.get(id);
  }

  /** Vocabulary id of one token string (e.g. `"person</w>"`), or undefined. */
  tokenId(token: string): number | undefined {
    return this.encoder.get(token);
  }

  /** Best-effort text for ids (BOS/EOS dropped, `</w>` → space). */
  decode(ids: ArrayLike<number>): string {
    const byteDecoder = new Map<string, number>();
    this.byteEncoder.forEach((c, b) => byteDecoder.set(c, b));
    const bytes: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === this.bos || id === this.eos) continue;
      const tok = this.decoder.get(id);
      if (tok === undefined) continue;
      const word = tok.endsWith('</w>') ? tok.slice(0, -4) : tok;
      for (const ch of word) bytes.push(byteDecoder.get(ch) ?? 0x3f);
      if (tok.endsWith('</w>')) bytes.push(0x20);
    }
    return Buffer.from(bytes).toString('utf8').trim();
  }
}
