// idforge: identity-preserving Stable Diffusion 1.x from one face photo.
export { Engine, type NoiseOptions, type TextOptions } from './engine.js';
export type { LoraOptions, SetLorasOptions } from './runtime/lora.js';
export type { Region } from './regions.js';
export type { GenerateOptions, GenerateResult, ProgressInfo } from './generate/options.js';
export { ModelRuntime, resolveBackend, type DeviceOptions } from './runtime/runtime.js';
export { SdRuntime, type LoadOptions, type SdWeights, type TextInjection, type UNetProgramOptions } from './runtime/sd.js';
export { Tensor, type DType, type DeviceName, type TensorOptions } from './tensor.js';
export { IdforgeError, type ErrorCode } from './errors.js';
export { backends, memory, type Backends, type CpuIsa, type CpuStatus, type CudaStatus } from './native.js';
export { saveImage, loadImage, type RawImage } from './io/image.js';
export { SafetensorsFile, writeSafetensors } from './io/safetensors.js';
export { openModel, openVae, type ModelSource, type VaeSource } from './io/checkpoint.js';
export { readLora, type LoraFile, type LoraModule } from './io/lora.js';
export { ClipTokenizer } from './text/tokenizer.js';
export { DDIMScheduler } from './sched/ddim.js';
export { makeSampler, SAMPLERS, type Sampler, type SamplerName } from './sched/samplers.js';
export { randn } from './sched/random.js';
export { FaceAnalyzer, similarity, type Face, type DetectOptions, type FaceAnalyzerOptions } from './faces/index.js';
export { Identity, prepareFace, expandPrompt, type IdentityMethod, type PreparedFace, type Landmarks } from './identity/index.js';
export { attentionHeatmap, type AttentionCapture, type AttentionMap, type CaptureAttentionOptions } from './attention.js';
export { bench, type BenchOptions, type BenchReport } from './bench/index.js';
export { SEFI_TEMPLATES, IdentityLearner } from './learn/learn.js';
export type { LearnOptions, LearnProgress, AugmentOptions } from './learn/options.js';
export { ClipScorer, cosine, clipScore, type ClipLoadOptions, type ClipScore } from './clip/index.js';
export { evaluate, writeReport, DEFAULT_PROMPTS, type EvaluateOptions, type EvalResult, type ReportFiles } from './eval/index.js';
export {
  IdEncoder, EncoderTrainer, trainEncoder, RECONSTRUCTION_TEMPLATES, buildEditDataset, engineGenerator,
  type EncoderTrainerOptions, type TrainBatch, type TrainScope, type LossAndGrads, type AdamStepOptions, type TrainStepValues, type OptimizerState,
  type TrainEncoderOptions, type TrainProgress, type TrainResult, type BuildEditDatasetOptions, type DatasetRow, type ImageGenerator,
} from './dreamidentity/index.js';
export { Adam } from './optim/adam.js';
