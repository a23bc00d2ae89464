// Capability tokens issued and verified per second (docs/design.md#goals: >= 10,000/s each on
// 2 cores).
//
//   node --import tsx bench/aaa-tokens.ts [--seconds 3] [--threads N] [--http-requests 2000]
//
// Measures the in-process functions, not HTTP:
//  - issue:  signCapabilityToken (claims + Ed25519 signature), what POST /v1/authorizations does
//            after policy and consent;
//  - verify: verifyPresentedToken = token (signature, kid, iss, aud, nbf/exp, cnf, scope) plus its
//            DPoP proof (signature, typ/alg/jwk, htm, htu, iat, ath, key = cnf.jkt), what a broker
//            does on each token-gated request before its replay check. That is two Ed25519
//            verifications, so its ceiling is half the bare verify rate printed beside it;
//  - verify-token: the token alone (one verification), for comparison;
// each on one thread and then on N worker threads (default: every core). Then, separately, the
// HTTP issuance rate of a real AAA (policy, SQLite accounting with synchronous=FULL, JSON, DPoP
// check of the request) with the clients in the same process.
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { availableParallelism, tmpdir } from 'node:os';
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { jwtVerify, EmbeddedJWK, importJWK } from 'jose';
import { generateRequesterKeySync, makeDpopProofSync } from '../src/common/dpop.ts';
import { signCapabilityToken, verifyCapabilityToken, verifyPresentedToken, type CapabilityScope } from '../src/aaa/tokens.ts';

const HTU = 'https://broker-b.example:7500/v1/reservations/r-42/provision';
const scope: CapabilityScope = {
  migrationId: 'mig_0123456789abcdef0123', vmId: 'vm-turntable-1', project: 'igrid', src: 'amsterdam', dst: 'san-diego',
  bandwidthMbps: 1000, window: { start: 1_700_000_000, end: 1_700_003_600 }, domains: ['a', 'b', 'c'],
};

type Mode = 'issue' | 'verify' | 'verify-token' | 'raw-sign' | 'raw-verify';

function setup() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const signer = { kid: 'k1', privateKey };
  const holders = [0, 1, 2, 3].map(() => generateRequesterKeySync());
  return { signer, publicKey, holders };
}

/** Run `mode` for `seconds`; returns operations done and elapsed seconds. */
function run(mode: Mode, seconds: number): { ops: number; elapsed: number } {
  const { signer, publicKey, holders } = setup();
  const now = Date.now();
  if (mode === 'raw-sign' || mode === 'raw-verify') {
    // The ceiling: bare OpenSSL Ed25519 over a token-sized message, no JOSE around it.
    const msg = Buffer.alloc(700, 1);
    const sig = sign(null, msg, signer.privateKey);
    let ops = 0;
    const t0 = performance.now();
    while (performance.now() < t0 + seconds * 1000) {
      for (let i = 0; i < 200; i++) {
        if (mode === 'raw-sign') sign(null, msg, signer.privateKey);
        else verify(null, msg, publicKey, sig);
      }
      ops += 200;
    }
    return { ops, elapsed: (performance.now() - t0) / 1000 };
  }
  if (mode === 'issue') {
    let ops = 0;
    const t0 = performance.now();
    const until = t0 + seconds * 1000;
    while (performance.now() < until) {
      for (let i = 0; i < 200; i++) signCapabilityToken(signer, { issuer: 'aaa:a', subject: 'controller-1', jkt: holders[i & 3]!.jkt, scope, now, lifetimeSec: 300 });
      ops += 200;
    }
    return { ops, elapsed: (performance.now() - t0) / 1000 };
  }
  // A pool of distinct (token, proof) pairs, made before timing starts.
  const pool = Array.from({ length: 1000 }, (_, i) => {
    const h = holders[i & 3]!;
    const { token } = signCapabilityToken(signer, { issuer: 'aaa:a', subject: 'controller-1', jkt: h.jkt, scope, now, lifetimeSec: 300 });
    return { token, proof: makeDpopProofSync(h, 'POST', HTU, token, { now }) };
  });
  const opts = { key: (kid: string) => (kid === 'k1' ? publicKey : undefined), issuers: ['aaa:a'], audience: 'broker:b', now, htm: 'POST', htu: HTU };
  let ops = 0;
  const t0 = performance.now();
  const until = t0 + seconds * 1000;
  while (performance.now() < until) {
    for (let i = 0; i < 100; i++) {
      const p = pool[(ops + i) % pool.length]!;
      if (mode === 'verify') verifyPresentedToken(p.token, p.proof, opts);
      else verifyCapabilityToken(p.token, opts);
    }
    ops += 100;
  }
  return { ops, elapsed: (performance.now() - t0) / 1000 };
}

async function parallel(mode: Mode, seconds: number, threads: number): Promise<number> {
  const results = await Promise.all(Array.from({ length: threads }, () => new Promise<{ ops: number; elapsed: number }>((resolve, reject) => {
    // Workers do not inherit tsx's loader hooks on Node 20: register them, then load this file.
    const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const w = new Worker(boot, { eval: true, workerData: { mode, seconds } });
    w.once('message', resolve);
    w.once('error', reject);
  })));
  return results.reduce((s, r) => s + r.ops / r.elapsed, 0);
}

async function joseVerifyRate(seconds: number): Promise<number> {
  // For comparison: the same checks through jose (WebCrypto, async).
  const { signer, publicKey, holders } = setup();
  const now = Date.now();
  const h = holders[0]!;
  const { token } = signCapabilityToken(signer, { issuer: 'aaa:a', subject: 'controller-1', jkt: h.jkt, scope, now, lifetimeSec: 300 });
  const proof = makeDpopProofSync(h, 'POST', HTU, token, { now });
  const key = await importJWK({ ...publicKey.export({ format: 'jwk' }), alg: 'EdDSA' } as never, 'EdDSA');
  let ops = 0;
  const t0 = performance.now();
  while (performance.now() < t0 + seconds * 1000) {
    await jwtVerify(token, key, { issuer: 'aaa:a', audience: 'broker:b', currentDate: new Date(now) });
    await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', currentDate: new Date(now) });
    ops++;
  }
  return ops / ((performance.now() - t0) / 1000);
}

async function httpIssuance(requests: number, concurrency: number): Promise<{ rate: number; p50: number; p99: number }> {
  const { startAaa } = await import('../src/aaa/index.ts');
  const { requestAuthorization } = await import('../src/aaa/client.ts');
  const { silentLogger } = await import('../src/common/log.ts');
  const dir = mkdtempSync(join(tmpdir(), 'vmtc-bench-aaa-'));
  const holder = generateRequesterKeySync();
  const aaa = await startAaa({
    dataDir: dir, domain: 'a', logger: silentLogger(),
    policy: { sites: { amsterdam: 'a', 'san-diego': 'a' }, requesters: [{ id: 'controller-1', jkt: holder.jkt }], rules: [{ id: 'all', requesters: '*', projects: '*', maxBandwidthMbps: 10_000 }] },
  });
  try {
    const nowS = Math.floor(Date.now() / 1000);
    const body = { ...scope, window: { start: nowS, end: nowS + 3600 } } as Record<string, unknown>;
    delete body.domains;
    let next = 0;
    const lat: number[] = [];
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < requests) {
        next++;
        const s = performance.now();
        await requestAuthorization(aaa.url, holder, body as never);
        lat.push(performance.now() - s);
      }
    }));
    const elapsed = (performance.now() - t0) / 1000;
    lat.sort((x, y) => x - y);
    return { rate: lat.length / elapsed, p50: lat[Math.floor(lat.length * 0.5)]!, p99: lat[Math.floor(lat.length * 0.99)]! };
  } finally {
    await aaa.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (!isMainThread) {
  const { mode, seconds } = workerData as { mode: Mode; seconds: number };
  parentPort!.postMessage(run(mode, seconds));
} else {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '3' }, threads: { type: 'string' }, 'http-requests': { type: 'string', default: '2000' } } });
  const seconds = Number(values.seconds);
  const threads = Number(values.threads ?? availableParallelism());
  const fmt = (n: number) => Math.round(n).toLocaleString('en-US').padStart(8);
  console.log(`vmtc AAA token benchmark — node ${process.version}, ${availableParallelism()} cores, ${seconds} s per measurement`);
  const sizes = setup();
  const sample = signCapabilityToken(sizes.signer, { issuer: 'aaa:a', subject: 'controller-1', jkt: sizes.holders[0]!.jkt, scope, now: Date.now(), lifetimeSec: 300 }).token;
  console.log(`token size ${sample.length} bytes; proof size ${makeDpopProofSync(sizes.holders[0]!, 'POST', HTU, sample).length} bytes`);
  const label: Record<Mode, string> = {
    'raw-sign': 'ceiling: bare Ed25519 sign',
    'raw-verify': 'ceiling: bare Ed25519 verify',
    issue: 'issued   (sign)',
    verify: 'verified (token + DPoP proof)',
    'verify-token': 'verified (token alone)',
  };
  for (const mode of ['raw-sign', 'issue', 'raw-verify', 'verify-token', 'verify'] as Mode[]) {
    const one = run(mode, seconds);
    const many = await parallel(mode, seconds, threads);
    const what = label[mode];
    console.log(`${what.padEnd(30)} 1 thread: ${fmt(one.ops / one.elapsed)} /s   ${threads} threads: ${fmt(many)} /s`);
  }
  console.log(`${'verified via jose (async)'.padEnd(30)} 1 thread: ${fmt(await joseVerifyRate(seconds))} /s   (for comparison)`);
  const n = Number(values['http-requests']);
  if (n > 0) {
    const h = await httpIssuance(n, 16);
    console.log(`${'HTTP POST /v1/authorizations'.padEnd(30)} ${fmt(h.rate)} /s   (${n} requests, 16 concurrent, p50 ${h.p50.toFixed(1)} ms, p99 ${h.p99.toFixed(1)} ms; clients in-process; includes policy, DPoP check, fsync'd accounting insert)`);
  }
}
