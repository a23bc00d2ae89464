// Layer rules of the source tree, checked on the import graph of every module under src, agents,
// lab, bin and bench:
//   - src/ (the services and their shared code) never imports agents/ or lab/;
//   - agents/ never imports lab/ (the lab plugs its drivers in from the entry point, bin/main.ts);
//   - no import cycles among the project's own modules.
// Static imports, re-exports and import('literal') all count, type-only ones too: a type import
// still ties the two modules' layers together.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { ROOT, listFiles, stripComments } from '../helpers/source-scan.ts';

const TREES = ['src', 'agents', 'lab', 'bin', 'bench'];

/** Every module specifier a source file imports: static, re-export, side-effect, import('…'). */
export function specifiers(src: string): string[] {
  const code = stripComments(src);
  const found: string[] = [];
  const patterns = [
    /(?:^|[;\n}])\s*(?:import|export)\s+(?:type\s+)?[^'"`;]*?\bfrom\s*(['"])([^'"]+)\1/g, // import x from / export … from
    /(?:^|[;\n}])\s*import\s*(['"])([^'"]+)\1/g, // import 'side-effect'
    /\bimport\s*\(\s*(['"`])([^'"`$]+)\1\s*[,)]/g, // import('literal')
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) found.push(m[2]!);
  return found;
}

/** The project's own module graph: file -> files it imports (relative specifiers only). */
function buildGraph(): Map<string, string[]> {
  const files = TREES.flatMap((t) => listFiles(join(ROOT, t)));
  const known = new Set(files);
  const graph = new Map<string, string[]>();
  for (const f of files) {
    const deps: string[] = [];
    for (const s of specifiers(readFileSync(join(ROOT, f), 'utf8'))) {
      if (!s.startsWith('.')) continue; // packages and node: builtins
      const target = relative(ROOT, resolve(ROOT, dirname(f), s)).split(sep).join('/');
      // Imports reaching outside the five trees (e.g. package.json) are not layers of their own.
      if (known.has(target)) deps.push(target);
      else if (TREES.some((t) => target.startsWith(t + '/'))) deps.push(target); // missing file: still a layer edge
    }
    graph.set(f, deps);
  }
  return graph;
}

/** Edges that break a rule "modules under `from` never import modules under any of `banned`". */
export function layerViolations(graph: Map<string, string[]>, from: string, banned: string[]): string[] {
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    if (!f.startsWith(from + '/')) continue;
    for (const d of deps) if (banned.some((b) => d.startsWith(b + '/'))) bad.push(`${f} -> ${d}`);
  }
  return bad;
}

/** Every elementary cycle found by a depth-first search, each as a path a -> b -> … -> a. */
export function findCycles(graph: Map<string, string[]>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 'open');
    stack.push(n);
    for (const d of graph.get(n) ?? []) {
      const s = state.get(d);
      if (s === 'open') cycles.push([...stack.slice(stack.indexOf(d)), d]);
      else if (s === undefined) visit(d);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of [...graph.keys()].sort()) if (!state.has(n)) visit(n);
  return cycles;
}

describe('the checker itself', () => {
  it('finds static, type-only, re-export, side-effect and dynamic imports, not commented ones', () => {
    const src = [
      "import { a } from './a.ts';",
      "import type { B } from '../b.ts';",
      'import {',
      '  c,',
      "} from './c.ts';",
      "export { d } from './d.ts';",
      "export * from './e.ts';",
      "import './f.ts';",
      "const g = await import('./g.ts');",
      "// import { h } from './h.ts';",
      "/* import('./i.ts') */",
      "const s = 'import x from \"./j.ts\"';",
    ].join('\n');
    expect(specifiers(src)).toEqual(expect.arrayContaining(['./a.ts', '../b.ts', './c.ts', './d.ts', './e.ts', './f.ts', './g.ts']));
    expect(specifiers(src)).not.toContain('./h.ts');
    expect(specifiers(src)).not.toContain('./i.ts');
  });

  it('reports a forbidden edge and a cycle with its path', () => {
    const g = new Map([
      ['src/x.ts', ['lab/y.ts']],
      ['lab/y.ts', ['src/z.ts']],
      ['src/z.ts', ['src/x.ts']],
    ]);
    expect(layerViolations(g, 'src', ['lab', 'agents'])).toEqual(['src/x.ts -> lab/y.ts']);
    expect(findCycles(g)).toEqual([['lab/y.ts', 'src/z.ts', 'src/x.ts', 'lab/y.ts']]);
  });
});

describe('layers', () => {
  const graph = buildGraph();

  it('sees the whole tree', () => {
    expect(graph.size).toBeGreaterThan(100);
    expect(graph.has('src/common/errors.ts')).toBe(true);
  });

  it('src/ imports neither agents/ nor lab/', () => {
    expect(layerViolations(graph, 'src', ['agents', 'lab'])).toEqual([]);
  });

  it('agents/ does not import lab/', () => {
    expect(layerViolations(graph, 'agents', ['lab'])).toEqual([]);
  });

  it('has no import cycles', () => {
    expect(findCycles(graph).map((c) => c.join(' -> '))).toEqual([]);
  });
});
