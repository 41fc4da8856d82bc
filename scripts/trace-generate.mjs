// How far generate()'s options travel (issue 21): builds a copy of lib/ at a git revision with
// every function body instrumented, then runs one Engine.generate() and one served job (runJob)
// on the tiny model after a warm-up call (programs compiled) and reports
// - the cross-file calls of the call tree, each call site counted once (a reader follows a call
//   once, whatever the loop count): files entered, entries, returns (entries into a file entered
//   before), calls up a layer (callbacks; test/imports.test.ts's layers);
// - every read of the caller's options object (a Proxy): by file and line.
// Usage: node scripts/trace-generate.mjs [rev=HEAD] [--old-layers] [--all]   (after npx tsc and a
// native build; about 20 s on the CPU).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const rev = args.find((a) => !a.startsWith('--')) ?? 'HEAD';
if (args.includes('--old-layers')) process.env.OLD = '1';
if (args.includes('--all')) process.env.TRACE_ALL = '1';
process.env.IDFORGE_ADDON ??= path.join(ROOT, 'build/Release/idforge.node');

function instrument(src, out) {
const libDir = path.join(src, 'lib');
fs.writeFileSync(path.join(src, 'package.json'), JSON.stringify({ type: 'module' }));
if (src !== out) fs.writeFileSync(path.join(out, 'package.json'), JSON.stringify({ type: 'module' }));
const files = fs.readdirSync(libDir, { recursive: true }).filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')).map((f) => path.join(libDir, f));
const program = ts.createProgram(files, {
  target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext,
  lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'], outDir: path.join(out, 'dist'), rootDir: libDir, esModuleInterop: true, skipLibCheck: true, noCheck: true,
});
const transformer = (ctx) => (sf) => {
  const f = ts.factory;
  const rel = path.relative(libDir, sf.fileName);
  const call = (name) => f.createExpressionStatement(f.createCallChain(
    f.createPropertyAccessExpression(f.createIdentifier('globalThis'), '__idfTrace'), f.createToken(ts.SyntaxKind.QuestionDotToken), undefined,
    [f.createStringLiteral(rel), f.createStringLiteral(name)]));
  const nameOf = (n) => {
    if (n.name && (ts.isIdentifier(n.name) || ts.isPrivateIdentifier(n.name) || ts.isStringLiteral(n.name))) return n.name.text;
    if (ts.isConstructorDeclaration(n)) return 'constructor';
    if (n.parent && ts.isVariableDeclaration(n.parent) && ts.isIdentifier(n.parent.name)) return n.parent.name.text;
    if (n.parent && ts.isPropertyAssignment(n.parent) && ts.isIdentifier(n.parent.name)) return n.parent.name.text;
    return '<anon>';
  };
  const visit = (n) => {
    n = ts.visitEachChild(n, visit, ctx);
    const fnLike = ts.isFunctionDeclaration(n) || ts.isMethodDeclaration(n) || ts.isConstructorDeclaration(n) || ts.isGetAccessorDeclaration(n) || ts.isSetAccessorDeclaration(n) || ts.isFunctionExpression(n) || ts.isArrowFunction(n);
    if (!fnLike || !n.body) return n;
    const name = nameOf(ts.getOriginalNode(n));
    let body;
    if (ts.isBlock(n.body)) {
      const st = [...n.body.statements];
      const i = st.length && ts.isExpressionStatement(st[0]) && ts.isCallExpression(st[0].expression) && st[0].expression.expression.kind === ts.SyntaxKind.SuperKeyword ? 1 : 0;
      st.splice(i, 0, call(name));
      body = f.updateBlock(n.body, st);
    } else body = f.createBlock([call(name), f.createReturnStatement(n.body)], true);
    if (ts.isFunctionDeclaration(n)) return f.updateFunctionDeclaration(n, n.modifiers, n.asteriskToken, n.name, n.typeParameters, n.parameters, n.type, body);
    if (ts.isMethodDeclaration(n)) return f.updateMethodDeclaration(n, n.modifiers, n.asteriskToken, n.name, n.questionToken, n.typeParameters, n.parameters, n.type, body);
    if (ts.isConstructorDeclaration(n)) return f.updateConstructorDeclaration(n, n.modifiers, n.parameters, body);
    if (ts.isGetAccessorDeclaration(n)) return f.updateGetAccessorDeclaration(n, n.modifiers, n.name, n.parameters, n.type, body);
    if (ts.isSetAccessorDeclaration(n)) return f.updateSetAccessorDeclaration(n, n.modifiers, n.name, n.parameters, body);
    if (ts.isFunctionExpression(n)) return f.updateFunctionExpression(n, n.modifiers, n.asteriskToken, n.name, n.typeParameters, n.parameters, n.type, body);
    return f.updateArrowFunction(n, n.modifiers, n.typeParameters, n.parameters, n.type, n.equalsGreaterThanToken, body);
  };
  return ts.visitNode(sf, visit);
};
const r = program.emit(undefined, undefined, undefined, false, { before: [transformer] });
if (r.emitSkipped) throw new Error('emit skipped');
for (const l of ['node_modules', 'assets']) if (!fs.existsSync(path.join(out, l))) fs.symlinkSync(path.join(ROOT, l), path.join(out, l));
}

const out = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-trace-'));
execFileSync('sh', ['-c', `git -C '${ROOT}' archive '${rev}' lib | tar -x -C '${out}'`]);
instrument(out, out);
const jobMod = fs.existsSync(path.join(out, 'lib/serve/jobs.ts')) ? 'serve/jobs.js' : 'serve/run.js';
const dist = path.join(out, 'dist') + '/';
// test/imports.test.ts's LAYERS (old paths placed where they were: options.ts and validate.ts of the
// old tree with the API types, sampling.ts and train/ with the pipelines).
const LAYERS = process.env.OLD ? [
  ['errors.ts', 'platform.ts', 'native.ts', 'tensor.ts', 'numeric.ts'],
  ['io/', 'sched/', 'attention.ts', 'regions.ts'],
  ['graph/'], ['optim/'], ['text/', 'unet/', 'vae/', 'faces/'], ['identity/'],
  ['options.ts', 'validate.ts'], ['runtime/'],
  ['sampling.ts', 'learn/', 'train/', 'clip/', 'identity/encoder.ts'],
  ['engine.ts'], ['bench/', 'eval/', 'serve/'], ['index.ts', 'cli.ts', 'cliargs.ts', 'build.ts'],
] : [
  ['errors.ts', 'validate.ts', 'platform.ts', 'native.ts', 'tensor.ts', 'numeric.ts'],
  ['io/', 'sched/', 'attention.ts', 'regions.ts'],
  ['graph/'], ['optim/'], ['text/', 'unet/', 'vae/', 'faces/'], ['identity/'], ['runtime/'],
  ['generate/', 'learn/', 'dreamidentity/', 'clip/'],
  ['engine.ts'], ['bench/', 'eval/', 'serve/'], ['index.ts', 'cli.ts', 'cliargs.ts', 'cli/', 'build.ts'],
];
const rank = (f) => {
  for (const exact of [true, false]) {
    const i = LAYERS.findIndex((l) => l.some((m) => (exact ? m === f : m.endsWith('/') && f.startsWith(m))));
    if (i >= 0) return i;
  }
  return -1;
};
let events = null;
globalThis.__idfTrace = (file, name) => {
  if (!events) return;
  const prep = Error.prepareStackTrace;
  const lim = Error.stackTraceLimit;
  Error.stackTraceLimit = 12;
  Error.prepareStackTrace = (_, cs) => cs;
  const o = {};
  Error.captureStackTrace(o, globalThis.__idfTrace);
  const cs = o.stack;
  Error.prepareStackTrace = prep;
  Error.stackTraceLimit = lim;
  let caller = 'outside';
  let site = '';
  for (const c of cs.slice(1)) {
    const fn = c.getFileName();
    if (!fn || fn.startsWith('node:')) continue;
    const p = fn.replace('file://', '');
    caller = p.startsWith(dist) ? path.relative(dist, p).replace(/\.js$/, '.ts') : 'outside';
    site = `${c.getLineNumber()}:${c.getColumnNumber()}`;
    break;
  }
  const callee = file;
  if (caller !== callee) events.push({ caller, callee, name, site });
};
const summary = (label) => {
  // Each call site once (a reader follows a call once, whatever the loop count), in order of first use.
  const keyed = new Map();
  for (const e of events) { const k = `${e.caller}:${e.site}→${e.callee}:${e.name}`; if (!keyed.has(k)) keyed.set(k, e); }
  const ev = [...keyed.values()];
  events = null;
  const seen = new Set();
  let returns = 0, up = 0;
  const ups = new Map();
  for (const e of ev) {
    if (seen.has(e.callee)) returns++;
    seen.add(e.callee);
    if (e.caller !== 'outside' && rank(e.callee) > rank(e.caller)) { up++; const k = `${e.caller}→${e.callee}`; ups.set(k, (ups.get(k) ?? 0) + 1); }
  }
  const distinct = new Set(ev.map((e) => `${e.caller}→${e.callee}:${e.name}`));
  const fileCount = new Map();
  for (const e of ev) fileCount.set(e.callee, (fileCount.get(e.callee) ?? 0) + 1);
  console.log(`${label}: enters ${seen.size} files ${ev.length} times, ${returns} returns, ${up} up a layer; ${distinct.size} distinct call edges`);
  console.log('  per file:', [...fileCount].sort((a, b) => b[1] - a[1]).map(([f, n]) => `${f} ${n}`).join(', '));
  if (ups.size) console.log('  up:', [...ups].map(([k, n]) => `${k} ${n}`).join(', '));
  if (process.env.TRACE_ALL) for (const e of ev) console.log(`    ${e.caller} → ${e.callee} ${e.name}`);
};
// Who reads the caller's options object: every property read, by file and call site.
const siteOf = () => {
  const prep = Error.prepareStackTrace;
  Error.prepareStackTrace = (_, cs) => cs;
  const o = {};
  Error.captureStackTrace(o, siteOf);
  const cs = o.stack;
  Error.prepareStackTrace = prep;
  for (const c of cs) {
    const fn = c.getFileName();
    if (!fn || fn.startsWith('node:') || fn === import.meta.url || fn.endsWith('/trace-generate.mjs')) continue;
    const p = fn.replace('file://', '');
    return p.startsWith(dist) ? `${path.relative(dist, p).replace(/\.js$/, '.ts')}:${c.getLineNumber()}` : 'outside';
  }
  return 'outside';
};
let reads = null;
const watched = (o) => new Proxy(o, {
  get(t, k, r) { if (reads && typeof k === 'string') reads.push(`${siteOf()} .${k}`); return Reflect.get(t, k, r); },
  ownKeys(t) { if (reads) reads.push(`${siteOf()} ...`); return Reflect.ownKeys(t); },
});
const readSummary = (label) => {
  const sites = [...new Set(reads)];
  reads = null;
  const files = new Set(sites.map((x) => x.split(/[: ]/)[0]));
  console.log(`${label}: the options object is read at ${sites.length} sites in ${files.size} files (${[...files].join(', ')})`);
  if (process.env.TRACE_ALL) console.log('   ', sites.join('\n    '));
};
const { Engine } = await import(dist + 'engine.js');
const engine = await Engine.load(path.join(ROOT, 'test/fixtures/tiny-sd'), { device: 'cpu' });
const opts = { prompt: 'a photo of the face of person', width: 128, height: 128, steps: 2, seed: 7 };
const dispose = (r) => { r.latents.dispose(); r.pixels.dispose(); };
dispose(await engine.generate(opts));
events = [];
reads = [];
dispose(await engine.generate(watched(opts)));
summary('generate()');
readSummary('generate()');
const { runJob } = await import(dist + jobMod);
const job = { kind: 'generate', prompt: opts.prompt, negativePrompt: '', width: 128, height: 128, steps: 2, guidanceScale: 7.5, seed: 7, sampler: 'ddim' };
await runJob(engine, job, () => {});
events = [];
reads = [];
await runJob(engine, watched(job), () => {});
summary('runJob()');
readSummary('runJob()');
engine.dispose();
