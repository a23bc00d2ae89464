// Loggers made by src/common/log.ts never write a key twice in one line, however often a child
// logger binds it again (pino itself appends: `"mod":"hub","mod":"hub"`).
import { describe, it, expect } from 'vitest';
import { PassThrough } from 'node:stream';
import { createLogger, serviceLogger } from '../../src/common/log.ts';
import { duplicateKeys } from '../helpers/json-keys.ts';

function capture() {
  const stream = new PassThrough();
  const lines: string[] = [];
  let buf = '';
  stream.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts);
  });
  return { stream, lines };
}

describe('log bindings', () => {
  it('a key bound again by a child appears once, with the innermost value, where it was first bound', async () => {
    const { stream, lines } = capture();
    const root = createLogger({ svc: 'controller', destination: stream, level: 'debug' });
    const hub = root.child({ mod: 'hub' }).child({ mod: 'hub' });
    hub.child({ hostId: 'A' }).child({ hostId: 'B', vmId: 'v"1' }).info({ n: 1 }, 'x');
    serviceLogger(root, 'controller', { mod: 'svc' }).child({ mod: 'svc2' }).warn('y');
    root.child({ a: { deep: 1 } }).child({ a: 2 }).debug('z');
    hub.info('plain');
    await new Promise((r) => setImmediate(r));
    expect(lines).toHaveLength(4);
    for (const l of lines) expect(duplicateKeys(l)).toEqual([]);
    const [a, b, c, d] = lines.map((l) => JSON.parse(l));
    expect(a).toMatchObject({ svc: 'controller', mod: 'hub', hostId: 'B', vmId: 'v"1', n: 1, msg: 'x' });
    expect(Object.keys(a).indexOf('hostId')).toBeLessThan(Object.keys(a).indexOf('vmId'));
    expect(b).toMatchObject({ svc: 'controller', mod: 'svc2' });
    expect(c.a).toBe(2);
    expect(d).toMatchObject({ mod: 'hub', msg: 'plain' });
  });

  it('a logger without repeated keys is written as pino writes it', async () => {
    const { stream, lines } = capture();
    createLogger({ svc: 'aaa', destination: stream }).child({ mod: 'x', domain: 'd' }).info('hi');
    await new Promise((r) => setImmediate(r));
    expect(lines[0]).toMatch(/^\{"level":30,"time":\d+,"svc":"aaa","mod":"x","domain":"d","msg":"hi"\}$/);
  });
});
