// Face detection and embedding with pretrained models from the installed npm packages (tfjs loads on first use).
export { FaceAnalyzer, similarity, type FaceAnalyzerOptions, type FaceImage } from './analyzer.js';
export type { Face, DetectOptions, Point } from './detect.js';
