// The server's identity store: one identity file (Identity.save's safetensors) per id in one folder.
// Ids are checked against ID_PATTERN and the resolved path must stay inside the folder, so no id
// can name a file elsewhere.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { IdforgeError } from '../errors.js';
import { Identity, type IdentitySaveOptions } from '../identity/identity.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { ID_PATTERN } from './api.js';

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

  constructor(dir: string) {
    this.dir = path.resolve(dir);
    fs.mkdirSync(this.dir, { recursive: true });
  }

  newId(): string {
    return randomBytes(8).toString('hex');
  }

  /** The file of an id; E_ARGUMENT for anything that is not a plain id. */
  file(id: string): string {
    if (typeof id !== 'string' || !ID.test(id)) throw new IdforgeError('E_ARGUMENT', `identity id must match ${ID_PATTERN}, got ${JSON.stringify(id)}`);
    const p = path.resolve(this.dir, id + EXT);
    if (path.dirname(p) !== this.dir) throw new IdforgeError('E_ARGUMENT', `identity id ${JSON.stringify(id)} names a path outside the store`);
    return p;
  }

  has(id: string): boolean {
    return fs.existsSync(this.file(id));
  }

  save(id: string, identity: Identity, opts: IdentitySaveOptions = {}): IdentityInfo {
    const file = this.file(id);
    identity.save(file, opts);
    return this.info(id);
  }

  load(id: string): Identity {
    const file = this.file(id);
    if (!fs.existsSync(file)) throw new IdforgeError('E_NOT_FOUND', `no identity ${JSON.stringify(id)}`);
    return Identity.load(file);
  }

  info(id: string): IdentityInfo {
    const file = this.file(id);
    if (!fs.existsSync(file)) throw new IdforgeError('E_NOT_FOUND', `no identity ${JSON.stringify(id)}`);
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
  }

  list(): IdentityInfo[] {
    const ids = fs.readdirSync(this.dir).filter((f) => f.endsWith(EXT)).map((f) => f.slice(0, -EXT.length)).filter((id) => ID.test(id));
    const out: IdentityInfo[] = [];
    for (const id of ids.sort()) {
      try {
        out.push(this.info(id));
      } catch {
        // a file being written or a foreign file: not listed
      }
    }
    return out;
  }

  remove(id: string): void {
    const file = this.file(id);
    if (!fs.existsSync(file)) throw new IdforgeError('E_NOT_FOUND', `no identity ${JSON.stringify(id)}`);
    fs.rmSync(file);
  }
}
