// CLIP (image and text towers of a Hugging Face CLIPModel) on the engine's ops: embeddings and the CLIP score.
export { ClipScorer, cosine, clipScore, type ClipLoadOptions, type ClipScore } from './scorer.js';
export { parseClipConfig, parsePreprocessConfig, type ClipConfig, type ClipPreprocessConfig, type ClipTextTowerConfig, type ClipVisionTowerConfig } from './config.js';
export { clipPixels, resizeBicubic } from './preprocess.js';
