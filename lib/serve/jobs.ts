// Runs one job on one engine: the only place that turns a job payload into engine calls, shared by
// the in-process queue and the BullMQ worker (so both give the same image for the same payload).
// The server checks a generate job's prompt against its identity with the same mapping, at submission.
import { heatmapCapture, imageHeatmaps, spreadSteps, type CaptureAttentionOptions } from '../attention.js';
import type { Engine } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { expandFor } from '../generate/conditioning.js';
import { identityMap, type GenerateOptions } from '../generate/options.js';
import { expandPrompt } from '../identity/placeholders.js';
import { identityRegions, regionBoxes } from '../regions.js';
import type { ModelConfigs } from '../io/configs.js';
import { encodeJpeg, encodePng, type RawImage } from '../io/image.js';
import type { ClipTokenizer } from '../text/tokenizer.js';
import { fromWire, toWire, type AttentionPng, type GenerateJob, type JobData, type JobResult, type Progress } from './api.js';
import { useLoras, type LoraLibrary } from './loras.js';

/**
 * Steps a served heatmap averages (spread over the run): its maps and the work of drawing it stay
 * bounded however many steps the job has.
 */
export const HEATMAP_STEPS = 8;

/** A generate job's engine options: the one mapping from a job payload to Engine.generate. */
export function generateOptions(job: GenerateJob): GenerateOptions {
  return {
    prompt: job.prompt, negativePrompt: job.negativePrompt, width: job.width, height: job.height, steps: job.steps,
    guidanceScale: job.guidanceScale, seed: job.seed, sampler: job.sampler,
    ...(job.identity ? { identity: fromWire(job.identity) } : {}),
    ...(job.identities ? { identities: Object.fromEntries(Object.entries(job.identities).map(([name, w]) => [name, fromWire(w)])) } : {}),
    ...(job.identityScale !== undefined ? { identityScale: job.identityScale } : {}),
    ...(job.regions !== undefined ? { regions: job.regions } : {}),
  };
}

/** What prompts are checked with: a tokenizer, and the model's configs when the server has the model (its text width). */
export interface PromptModel {
  tokenizer: ClipTokenizer;
  configs?: ModelConfigs;
}

/**
 * What generate() would refuse about the prompt and its identity, refused at submission with
 * generate()'s own expansion: `<id>` without an identity, an identity without `<id>`, an unknown
 * `<id:name>`, identity slots past the 77 tokens, an identity of another text width (E_IDENTITY);
 * a region box that is not one, or one naming no identity of the prompt (E_ARGUMENT).
 */
export function checkPrompt(model: PromptModel, job: GenerateJob): void {
  const opts = generateOptions(job);
  const identities = identityMap(opts);
  const e = model.configs ? expandFor({ tokenizer: model.tokenizer, configs: model.configs }, opts.prompt, identities) : expandPrompt(model.tokenizer, opts.prompt, identities);
  // Every identity sent is used (generate() would ignore one the prompt does not name).
  const used = new Set(e.rows.map((r) => r.name));
  for (const name of Object.keys(job.identities ?? {}))
    if (!used.has(name)) throw new IdforgeError('E_IDENTITY', `identities.${name} is not in the prompt: write <id:${name}> where that person goes, or leave it out`);
  identityRegions(regionBoxes(opts.regions), e);
}

/**
 * What a heatmap needs captured, and no more: the cross-attention layers nearest 16² (heatmapCapture),
 * heads averaged, at HEATMAP_STEPS steps.
 */
function heatmapOptions(engine: Engine, job: GenerateJob): CaptureAttentionOptions {
  const capture = heatmapCapture(engine.crossAttentionLayers, job.height / engine.latentFactor, engine.configs.unet.blockOutChannels.length);
  return { ...capture, steps: spreadSteps(job.steps, HEATMAP_STEPS) };
}

/** The placeholders a job's heatmaps are drawn for: its identity's `<id>`, or each `<id:name>`. */
const heatmapTokens = (job: GenerateJob): string[] => (job.identities ? Object.keys(job.identities).map((name) => `<id:${name}>`) : job.identity ? ['<id>'] : []);

export async function runJob(engine: Engine, job: JobData, onProgress: (p: Progress) => void, signal?: AbortSignal, loras?: LoraLibrary): Promise<JobResult> {
  // Every job on its own LoRA set: a generate's, none for the others (learning on the base weights).
  await useLoras(engine, job.kind === 'generate' ? job.loras ?? [] : [], loras);
  if (job.kind === 'generate') {
    const png = async (img: RawImage) => (await encodePng(img)).toString('base64');
    // Reports in step order; a step's preview (when the engine has a preview VAE) is encoded first.
    let reported: Promise<void> = Promise.resolve();
    const r = await engine.generate({
      ...generateOptions(job),
      ...(signal ? { signal } : {}),
      ...(job.attention ? { captureAttention: heatmapOptions(engine, job) } : {}),
      // Finished steps only: the in-step ticks (p.fraction) repeat the last step number, which
      // the job's step history would read as a retried run.
      onProgress: (p) => {
        if (p.fraction !== undefined) return;
        const { step, steps, preview } = p;
        reported = reported.then(async () => onProgress({ step, steps, ...(preview ? { preview: (await encodeJpeg(preview[0]!)).toString('base64') } : {}) }));
      },
    }).catch(async (e: unknown) => {
      await reported.catch(() => {}); // the run's own error is the one to report
      throw e;
    });
    await reported;
    r.latents.dispose();
    r.pixels.dispose();
    const images = await Promise.all(r.images.map(png));
    const attention: AttentionPng[] = [];
    // One image per job: each token's heatmap is over it.
    if (job.attention) for (const token of heatmapTokens(job)) attention.push({ token, png: await png((await imageHeatmaps(r, token))[0]!) });
    return { kind: 'generate', images, seed: job.seed, warnings: r.warnings, ...(job.attention ? { attention } : {}) };
  }
  if (job.kind === 'learn') {
    const identity = await engine.learnIdentity(Buffer.from(job.image, 'base64'), {
      steps: job.steps, seed: job.seed, ...(job.name !== undefined ? { name: job.name } : {}), ...(signal ? { signal } : {}),
      onProgress: (p) => onProgress({ step: p.step, steps: p.steps, ...(Number.isFinite(p.loss) ? { loss: p.loss } : {}) }),
    });
    return { kind: 'learn', identityId: job.identityId, identity: toWire(identity) };
  }
  throw new IdforgeError('E_ARGUMENT', `unknown job kind ${JSON.stringify((job as { kind?: unknown }).kind)}`);
}
