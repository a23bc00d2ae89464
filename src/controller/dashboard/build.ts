// Builds the dashboard's bundle from web/ (docs/dashboard.md "Building"): esbuild bundles
// web/src/main.ts (TypeScript, plain DOM) into one minified script, copies the stylesheet and the
// page. `npm run build:web` (and npm's `prepare`, so a clean `npm ci` has it) writes web/dist/;
// the controller serves web/dist/ and, where it is missing, builds the same files in memory on the
// first request. Nothing is fetched at run time: every asset is served by the controller.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

export const WEB_DIR = fileURLToPath(new URL('../../../web/', import.meta.url));

/** The files the controller serves, by name under /dashboard/. */
export interface DashboardAssets { 'index.html': Buffer; 'app.js': Buffer; 'app.css': Buffer }
export const ASSET_NAMES = ['index.html', 'app.js', 'app.css'] as const;

/** Bundle web/ in memory with esbuild. */
export async function buildDashboard(webDir = WEB_DIR): Promise<DashboardAssets> {
  const { build } = await import('esbuild');
  const out = await build({
    entryPoints: [join(webDir, 'src', 'main.ts')],
    bundle: true, minify: true, format: 'esm', target: ['es2022'], platform: 'browser',
    write: false, outfile: 'app.js', logLevel: 'silent', legalComments: 'none',
    tsconfig: join(webDir, 'tsconfig.json'),
  });
  const js = out.outputFiles.find((f) => f.path.endsWith('app.js'));
  if (!js) throw new Error('esbuild produced no app.js');
  return {
    'index.html': readFileSync(join(webDir, 'index.html')),
    'app.js': Buffer.from(js.contents),
    'app.css': readFileSync(join(webDir, 'src', 'style.css')),
  };
}

/** web/dist/ if it holds every asset, else undefined. */
export function readBuiltDashboard(webDir = WEB_DIR): DashboardAssets | undefined {
  const dist = join(webDir, 'dist');
  if (!ASSET_NAMES.every((n) => existsSync(join(dist, n)))) return undefined;
  return Object.fromEntries(ASSET_NAMES.map((n) => [n, readFileSync(join(dist, n))])) as unknown as DashboardAssets;
}

export async function writeDashboard(webDir = WEB_DIR): Promise<string> {
  const assets = await buildDashboard(webDir);
  const dist = join(webDir, 'dist');
  mkdirSync(dist, { recursive: true });
  for (const n of ASSET_NAMES) writeFileSync(join(dist, n), assets[n]);
  return dist;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeDashboard().then((dist) => console.log(`dashboard built: ${dist}`), (e: unknown) => { console.error(e); process.exit(1); });
}
