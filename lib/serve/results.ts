// `--results DIR`: finished jobs on disk, so that their URLs (the job view, the PNGs) outlive the
// process that ran them. One `<job>.json` (the public view), `<job>-<i>.png` per image and
// `<job>-attention-<i>.png` per heatmap; kept by
// the same count and age as the queue keeps jobs. Job ids are UUIDs (the routes check), never paths.
import fs from 'node:fs';
import path from 'node:path';

export interface KeepPolicy {
  /** At most this many finished jobs ... */
  count: number;
  /** ... none older than this. */
  ms: number;
}

const JOB = /^([0-9a-f-]{36})\.json$/;

/** A job's PNGs: its pictures and its attention heatmaps. */
export type PngKind = 'image' | 'attention';

export class ResultStore {
  readonly dir: string;
  /** Job id → when it was written, oldest first. */
  readonly #index = new Map<string, number>();

  constructor(dir: string, readonly keep: KeepPolicy) {
    this.dir = path.resolve(dir);
    fs.mkdirSync(this.dir, { recursive: true });
    const found: [string, number][] = [];
    for (const f of fs.readdirSync(this.dir)) {
      const m = JOB.exec(f);
      if (m) found.push([m[1]!, fs.statSync(path.join(this.dir, f)).mtimeMs]);
    }
    for (const [id, t] of found.sort((a, b) => a[1] - b[1])) this.#index.set(id, t);
    this.#prune();
  }

  /** Writes a finished job's public view, its PNGs and heatmaps (the view last: a job is there once its JSON is). */
  save(id: string, view: Record<string, unknown>, images: Buffer[] = [], attention: Buffer[] = []): void {
    images.forEach((png, i) => fs.writeFileSync(this.#png(id, 'image', i), png));
    attention.forEach((png, i) => fs.writeFileSync(this.#png(id, 'attention', i), png));
    const tmp = path.join(this.dir, `${id}.json.tmp`);
    fs.writeFileSync(tmp, JSON.stringify(view));
    fs.renameSync(tmp, path.join(this.dir, `${id}.json`));
    this.#index.delete(id);
    this.#index.set(id, Date.now());
    this.#prune();
  }

  /** The public view of a persisted job, or undefined. */
  view(id: string): Record<string, unknown> | undefined {
    if (!this.#index.has(id)) return undefined;
    try {
      return JSON.parse(fs.readFileSync(path.join(this.dir, `${id}.json`), 'utf8')) as Record<string, unknown>;
    } catch {
      return undefined;
    }
  }

  /** A persisted picture or heatmap PNG, or undefined. */
  image(id: string, index: number, kind: PngKind = 'image'): Buffer | undefined {
    if (!this.#index.has(id)) return undefined;
    try {
      return fs.readFileSync(this.#png(id, kind, index));
    } catch {
      return undefined;
    }
  }

  #png(id: string, kind: PngKind, index: number): string {
    return path.join(this.dir, `${id}-${kind === 'attention' ? 'attention-' : ''}${index}.png`);
  }

  #prune(): void {
    const old = Date.now() - this.keep.ms;
    for (const [id, t] of this.#index) {
      if (this.#index.size <= this.keep.count && t >= old) break;
      this.#index.delete(id);
      this.#remove(id);
    }
  }

  #remove(id: string): void {
    fs.rmSync(path.join(this.dir, `${id}.json`), { force: true });
    for (const kind of ['image', 'attention'] as const) {
      for (let i = 0; ; i++) {
        const png = this.#png(id, kind, i);
        if (!fs.existsSync(png)) break;
        fs.rmSync(png, { force: true });
      }
    }
  }
}
