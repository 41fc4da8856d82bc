// The import rules of lib/, over every lib/**/*.ts file's relative imports (value and type-only
// imports, `export … from`, dynamic `import()` and `import('…')` type references):
// - no import cycle;
// - no import of a higher layer: LAYERS below ranks every lib/ folder and top-level file bottom-up
//   (docs/ARCHITECTURE.md's table), and a module imports only its own layer and the ones below.
//   The rule has 0 exceptions.
// Both checkers are run on synthetic graphs first, so that the real checks can fail.
import t from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const LIB = fileURLToPath(new URL('../lib/', import.meta.url));

/** Every module specifier a TypeScript source names, whatever the import form. */
export function specifiers(file: string, text: string): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: string[] = [];
  const visit = (n: ts.Node): void => {
    if ((ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) && n.moduleSpecifier && ts.isStringLiteral(n.moduleSpecifier)) out.push(n.moduleSpecifier.text);
    else if (ts.isImportEqualsDeclaration(n) && ts.isExternalModuleReference(n.moduleReference) && ts.isStringLiteral(n.moduleReference.expression)) out.push(n.moduleReference.expression.text);
    else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword && n.arguments[0] && ts.isStringLiteralLike(n.arguments[0])) out.push(n.arguments[0].text);
    else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument) && ts.isStringLiteral(n.argument.literal)) out.push(n.argument.literal.text);
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

/**
 * lib/'s layers, bottom-up (docs/ARCHITECTURE.md "The layers" says what each is for). An entry is a
 * folder ('io/'), a top-level file ('engine.ts') or '*\/cli.ts': a room's command-line
 * subcommands, which rank with the edges whatever room they sit in.
 */
export const LAYERS: readonly { layer: string; members: readonly string[] }[] = [
  { layer: 'base', members: ['errors.ts', 'validate.ts', 'platform.ts', 'native.ts', 'tensor.ts', 'numeric.ts'] },
  { layer: 'data', members: ['io/', 'sched/', 'attention.ts', 'regions.ts'] },
  { layer: 'graph IR', members: ['graph/'] },
  { layer: 'optimiser', members: ['optim/'] },
  { layer: 'models', members: ['text/', 'unet/', 'vae/', 'faces/'] },
  { layer: 'identity', members: ['identity/'] },
  { layer: 'runtime', members: ['runtime/'] },
  { layer: 'pipelines', members: ['generate/', 'learn/', 'dreamidentity/', 'clip/'] },
  { layer: 'engine', members: ['engine.ts'] },
  { layer: 'applications', members: ['bench/', 'eval/', 'serve/'] },
  { layer: 'edges', members: ['index.ts', 'cli.ts', 'cliargs.ts', 'cli/', 'build.ts', '*/cli.ts'] },
];

/** The rank of a module (a path relative to lib/) in `layers`, or -1 when no entry holds it. */
export function rankOf(file: string, layers: typeof LAYERS = LAYERS): number {
  const f = file.split(path.sep).join('/');
  const find = (match: (m: string) => boolean) => layers.findIndex((l) => l.members.some(match));
  const exact = find((m) => m === f);
  if (exact >= 0) return exact;
  const cli = f.includes('/') && f.endsWith('/cli.ts') ? find((m) => m === '*/cli.ts') : -1;
  if (cli >= 0) return cli;
  return find((m) => m.endsWith('/') && f.startsWith(m));
}

/** Every import of a higher layer, as 'from (layer) → to (layer)'; modules no layer holds as 'file: no layer'. */
export function upwardImports(graph: Map<string, string[]>, layers: typeof LAYERS = LAYERS): string[] {
  const out: string[] = [];
  for (const [from, deps] of graph) {
    const r = rankOf(from, layers);
    if (r < 0) {
      out.push(`${from}: no layer`);
      continue;
    }
    for (const to of deps) {
      const q = rankOf(to, layers);
      if (q > r) out.push(`${from} (${layers[r]!.layer}) → ${to} (${layers[q]!.layer})`);
    }
  }
  return out;
}

/** The relative-import graph of the .ts files under a folder (keys and edges relative to it). */
function importGraph(root: string): { graph: Map<string, string[]>; unresolved: string[] } {
  const graph = new Map<string, string[]>();
  const unresolved: string[] = [];
  const files = (fs.readdirSync(root, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'));
  for (const f of files) {
    const abs = path.join(root, f);
    const deps: string[] = [];
    for (const s of specifiers(abs, fs.readFileSync(abs, 'utf8'))) {
      if (!s.startsWith('.')) continue;
      const target = path.resolve(path.dirname(abs), s).replace(/\.js$/, '.ts');
      const rel = path.relative(root, target);
      if (!fs.existsSync(target) || rel.startsWith('..')) unresolved.push(`${f} → ${s}`);
      else deps.push(rel);
    }
    graph.set(f, deps);
  }
  return { graph, unresolved };
}

/** Every strongly connected component with more than one module (or a self-import): each one holds a cycle. */
export function findCycles(graph: Map<string, string[]>): string[][] {
  // Tarjan's algorithm.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  let next = 0;
  const strong = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(c.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) strong(v);
  return out;
}

t.test('the import parser sees every form of import', async (t) => {
  const src = [
    "import { a } from './a.js';",
    "import type { B } from './b.js';",
    "import './c.js';",
    "export { d } from './d.js';",
    "export type { E } from './e.js';",
    "export * from './f.js';",
    "const g = await import('./g.js');",
    "let h: import('./h.js').H;",
    "// import { no } from './comment.js';",
    "const s = \"import { no } from './string.js'\";",
  ].join('\n');
  t.same(specifiers('x.ts', src).sort(), ['./a.js', './b.js', './c.js', './d.js', './e.js', './f.js', './g.js', './h.js']);
});

t.test('the cycle finder finds cycles, type-only and long ones included, and only them', async (t) => {
  const g = (edges: [string, string][]) => {
    const m = new Map<string, string[]>();
    for (const [a, b] of edges) {
      m.set(a, [...(m.get(a) ?? []), b]);
      if (!m.has(b)) m.set(b, []);
    }
    return m;
  };
  t.same(findCycles(g([['a', 'b'], ['b', 'c'], ['a', 'c']])), [], 'a diamond is no cycle');
  t.same(findCycles(g([['a', 'b'], ['b', 'a']])), [['a', 'b']]);
  t.same(findCycles(g([['a', 'a']])), [['a']], 'a self-import');
  t.same(findCycles(g([['x', 'a'], ['a', 'b'], ['b', 'c'], ['c', 'd'], ['d', 'a'], ['d', 'e']])), [['a', 'b', 'c', 'd']]);
  // The shape this test guards against: engine.ts ↔ learn/learn.ts through a type-only import.
  const files = new Map([
    ['engine.ts', "import type { LearnOptions } from './learn/learn.js';"],
    ['learn/learn.ts', "import type { Engine } from '../engine.js';"],
  ]);
  const graph = new Map([...files].map(([f, src]) => [f, specifiers(f, src).map((s) => path.normalize(path.join(path.dirname(f), s)).replace(/\.js$/, '.ts'))]));
  t.same(findCycles(graph), [['engine.ts', 'learn/learn.ts']], 'type-only imports count');
});

t.test('lib/ has no import cycle (type-only imports included)', async (t) => {
  const { graph, unresolved } = importGraph(LIB);
  t.ok(graph.size > 40, `${graph.size} modules parsed`);
  t.same(unresolved, [], 'every relative import resolves to a file in lib/');
  const cycles = findCycles(graph);
  t.same(cycles, [], cycles.map((c) => c.join(' ↔ ')).join('; ') || 'acyclic');
});

t.test('the layer check refuses imports up a layer and only those', async (t) => {
  const layers = [
    { layer: 'low', members: ['a.ts', 'io/'] },
    { layer: 'mid', members: ['m/'] },
    { layer: 'top', members: ['top.ts', '*/cli.ts'] },
  ];
  const graph = new Map([
    ['a.ts', ['io/x.ts']], // same layer
    ['io/x.ts', []],
    ['m/y.ts', ['a.ts', 'm/z.ts']], // down, and within its layer
    ['m/z.ts', ['top.ts']], // up: refused
    ['m/cli.ts', ['top.ts']], // a room's CLI ranks with the top
    ['top.ts', ['m/y.ts']],
    ['stray.ts', []], // no layer: refused
  ]);
  t.equal(rankOf('m/cli.ts', layers), 2);
  t.equal(rankOf('m/y.ts', layers), 1);
  t.same(upwardImports(graph, layers), ['m/z.ts (mid) → top.ts (top)', 'stray.ts: no layer']);
});

t.test('the layer table names only what exists, and every lib/ folder and top-level file', async (t) => {
  const entries = fs.readdirSync(LIB, { withFileTypes: true });
  const rooms = entries.filter((e) => e.isDirectory()).map((e) => `${e.name}/`);
  const top = entries.filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => e.name);
  const named = LAYERS.flatMap((l) => l.members).filter((m) => m !== '*/cli.ts');
  t.same([...named].sort(), [...rooms, ...top].sort(), 'one entry per folder and top-level file');
});

t.test('no lib/ module imports a higher layer (a rule with 0 exceptions)', async (t) => {
  const { graph } = importGraph(LIB);
  const up = upwardImports(graph);
  t.same(up, [], up.join('; ') || 'every import runs down or across a layer');
});
