#!/usr/bin/env node
// The one vmtc binary. TypeScript sources run through tsx's loader, so there is no build step
// whose output could go stale next to the sources (see README, "Dependencies").
import { register } from 'tsx/esm/api';
register();
const { main } = await import('./main.ts');
process.exitCode = await main(process.argv.slice(2));
