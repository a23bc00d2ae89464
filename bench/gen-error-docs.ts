// Regenerates the controller section of docs/errors.md from the catalogues:
//   node --import tsx bench/gen-error-docs.ts
import { writeFileSync } from 'node:fs';
import { ALL_CONTROLLER_ERRORS } from '../src/controller/index.ts';

const lines = [
  '# Error codes', '',
  'Every error crosses REST and WebSocket as `{ code, message, details }`. Codes never change meaning; match on the code, never on the message. Each service has one catalogue (`src/<service>/errors.ts`); the AAA and broker codes are listed in docs/aaa.md and docs/broker.md.', '',
  '## Controller (with the hub and the common codes)', '',
  '| code | HTTP | meaning |', '|---|---|---|',
  ...Object.entries(ALL_CONTROLLER_ERRORS).map(([k, v]) => `| \`${k}\` | ${v.status} | ${v.message} |`),
];
writeFileSync(new URL('../docs/errors.md', import.meta.url), lines.join('\n') + '\n');
