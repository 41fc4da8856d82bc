// The LoRA files a server offers by name (`idforge serve --loras DIR`, and each worker's own
// `--loras DIR`): the .safetensors files of one folder, named by their file name without the
// extension. Requests name them (`loras: [{ name, scale }]`), never a path. With an engine at hand
// each file is checked against its model once, at startup (headers only): a file that does not fit
// is not offered, and the log says why; a request naming it gets a 400 that says so.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Engine } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { LORA_NAME_PATTERN } from './api.js';
import { ServeError } from './errors.js';

const NAME = new RegExp(LORA_NAME_PATTERN);
const EXT = '.safetensors';

export class LoraLibrary {
  readonly #files: Map<string, { path: string; bytes: number }>;

  private constructor(
    readonly dir: string,
    files: Map<string, { path: string; bytes: number }>,
    /** Entries that are no .safetensors file (ignored). */
    readonly skipped: string[],
    /** .safetensors files not offered, with why (for the log: the reasons name server paths). */
    readonly unfit: { file: string; reason: string }[],
  ) {
    this.#files = files;
  }

  /**
   * The folder's .safetensors files, read once (restart to offer new files). A file whose name is
   * not a LoRA name, whose header is broken or (given `engine`) that does not fit its model is
   * listed in `unfit` instead of offered. E_NOT_FOUND when the folder cannot be read.
   */
  static open(dir: string, engine?: Engine): LoraLibrary {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch (e) {
      throw new IdforgeError('E_NOT_FOUND', `--loras: cannot read the folder ${dir} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
    }
    const files = new Map<string, { path: string; bytes: number }>();
    const skipped: string[] = [];
    const unfit: { file: string; reason: string }[] = [];
    for (const d of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (!d.isFile() || !d.name.endsWith(EXT)) {
        skipped.push(d.name);
        continue;
      }
      const name = d.name.slice(0, -EXT.length);
      const p = path.join(dir, d.name);
      try {
        if (!NAME.test(name)) throw new Error(`its name is no LoRA name (${LORA_NAME_PATTERN} before ${EXT})`);
        const st = SafetensorsFile.open(p);
        const bytes = st.fileSize;
        st.close();
        engine?.checkLoras([{ path: p }]);
        files.set(name, { path: p, bytes });
      } catch (e) {
        unfit.push({ file: d.name, reason: (e as Error).message });
      }
    }
    return new LoraLibrary(dir, files, skipped, unfit);
  }

  /** What GET /loras lists. */
  list(): { name: string; bytes: number }[] {
    return [...this.#files].map(([name, f]) => ({ name, bytes: f.bytes }));
  }

  /**
   * The files for `loras`, or a 400 naming the first one not offered (why, when it was left out at
   * startup) and the names that are.
   */
  resolve(loras: readonly { name: string; scale: number }[]): { path: string; scale: number }[] {
    return loras.map(({ name, scale }) => {
      const f = this.#files.get(name);
      if (f) return { path: f.path, scale };
      const left = this.unfit.some((u) => u.file === `${name}${EXT}`) ? `'${name}' does not fit this model (the server log says why)` : `no LoRA named '${name}'`;
      throw new ServeError('E_ARGUMENT', `loras: ${left}; ${offered(this)}`);
    });
  }
}

const offered = (l: LoraLibrary | undefined): string => {
  const names = l?.list().map((f) => f.name) ?? [];
  return names.length ? `offered: ${names.join(', ')} (GET /loras)` : "none is offered (idforge serve --loras DIR)";
};

/** A request's LoRAs checked against the server's library (scale 1 when left out): a 400 for any it does not offer. */
export function checkLoras(library: LoraLibrary | undefined, loras: readonly { name: string; scale?: number }[]): { name: string; scale: number }[] {
  const out = loras.map((l) => ({ name: l.name, scale: l.scale ?? 1 }));
  if (!library && out.length) throw new ServeError('E_ARGUMENT', `loras: ${offered(undefined)}`);
  library?.resolve(out);
  return out;
}

/**
 * Makes the engine's LoRA set the job's (names resolved in `library`; a job without LoRAs runs on
 * the base weights), merging only when it differs from the set merged now: consecutive jobs with
 * the same LoRAs pay nothing. The engine runs one job at a time, so no other job sees these weights.
 */
export async function useLoras(engine: Engine, loras: readonly { name: string; scale: number }[], library: LoraLibrary | undefined): Promise<void> {
  if (loras.length && !library) throw new ServeError('E_ARGUMENT', 'loras: this worker offers no LoRAs (start it with --loras DIR)');
  const want = library ? library.resolve(loras) : [];
  const have = engine.loras;
  if (want.length === have.length && want.every((w, i) => w.path === have[i]!.path && w.scale === have[i]!.scale)) return;
  try {
    await engine.setLoras(want);
  } catch (e) {
    // The files were checked at startup: one changed on disk since, or the merge itself failed.
    throw new ServeError('E_INTERNAL', `the LoRAs ${loras.map((l) => `'${l.name}'`).join(', ')} could not be merged (the server log says why)`, { cause: e });
  }
}
