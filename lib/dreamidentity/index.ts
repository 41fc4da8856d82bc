// DreamIdentity: the M² ID encoder (a face ViT whose CLS features become pseudo-words), its
// training on a frozen SD model, and the edit-dataset builder that feeds that training.
export { IdEncoder, type IdEncoderLoadOptions, type EncodeOptions, type IdFeatures } from './encoder.js';
export { parseIdEncoderConfig, type IdEncoderConfig } from './config.js';
export { buildIdEncoder } from './encoder-graph.js';
export { EncoderTrainer, type EncoderTrainerOptions, type TrainBatch, type TrainScope, type LossAndGrads, type AdamStepOptions, type TrainStepValues, type OptimizerState } from './encoder-trainer.js';
export { trainEncoder, RECONSTRUCTION_TEMPLATES, type TrainEncoderOptions, type TrainProgress, type TrainResult } from './train.js';
export { buildEditDataset, engineGenerator, type BuildEditDatasetOptions, type DatasetRow, type ImageGenerator } from './dataset.js';
