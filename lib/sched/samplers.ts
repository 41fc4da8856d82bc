/** The sampler factory: a {@link Sampler} by name, from a model's scheduler_config.json. */
import { parseSchedulerConfig } from './config.js';
import { DDIMScheduler } from './ddim.js';
import { dpmSolverSampler } from './dpmsolver.js';
import { eulerSampler } from './euler.js';
import { lcmSampler } from './lcm.js';
import { badSampler, isSamplerName, SAMPLERS, type Sampler, type SamplerName, type SamplerOptions } from './sampler.js';
import { integer } from '../validate.js';

/**
 * The sampler `name` for `steps` steps, built from `config` (any diffusers scheduler config: the
 * betas, prediction_type, timestep_spacing and steps_offset are read, as each diffusers scheduler's
 * from_config does). Throws E_ARGUMENT naming `sampler` for an unknown name.
 */
export function makeSampler(name: unknown, config: object, steps: number, opts: SamplerOptions = {}): Sampler {
  if (!isSamplerName(name)) throw badSampler(name);
  const cfg = parseSchedulerConfig(config);
  const base = DDIMScheduler.fromParsed(cfg);
  const n = base.numTrainTimesteps;
  integer(steps, 'steps', 1, n);
  switch (name) {
    case 'ddim':
      return base.sampler(steps, opts.eta ?? 0);
    case 'dpmpp-2m':
    case 'dpmpp-2m-karras':
      return dpmSolverSampler(base, steps, name === 'dpmpp-2m-karras');
    case 'euler':
    case 'euler-a':
      return eulerSampler(base, steps, name === 'euler-a');
    case 'lcm':
      return lcmSampler(base, steps, opts.strength ?? 1);
  }
}

export { SAMPLERS, isSamplerName, type Sampler, type SamplerName };
