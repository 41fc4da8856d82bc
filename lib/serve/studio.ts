// The studio page's routes, registered by buildServer in one call: the page itself (GET / and
// /studio/*, public: it holds no data; every call it makes carries the token), what it needs to
// know about the server (/studio/config), the face box of a photo (/studio/faces), renaming an
// identity (PATCH /identities/:id) and the ID similarity of a result to the photo
// (/studio/similarity). Face work runs one request at a time: detection holds the event loop.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { FaceAnalyzer } from '../faces/analyzer.js';
import { FACE_PACKAGES, packageDir } from '../faces/tf.js';
import { Identity } from '../identity/identity.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { SAMPLERS, err4, idParam, jobParam, responses } from './api.js';
import type { Ctx } from './context.js';
import { ServeError } from './errors.js';

const ASSETS = fileURLToPath(new URL('../../assets/studio/', import.meta.url));
const FILES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8', 'app.js': 'text/javascript; charset=utf-8', 'api.js': 'text/javascript; charset=utf-8',
  'views.js': 'text/javascript; charset=utf-8', 'regions.js': 'text/javascript; charset=utf-8', 'style.css': 'text/css; charset=utf-8',
};
/** Everything from this server; images as blob: URLs (fetched with the token) and data: URLs (the photos). */
const CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/** Whether the optional face-model packages are installed (checked without loading TensorFlow.js). */
function faceModelsInstalled(): boolean {
  try {
    for (const p of FACE_PACKAGES) packageDir(p);
    return true;
  } catch {
    return false;
  }
}

/** One face job at a time, in order. */
function serial(): <T>(task: () => Promise<T>) => Promise<T> {
  let last: Promise<unknown> = Promise.resolve();
  return (task) => {
    const run = last.then(task);
    last = run.catch(() => {});
    return run;
  };
}

export async function studioRoutes(app: FastifyInstance, ctx: Ctx): Promise<void> {
  const { store, limits, uploads } = ctx;
  const files = new Map(Object.keys(FILES).map((f) => [f, readFileSync(ASSETS + f)]));
  const send = (reply: FastifyReply, file: string) => reply
    .header('content-security-policy', CSP).header('x-content-type-options', 'nosniff').header('referrer-policy', 'no-referrer')
    .header('cache-control', 'no-cache').type(FILES[file]!).send(files.get(file));
  const pub = { config: { public: true } };
  app.get('/', pub, async (_req, reply) => send(reply, 'index.html'));
  app.get<{ Params: { file: string } }>('/studio/:file', { ...pub, schema: { params: { type: 'object', properties: { file: { type: 'string', enum: Object.keys(FILES).filter((f) => f !== 'index.html') } } } } },
    async (req, reply) => send(reply, req.params.file));

  const faces = faceModelsInstalled();
  const once = serial();
  const analyzer = async (): Promise<FaceAnalyzer> => {
    if (!faces) throw new ServeError('E_NO_FACE_MODELS', 'this server has no face models (install idforge with its optional dependencies)');
    const { FaceAnalyzer } = await import('../faces/analyzer.js');
    return FaceAnalyzer.shared();
  };

  app.get('/studio/config', { schema: { response: err4 } }, async () => ({
    mode: ctx.queue.mode, encoder: !!ctx.encode, faces, token: ctx.auth, samplers: SAMPLERS, attention: true, preview: ctx.previews,
    limits: { maxSide: limits.maxSide, maxSteps: limits.maxSteps, maxLearnSteps: limits.maxLearnSteps }, defaultSide: Math.min(512, limits.maxSide),
  }));
  // Face work: the upload's refusals (413, 415) and the face models' absence (501) besides the usual ones.
  const faceErrors = { ...err4, 413: responses.error, 415: responses.error, 501: responses.error };

  const image = { type: 'string', minLength: 16 };
  const box = { type: 'array', items: { type: 'number' } };
  app.post<{ Body: { image: string } }>('/studio/faces', {
    schema: { body: { type: 'object', required: ['image'], additionalProperties: false, properties: { image } }, response: faceErrors },
  }, async (req) => {
    const a = await analyzer();
    const { image: img, scale } = await uploads.decode(req.body.image);
    const found = await once(() => a.detect(img, { maxFaces: 5 }));
    // Boxes in the uploaded photo's pixels (the server may have scaled it down for face work).
    return { faces: found.map((f) => ({ box: f.box.map((v) => Math.round((v / scale) * 10) / 10), score: Math.round(f.score * 1000) / 1000 })) };
  });

  app.patch<{ Params: { id: string }; Body: { name: string } }>('/identities/:id', {
    schema: { params: idParam, body: { type: 'object', required: ['name'], additionalProperties: false, properties: { name: { type: 'string', minLength: 1, maxLength: 100 } } }, response: { 200: responses.identityInfo, ...err4 } },
  }, async (req) => {
    const { id } = req.params;
    const old = store.load(id);
    const st = SafetensorsFile.open(store.file(id));
    const m = { ...st.metadata };
    st.close();
    const renamed = new Identity({ method: old.method, stages: old.stages, words: old.words, dim: old.dim, k: old.kData, v: old.vData, name: req.body.name.trim() });
    return store.save(id, renamed, {
      ...(m.text_dim ? { textDim: Number(m.text_dim) } : {}), ...(m.vocab_hash ? { vocabHash: m.vocab_hash } : {}), ...(m.source ? { source: m.source } : {}),
    });
  });

  app.post<{ Body: { reference: string; job: string; index: number } }>('/studio/similarity', {
    schema: {
      body: {
        type: 'object', required: ['reference', 'job', 'index'], additionalProperties: false,
        properties: { reference: image, job: jobParam.properties.id, index: { type: 'integer', minimum: 0, maximum: 63 } },
      },
      response: { 200: { type: 'object', properties: { similarity: { type: ['number', 'null'] }, reference: box, generated: box } }, ...faceErrors },
    },
  }, async (req) => {
    const a = await analyzer();
    // The picture through the server's own route, with the caller's credentials: no second way to reach a job.
    const res = await app.inject({ method: 'GET', url: `/jobs/${req.body.job}/images/${req.body.index}.png`, headers: { ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}) } });
    if (res.statusCode !== 200) throw new ServeError('E_NOT_FOUND', `job ${req.body.job} has no image ${req.body.index}`);
    const { loadImage } = await import('../io/image.js');
    const generated = await loadImage(res.rawPayload);
    const { image: ref } = await uploads.decode(req.body.reference);
    return once(async () => {
      const [r] = await a.detect(ref, { maxFaces: 1 });
      const [g] = await a.detect(generated, { maxFaces: 1 });
      if (!r || !g) return { similarity: null, ...(r ? { reference: r.box } : {}), ...(g ? { generated: g.box } : {}) };
      const { similarity } = await import('../faces/analyzer.js');
      const s = similarity(await a.embed(ref, r), await a.embed(generated, g));
      return { similarity: Math.round(s * 10000) / 10000, reference: r.box, generated: g.box };
    });
  });
}
