// Stage 1 of generate(): the conditioning. The prompt's <id> placeholders expanded against the
// identities; the text rows of the batch — [negative × N, prompt × N] with guidance (the
// unconditional rows first, as CFG reads them), else [prompt × N]; and the text encoder's output
// for each distinct (stage, K|V) word set, computed when a step first needs it and kept to the end
// of the run; with regions, the table confining each identity's slot tokens to its box on the
// conditional rows. The unconditional branch never sees an identity.
import type { AttentionCapture } from '../attention.js';
import { IdforgeError } from '../errors.js';
import type { Identity } from '../identity/identity.js';
import { expandPrompt, type ExpandedPrompt } from '../identity/placeholders.js';
import { identityRegions, type Region } from '../regions.js';
import type { SdRuntime } from '../runtime/sd.js';
import type { Tensor } from '../tensor.js';
import type { StepConditioning } from './denoiser.js';
import type { GeneratePlan } from './options.js';

type TextHost = Pick<SdRuntime, 'tokenizer' | 'configs' | 'runText' | 'wordEmbedding' | 'regionInput'>;

/** A prompt's placeholders expanded against the identities, checked against the model's text width (E_IDENTITY). */
export function expandFor(rt: Pick<SdRuntime, 'tokenizer' | 'configs'>, prompt: string, identities: Map<string, Identity> | undefined): ExpandedPrompt {
  const e = expandPrompt(rt.tokenizer, prompt, identities);
  if (e.rows.length && e.dim !== rt.configs.text.hiddenSize)
    throw new IdforgeError('E_IDENTITY', `identity has dim ${e.dim}, the model's text width is ${rt.configs.text.hiddenSize}`);
  return e;
}

export class Conditioning implements StepConditioning, Disposable {
  readonly rows: number;
  readonly dual: boolean;
  readonly regions: boolean;
  /** Prompts cut at 75 tokens. */
  readonly warnings: string[] = [];
  readonly #rt: TextHost;
  readonly #e: ExpandedPrompt;
  readonly #ids: Int32Array[];
  readonly #slots: Int32Array[];
  readonly #identityScale: number;
  readonly #regions: Region[];
  readonly #guided: boolean;
  #table: Tensor | undefined;
  readonly #contexts = new Map<string, Tensor>();
  #person: Promise<Float32Array> | undefined;

  /** Expands and tokenizes now (so that a bad prompt fails before any weight loads); encodes on demand. */
  constructor(rt: TextHost, plan: GeneratePlan) {
    this.#rt = rt;
    const e = (this.#e = expandFor(rt, plan.prompt, plan.identities));
    if (e.truncated) this.warnings.push('the prompt is longer than 75 tokens and was truncated');
    const N = plan.numImages;
    this.#ids = Array.from({ length: N }, () => e.ids);
    this.#slots = Array.from({ length: N }, () => e.slots);
    if (plan.guided) {
      const neg = rt.tokenizer.encode(plan.negativePrompt);
      if (neg.truncated) this.warnings.push('the negative prompt is longer than 75 tokens and was truncated');
      this.#ids.unshift(...Array.from({ length: N }, () => neg.ids));
      this.#slots.unshift(...Array.from({ length: N }, () => new Int32Array(77).fill(-1)));
    }
    this.rows = this.#ids.length;
    this.dual = this.#withId && !e.kvShared;
    this.#identityScale = plan.identityScale;
    this.#regions = identityRegions(plan.regions, e);
    this.regions = this.#regions.length > 0;
    this.#guided = plan.guided;
  }

  get #withId(): boolean {
    return this.#e.rows.length > 0;
  }

  /** The key (and, `dual`, value) context of the step at timestep t, the identity stage it uses, and the region table. */
  async at(t: number): Promise<{ stage: number; k: Tensor; v?: Tensor; regions?: Tensor }> {
    const stage = this.#withId ? this.#e.stageFor(t, this.#rt.configs.scheduler.numTrainTimesteps) : 0;
    const k = await this.#context(stage, 'k');
    const regions = this.regions ? (this.#table ??= this.#rt.regionInput(this.#regions, 77, this.rows, this.#guided)) : undefined;
    return { stage, k, ...(this.dual ? { v: await this.#context(stage, 'v') } : {}), ...(regions ? { regions } : {}) };
  }

  async #context(stage: number, kind: 'k' | 'v'): Promise<Tensor> {
    const e = this.#e;
    const key = this.#withId ? `${stage}:${e.kvShared ? 'k' : kind}` : 'plain';
    let c = this.#contexts.get(key);
    if (!c) {
      c = this.#withId ? await this.#rt.runText(this.#ids, { slots: this.#slots, vectors: await this.#scaled(e.vectors(stage, e.kvShared ? 'k' : kind)) }) : await this.#rt.runText(this.#ids);
      this.#contexts.set(key, c);
    }
    return c;
  }

  /** identityScale interpolates the identity's vectors from the word "person" (looked up once). */
  async #scaled(v: Float32Array): Promise<Float32Array> {
    const s = this.#identityScale;
    if (s === 1) return v;
    const p = await (this.#person ??= this.#rt.wordEmbedding('person'));
    const D = p.length;
    return v.map((x, i) => p[i % D]! + s * (x - p[i % D]!));
  }

  /** The prompt's 77 positions as captured attention maps refer to them. */
  attentionTokens(): Omit<AttentionCapture, 'maps'> {
    const e = this.#e;
    const tokens = [...e.ids].map((id, i) => (e.slots[i]! >= 0 ? '<id>' : (this.#rt.tokenizer.piece(id) ?? String(id))));
    return { ids: e.ids, tokens, slots: e.slots, slotNames: e.rows.map((r) => r.name) };
  }

  dispose(): void {
    for (const c of this.#contexts.values()) c.dispose();
    this.#contexts.clear();
    this.#table?.dispose();
    this.#table = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
