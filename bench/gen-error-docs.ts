// Regenerates the controller section of docs/errors.md from the catalogues (the sections after it,
// written by hand, are kept):
//   node --import tsx bench/gen-error-docs.ts
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { ALL_CONTROLLER_ERRORS } from '../src/controller/index.ts';

const lines = [
  '# Error codes', '',
  'Every error crosses REST and WebSocket as `{ code, message, details }`. Codes never change meaning; match on the code, never on the message. Each service has one catalogue (`src/<service>/errors.ts`); the AAA and broker codes are listed in docs/aaa.md and docs/broker.md.', '',
  '## Controller (with the hub and the common codes)', '',
  '| code | HTTP | meaning |', '|---|---|---|',
  ...Object.entries(ALL_CONTROLLER_ERRORS).map(([k, v]) => `| \`${k}\` | ${v.status} | ${v.message} |`),
];
const file = new URL('../docs/errors.md', import.meta.url);
const old = existsSync(file) ? readFileSync(file, 'utf8') : '';
const rest = old.indexOf('\n## ', old.indexOf('## Controller') + 1);
writeFileSync(file, lines.join('\n') + '\n' + (rest >= 0 ? old.slice(rest) : ''));
