// idforge: identity-preserving Stable Diffusion 1.x from one face photo.
export { Engine } from './engine.js';
export type { DeviceOptions, LoadOptions, GenerateOptions, GenerateResult, ProgressInfo, TextOptions, LearnOptions, LearnProgress, AugmentOptions } from './options.js';
export { ModelRuntime, resolveBackend } from './runtime/runtime.js';
export { SdRuntime, type SdWeights, type TextInjection, type UNetProgramOptions } from './runtime/sd.js';
export { Tensor, type DType, type DeviceName, type TensorOptions } from './tensor.js';
export { IdforgeError, type ErrorCode } from './errors.js';
export { backends, memory, type Backends, type CudaStatus } from './native.js';
export { saveImage, loadImage, type RawImage } from './io/image.js';
export { SafetensorsFile, writeSafetensors } from './io/safetensors.js';
export { openModel, type ModelSource } from './io/checkpoint.js';
export { ClipTokenizer } from './text/tokenizer.js';
export { DDIMScheduler } from './sched/ddim.js';
export { makeSampler, SAMPLERS, type Sampler, type SamplerName } from './sched/samplers.js';
export { randn } from './sched/random.js';
export { Identity, IdEncoder, prepareFace, expandPrompt, type IdentityMethod, type PreparedFace, type Landmarks } from './identity/index.js';
export { attentionHeatmap, type AttentionCapture, type AttentionMap, type CaptureAttentionOptions } from './attention.js';
export { bench, type BenchOptions, type BenchReport } from './bench/index.js';
export { SEFI_TEMPLATES, IdentityLearner } from './learn/learn.js';
