// No import cycle in lib/: every lib/**/*.ts file's relative imports (value and type-only imports,
// `export … from`, dynamic `import()` and `import('…')` type references) form an acyclic graph.
// The cycle finder is checked on synthetic graphs first, so that the real check can fail.
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
