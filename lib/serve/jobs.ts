// Runs one job on one engine: the only place that turns a job payload into engine calls, shared by
// the in-process queue and the BullMQ worker (so both give the same image for the same payload).
import type { Engine, GenerateOptions } from '../engine.js';
import { IdforgeError } from '../errors.js';
import { encodePng } from '../io/image.js';
import type { SamplerName } from '../sched/sampler.js';
import { fromWire, toWire, type JobData, type JobResult, type Progress } from './api.js';


export async function runJob(engine: Engine, job: JobData, onProgress: (p: Progress) => void, signal?: AbortSignal): Promise<JobResult> {
  if (job.kind === 'generate') {
    const opts: GenerateOptions = {
      prompt: job.prompt, negativePrompt: job.negativePrompt, width: job.width, height: job.height, steps: job.steps,
      guidanceScale: job.guidanceScale, seed: job.seed, sampler: job.sampler as SamplerName,
      ...(job.identity ? { identity: fromWire(job.identity) } : {}),
      ...(job.identityScale !== undefined ? { identityScale: job.identityScale } : {}),
      ...(signal ? { signal } : {}),
      // Finished steps only: the in-step ticks (p.fraction) repeat the last step number, which
      // the job's step history would read as a retried run.
      onProgress: (p) => {
        if (p.fraction === undefined) onProgress({ step: p.step, steps: p.steps });
      },
    };
    const r = await engine.generate(opts);
    r.latents.dispose();
    r.pixels.dispose();
    const images = await Promise.all(r.images.map(async (img) => (await encodePng(img)).toString('base64')));
    return { kind: 'generate', images, seed: job.seed, warnings: r.warnings };
  }
  if (job.kind === 'learn') {
    const identity = await engine.learnIdentity(Buffer.from(job.image, 'base64'), {
      steps: job.steps, seed: job.seed, ...(job.name !== undefined ? { name: job.name } : {}), ...(signal ? { signal } : {}),
      onProgress: (p) => onProgress({ step: p.step, steps: p.steps }),
    });
    return { kind: 'learn', identityId: job.identityId, identity: toWire(identity) };
  }
  throw new IdforgeError('E_ARGUMENT', `unknown job kind ${JSON.stringify((job as { kind?: unknown }).kind)}`);
}
