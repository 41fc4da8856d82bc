/**
 * The files of an evaluation: report.json (settings, the anchor rows, every image's numbers),
 * contact.png (the reference "R" and every image with its number under it), report.html (the same
 * numbers as tables, the contact sheet and each image), images/NNN.png and reference.png.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { saveImage } from '../io/image.js';
import type { EvalResult, ImageRecord, RowSummary, Stat } from './evaluate.js';
import { contactSheet, type SheetTile } from './sheet.js';
import { invalid, text } from '../validate.js';

export interface ReportFiles {
  json: string;
  html: string;
  contactSheet: string;
  images: string[];
  reference: string;
}

const imageName = (r: ImageRecord): string => `images/${String(r.index).padStart(3, '0')}.png`;

function round(x: number, digits = 4): number {
  return Number.isFinite(x) ? Number(x.toFixed(digits)) : x;
}

function roundStat(s: Stat | null, digits = 4): Stat | null {
  return s ? { mean: round(s.mean, digits), std: round(s.std, digits) } : null;
}

function roundRow(r: RowSummary): RowSummary {
  return {
    ...r, faceRate: round(r.faceRate), idSimilarity: roundStat(r.idSimilarity)!, clipCosine: roundStat(r.clipCosine)!,
    clipScore: roundStat(r.clipScore, 2)!, idPrompt: roundStat(r.idPrompt)!, timeMs: roundStat(r.timeMs, 0),
  };
}

/** The JSON document of report.json (no pixels). */
export function reportJson(result: EvalResult): unknown {
  const rows = Object.fromEntries(Object.entries(result.rows).map(([k, v]) => [k, roundRow(v)]));
  return {
    format: 'idforge-eval', version: 1,
    settings: result.settings,
    metrics: {
      idSimilarity: 'cosine of the face embeddings of the largest face in the image and in the reference photo; 0 when no face is detected',
      clipCosine: 'cosine of the CLIP image and text embeddings (the prompt with <id> read as "a person")',
      clipScore: '100 · max(clipCosine, 0)',
      idPrompt: `idSimilarity when clipCosine ≥ ${result.settings.threshold}, else 0 (SeFi-IDE's ID(Prompt))`,
      aggregates: 'mean ± std (population) over the images of a row',
    },
    rows,
    reference: { file: 'reference.png', faceDetected: result.reference.faceDetected },
    images: result.images.map((r) => ({
      index: r.index, variant: r.variant, prompt: r.prompt, seed: r.seed, file: imageName(r),
      idSimilarity: round(r.idSimilarity), faceDetected: r.faceDetected, clipCosine: round(r.clipCosine),
      clipScore: round(r.clipScore, 2), idPrompt: round(r.idPrompt), timeMs: r.timeMs,
    })),
    warnings: result.warnings,
  };
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
const pm = (s: Stat | null, d = 3): string => (s ? `${s.mean.toFixed(d)} ± ${s.std.toFixed(d)}` : '—');

function html(result: EvalResult): string {
  const s = result.settings;
  const rows = [result.rows.identity, result.rows.generic, result.rows.reference].filter((r): r is RowSummary => !!r);
  const summary = rows.map((r) => `<tr><td>${esc(r.label)}</td><td>${r.images}</td><td>${pm(r.idSimilarity)}</td><td>${(100 * r.faceRate).toFixed(0)}%</td>` +
    `<td>${pm(r.clipCosine)}</td><td>${pm(r.clipScore, 1)}</td><td>${pm(r.idPrompt)}</td><td>${r.timeMs ? pm({ mean: r.timeMs.mean / 1000, std: r.timeMs.std / 1000 }, 2) : '—'}</td></tr>`).join('\n');
  const figures = result.images.map((r) => `<figure><img src="${imageName(r)}" alt="image ${r.index}"><figcaption><b>${r.index}</b> ${r.variant} · seed ${r.seed}<br>${esc(r.prompt)}<br>` +
    `ID ${r.idSimilarity.toFixed(3)}${r.faceDetected ? '' : ' (no face)'} · CLIP ${r.clipCosine.toFixed(3)} (${r.clipScore.toFixed(1)}) · ID(P) ${r.idPrompt.toFixed(3)} · ${(r.timeMs / 1000).toFixed(2)} s</figcaption></figure>`).join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>idforge eval</title>
<style>body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}figure{display:inline-block;width:200px;margin:6px;vertical-align:top;font-size:12px}figure img{width:200px;image-rendering:pixelated}
.sheet{max-width:100%}</style></head><body>
<h1>idforge eval</h1>
<p>Model <code>${esc(s.model)}</code> (${esc(s.device)} ${esc(s.dtype)}), identity ${s.identity === null ? 'none' : `<code>${esc(s.identity)}</code> at scale ${s.identityScale}`}, CLIP <code>${esc(s.clip)}</code>;
${s.prompts.length} prompts × ${s.seeds.length} seed(s), ${s.steps} steps, ${s.width}×${s.height}, guidance ${s.guidanceScale}, ID(Prompt) threshold ${s.threshold}.</p>
<table><tr><th>row</th><th>images</th><th>ID similarity</th><th>face found</th><th>CLIP cosine</th><th>CLIP score</th><th>ID(Prompt)</th><th>time (s)</th></tr>
${summary}</table>
<p>ID similarity: cosine of the face embeddings of an image and of the reference photo (0 without a face). CLIP score: 100·max(cos, 0) of the image and the prompt with &lt;id&gt; read as “a person”.
ID(Prompt): the ID similarity of images whose CLIP cosine is ≥ ${s.threshold}, else 0. Values are mean ± std over the row's images.
The reference row is the reference photo against itself (ID) and against every prompt (CLIP); the generic row is the same prompts and seeds with identityScale 0.</p>
${result.warnings.length ? `<p>Warnings: ${result.warnings.map(esc).join('; ')}</p>` : ''}
<h2>Contact sheet</h2><img class="sheet" src="contact.png" alt="contact sheet">
<h2>Images</h2>
<figure><img src="reference.png" alt="reference"><figcaption><b>R</b> reference photo${result.reference.faceDetected ? '' : ' (no face detected)'}</figcaption></figure>
${figures}
</body></html>
`;
}

/** Writes the report files into `dir` (created when missing). */
export async function writeReport(result: EvalResult, dir: string, opts: { columns?: number; cell?: number } = {}): Promise<ReportFiles> {
  text(dir, 'the output folder', { nonEmpty: true, where: 'writeReport' });
  try {
    fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
  } catch (e) {
    throw invalid('the output folder', `a folder that can be created (${(e as Error).message})`, dir, { where: 'writeReport', cause: e });
  }
  const files: ReportFiles = {
    json: path.join(dir, 'report.json'), html: path.join(dir, 'report.html'), contactSheet: path.join(dir, 'contact.png'),
    images: result.images.map((r) => path.join(dir, imageName(r))), reference: path.join(dir, 'reference.png'),
  };
  await saveImage(result.reference.image, files.reference);
  for (let i = 0; i < result.images.length; i++) await saveImage(result.images[i]!.image, files.images[i]!);
  // The reference first, then each row (identity, generic) starting on a new line of the grid.
  const columns = opts.columns ?? 10;
  const tiles: SheetTile[] = [{ image: result.reference.image, label: 'R' }];
  let variant: string | undefined;
  for (const r of result.images) {
    if (r.variant !== variant) while (tiles.length % columns) tiles.push({ image: null, label: '' });
    variant = r.variant;
    tiles.push({ image: r.image, label: String(r.index) });
  }
  await saveImage(contactSheet(tiles, { columns, ...(opts.cell ? { cell: opts.cell } : {}) }), files.contactSheet);
  fs.writeFileSync(files.json, `${JSON.stringify(reportJson(result), null, 1)}\n`);
  fs.writeFileSync(files.html, html(result));
  return files;
}
