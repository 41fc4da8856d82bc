// Measuring identity: evaluate() (ID similarity, CLIP-T, ID(Prompt), time), its report files and the default prompts.
export { evaluate, stat, type EvaluateOptions, type EvalResult, type ImageRecord, type RowSummary, type Stat, type EvalProgress, type EvalVariant } from './evaluate.js';
export { writeReport, reportJson, type ReportFiles } from './report.js';
export { contactSheet, type SheetTile } from './sheet.js';
export { DEFAULT_PROMPTS, SUBJECT_TEXT, plainPrompt } from './prompts.js';
