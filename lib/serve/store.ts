// The server's identity store: one identity file (Identity.save's safetensors) per id in one folder.
// Ids are checked against ID_PATTERN and the resolved path must stay inside the folder, so no id
// can name a file elsewhere. An id is taken from the moment a request claims it (reserve) until its
// identity is written or its job fails, so two uploads can never race for one id. Failures reach
// clients as ServeErrors without paths; the cause (with the path) is for the log.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Identity, type IdentitySaveOptions } from '../identity/identity.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { ID_PATTERN } from './api.js';
import { ServeError } from './errors.js';

const ID = new RegExp(ID_PATTERN);
const EXT = '.safetensors';

export interface IdentityInfo {
  id: string;
  name?: string;
  method: string;
  stages: number;
  words: number;
  dim: number;
  created: string;
}

export class IdentityStore {
  readonly dir: string;
  readonly #reserved = new Set<string>();

  constructor(dir: string) {
    this.dir = path.resolve(dir);
    fs.mkdirSync(this.dir, { recursive: true });
  }

  newId(): string {
    return randomBytes(8).toString('hex');
  }

  /** The file of an id; E_ARGUMENT for anything that is not a plain id. */
  file(id: string): string {
    if (typeof id !== 'string' || !ID.test(id)) throw new ServeError('E_ARGUMENT', `identity id must match ${ID_PATTERN}`);
    const p = path.resolve(this.dir, id + EXT);
    if (path.dirname(p) !== this.dir) throw new ServeError('E_ARGUMENT', 'identity id names a path outside the store');
    return p;
  }

  /** Whether an identity file of this id is stored (a folder or other non-file of that name is not one). */
  has(id: string): boolean {
    return fs.lstatSync(this.file(id), { throwIfNoEntry: false })?.isFile() === true;
  }

  /** Claims an id for an identity about to be made (E_EXISTS when stored, claimed, or its name is taken); returns the release. */
  reserve(id: string): () => void {
    const taken = this.#reserved.has(id) || fs.lstatSync(this.file(id), { throwIfNoEntry: false }) !== undefined;
    if (taken) throw new ServeError('E_EXISTS', `identity ${id} exists or is being made`);
    this.#reserved.add(id);
    let once = false;
    return () => {
      if (!once) this.#reserved.delete(id);
      once = true;
    };
  }

  save(id: string, identity: Identity, opts: IdentitySaveOptions = {}): IdentityInfo {
    const file = this.file(id);
    try {
      identity.save(file, opts);
    } catch (e) {
      throw new ServeError('E_INTERNAL', `identity ${id} could not be stored`, { cause: e });
    }
    return this.info(id);
  }

  load(id: string): Identity {
    const file = this.#existing(id);
    try {
      return Identity.load(file);
    } catch (e) {
      throw new ServeError('E_INTERNAL', `identity ${id} is damaged on the server`, { cause: e });
    }
  }

  info(id: string): IdentityInfo {
    const file = this.#existing(id);
    try {
      const st = SafetensorsFile.open(file);
      try {
        const m = st.metadata;
        return {
          id, method: m.method ?? 'custom', stages: Number(m.stages), words: Number(m.words), dim: Number(m.dim),
          created: m.created ?? fs.statSync(file).mtime.toISOString(), ...(m.name !== undefined ? { name: m.name } : {}),
        };
      } finally {
        st.close();
      }
    } catch (e) {
      throw new ServeError('E_INTERNAL', `identity ${id} is damaged on the server`, { cause: e });
    }
  }

  /** The stored identities; unreadable files are left out (a file being written, a foreign file). */
  list(): IdentityInfo[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch (e) {
      throw new ServeError('E_INTERNAL', 'the identity store cannot be read', { cause: e });
    }
    const ids = names.filter((f) => f.endsWith(EXT)).map((f) => f.slice(0, -EXT.length)).filter((id) => ID.test(id));
    const out: IdentityInfo[] = [];
    for (const id of ids.sort()) {
      try {
        out.push(this.info(id));
      } catch {
        // not an identity file
      }
    }
    return out;
  }

  remove(id: string): void {
    const file = this.#existing(id);
    try {
      fs.rmSync(file);
    } catch (e) {
      throw new ServeError('E_INTERNAL', `identity ${id} could not be removed`, { cause: e });
    }
  }

  #existing(id: string): string {
    const file = this.file(id);
    if (!this.has(id)) throw new ServeError('E_NOT_FOUND', `no identity ${id}`);
    return file;
  }
}
