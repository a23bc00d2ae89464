// docs/cli.md says what the client verbs do: a section for every verb, every option of every verb,
// and how a migration is followed (the event stream, not polling).
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import * as verbs from '../../src/cli/client/commands.ts';
import type { Command } from '../../src/common/command.ts';

const doc = readFileSync(resolve(import.meta.dirname, '../../docs/cli.md'), 'utf8');
const commands = Object.values(verbs).filter((v): v is Command => typeof v === 'object' && v !== null && 'run' in v && 'options' in v);

describe('docs/cli.md', () => {
  it('has a section for every client verb and names each of its options', () => {
    expect(commands.map((c) => c.name).sort()).toEqual(['cancel', 'force-complete', 'hosts', 'migrate', 'status', 'tune', 'vms', 'watch']);
    for (const c of commands) {
      expect(doc, c.name).toMatch(new RegExp(`^## \`vmtc ${c.name}[ \`]`, 'm'));
      for (const [name, spec] of Object.entries(c.options)) {
        expect(doc, `vmtc ${c.name} --${name}`).toContain(`--${name}`);
        if (spec.short) expect(doc, `vmtc ${c.name} -${spec.short}`).toMatch(new RegExp(`-${spec.short}[, ]`));
      }
    }
  });

  it('describes following a migration over the event stream with Last-Event-ID, not polling', () => {
    expect(doc).toContain('GET /v1/migrations/:id/events');
    expect(doc).toContain('Last-Event-ID');
    expect(doc).not.toMatch(/no event stream|polling \(\d+ ?ms\)|Progress comes from polling/i);
  });
});
