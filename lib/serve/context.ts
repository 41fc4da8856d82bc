// What the routes of every area share. buildServer (server.ts) makes one Ctx and hands it to each
// area's routes: health, jobs and identities in server.ts, the studio page in studio.ts.
import type { EncodeOptions } from '../dreamidentity/encoder.js';
import type { Identity } from '../identity/identity.js';
import type { RawImage } from '../io/image.js';
import type { Limits, Timeouts } from './api.js';
import type { PromptModel } from './jobs.js';
import type { LoraLibrary } from './loras.js';
import type { JobQueue } from './queue.js';
import type { ResultStore } from './results.js';
import type { IdentityStore } from './store.js';
import type { Uploads } from './upload.js';

export interface Ctx {
  limits: Limits;
  timeouts: Timeouts;
  queue: JobQueue;
  store: IdentityStore;
  results: ResultStore | undefined;
  uploads: Uploads;
  prompts: PromptModel;
  encode: ((image: RawImage, opts: EncodeOptions) => Promise<Identity>) | undefined;
  /** Whether requests need the bearer token (its value stays in server.ts's hook). */
  auth: boolean;
  /** Learning job id → the release of its identity id's reservation. */
  learning: Map<string, () => void>;
  /** Ends every open event stream (shutdown in Redis mode, where jobs outlive this server). */
  streams: Set<() => void>;
  /** The LoRA files requests may name (--loras), listed at GET /loras. */
  loras: LoraLibrary | undefined;
  /** Whether progress events carry preview images (an in-process engine with --preview-vae). */
  previews: boolean;
}
