// Opens a local HTML file in Debian's headless Chromium and reports what went wrong in it:
// console errors, uncaught exceptions and browser-side error log entries, through the DevTools
// protocol (CDP) over a WebSocket on loopback. Used to check that the turntable's report.html
// renders without errors; nothing here talks to anything but 127.0.0.1.
//
// The browser is started with a fresh profile directory and its own process group, and that
// group is always killed (SIGTERM, then SIGKILL) and the profile removed, also on failure or
// timeout. Requests the page makes to http(s) are intercepted and failed before they leave the
// browser (Fetch domain), and reported in `blockedRequests`: the report must be self-contained.
import { spawn, type ChildProcess } from 'node:child_process';
import { access, constants, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import WebSocket from 'ws';
import { sleep } from '../../src/common/clock.ts';
import { COMMON_ERRORS, errorFactory, mergeCatalogues } from '../../src/common/errors.ts';

/**
 * Codes of this checker. They belong in lab/errors.ts (LAB_ERRORS) once that file can take them;
 * until then they are kept here so the checker does not edit another helper's file.
 */
export const CHROMIUM_ERRORS = mergeCatalogues(COMMON_ERRORS, {
  VMTC_LAB_CHROMIUM_MISSING: { status: 500, message: 'chromium is not installed (apt-get install chromium; lab/install-deps.sh installs it)' },
  VMTC_LAB_CHROMIUM_FAILED: { status: 500, message: 'headless chromium did not start or did not load the page' },
});
const chromiumError = errorFactory(CHROMIUM_ERRORS);

export const CHROMIUM_PATH = '/usr/bin/chromium';

/**
 * The flags every run uses: headless, no GPU, no QUIC, and none of the background services that
 * would otherwise reach the Internet (component updates, sync, first-run, background networking).
 * The DevTools port is chosen by the browser (0) and read from DevToolsActivePort.
 */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--remote-debugging-port=0',
] as const;

export interface ChromiumCheckOptions {
  /** Whole check, from spawn to the last reply (default 30 s). */
  timeoutMs?: number;
  /** Also capture a full-page PNG (default false). */
  screenshot?: boolean;
  /** Viewport width in CSS pixels for layout and screenshot (default 1280). */
  width?: number;
  /** Quiet time after the load event, to catch errors thrown by timers (default 300 ms). */
  settleMs?: number;
  /** Browser executable (default /usr/bin/chromium); tests use it to check the missing case. */
  chromiumPath?: string;
}

export interface ChromiumCheck {
  consoleErrors: string[];
  exceptions: string[];
  title: string;
  bodyTextLength: number;
  screenshotPng?: Buffer;
  /** http(s) requests the page tried to make (failed before leaving the browser). */
  blockedRequests: string[];
}

interface CdpMessage {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { code: number; message: string };
  sessionId?: string;
}

interface RemoteObject { type?: string; value?: unknown; description?: string; unserializableValue?: string }

/** Text of a console argument as a person would read it in DevTools. */
function remoteText(o: RemoteObject): string {
  if (o.value !== undefined) return typeof o.value === 'string' ? o.value : JSON.stringify(o.value);
  return o.unserializableValue ?? o.description ?? o.type ?? '';
}

/** A minimal CDP client on one browser-level WebSocket, with flattened page sessions. */
class Cdp {
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (r: Record<string, unknown>) => void; reject: (e: Error) => void; method: string }>();
  private readonly listeners: ((m: CdpMessage) => void)[] = [];
  private closedError: Error | null = null;

  constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      let m: CdpMessage;
      try { m = JSON.parse(String(data)) as CdpMessage; } catch { return; }
      if (m.id !== undefined) {
        const p = this.pending.get(m.id);
        if (!p) return; // a late reply to a request we gave up on
        this.pending.delete(m.id);
        if (m.error) p.reject(new Error(`${p.method}: ${m.error.message}`));
        else p.resolve(m.result ?? {});
        return;
      }
      for (const l of this.listeners) l(m);
    });
    const fail = (e: Error) => {
      this.closedError ??= e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    ws.on('close', () => fail(new Error('devtools connection closed')));
    ws.on('error', (e) => fail(e));
  }

  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.ws.send(JSON.stringify(sessionId ? { id, method, params, sessionId } : { id, method, params }));
    });
  }

  on(l: (m: CdpMessage) => void): void { this.listeners.push(l); }
}

/** Wait for the browser to write its DevTools port and browser endpoint path. */
async function readActivePort(dir: string, child: ChildProcess, stderrTail: () => string, deadline: number): Promise<{ port: number; path: string }> {
  const file = join(dir, 'DevToolsActivePort');
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw chromiumError('VMTC_LAB_CHROMIUM_FAILED', { exitCode: child.exitCode, signal: child.signalCode, stderr: stderrTail() });
    }
    const text = await readFile(file, 'utf8').catch(() => '');
    const [portLine, pathLine] = text.split('\n');
    const port = Number(portLine);
    if (Number.isInteger(port) && port > 0 && pathLine?.startsWith('/devtools/browser/')) return { port, path: pathLine.trim() };
    await sleep(50);
  }
  throw chromiumError('VMTC_TIMEOUT', { waitingFor: 'DevToolsActivePort', stderr: stderrTail() });
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((res) => {
    const t = setTimeout(() => { child.off('exit', onExit); res(false); }, ms);
    const onExit = () => { clearTimeout(t); res(true); };
    child.once('exit', onExit);
  });
}

/** Kill the browser's process group (it was spawned detached, so the group id is its pid). */
async function killGroup(child: ChildProcess): Promise<void> {
  const pid = child.pid;
  if (pid === undefined) return;
  const signal = (s: NodeJS.Signals) => { try { process.kill(-pid, s); } catch { /* already gone */ } };
  signal('SIGTERM');
  if (!(await waitExit(child, 3000))) {
    signal('SIGKILL');
    await waitExit(child, 3000);
  }
  // Renderer and utility processes share the group; make sure none outlives the browser.
  signal('SIGKILL');
}

/**
 * Load `htmlFile` in headless Chromium and collect console errors (console.error / console.assert
 * failures), uncaught exceptions, error-level log entries, the title and the length of the body
 * text; optionally a full-page screenshot.
 */
export async function checkInChromium(htmlFile: string, opts: ChromiumCheckOptions = {}): Promise<ChromiumCheck> {
  const exe = opts.chromiumPath ?? CHROMIUM_PATH;
  try {
    await access(exe, constants.X_OK);
  } catch {
    throw chromiumError('VMTC_LAB_CHROMIUM_MISSING', { path: exe });
  }
  const abs = resolve(htmlFile);
  await access(abs, constants.R_OK).catch((e: unknown) => { throw chromiumError('VMTC_LAB_CHROMIUM_FAILED', { file: abs, reason: 'cannot read the page' }, { cause: e }); });
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  const width = opts.width ?? 1280;

  const dir = await mkdtemp(join(tmpdir(), 'vmtc-chromium-'));
  let child: ChildProcess | undefined;
  let ws: WebSocket | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    child = spawn(exe, [...CHROMIUM_FLAGS, `--user-data-dir=${dir}`, `--window-size=${width},900`, 'about:blank'], {
      detached: true,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
    const spawned = child;
    const spawnError = new Promise<never>((_, reject) => spawned.once('error', (e) => reject(chromiumError('VMTC_LAB_CHROMIUM_FAILED', { path: exe }, { cause: e }))));
    spawnError.catch(() => undefined);
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(chromiumError('VMTC_TIMEOUT', { timeoutMs, file: abs, stderr: stderr.slice(-1000) })), timeoutMs);
    });

    const run = async (): Promise<ChromiumCheck> => {
      const { port, path } = await readActivePort(dir, spawned, () => stderr.slice(-1000), deadline);
      const socket = new WebSocket(`ws://127.0.0.1:${port}${path}`, { perMessageDeflate: false, maxPayload: 512 * 1024 * 1024 });
      ws = socket;
      await new Promise<void>((res, rej) => { socket.once('open', () => res()); socket.once('error', rej); });
      const cdp = new Cdp(socket);

      const consoleErrors: string[] = [];
      const exceptions: string[] = [];
      const blockedRequests: string[] = [];
      let sessionId = '';
      let loaded: () => void = () => undefined;
      const loadFired = new Promise<void>((r) => { loaded = r; });
      cdp.on((m) => {
        if (!sessionId || m.sessionId !== sessionId || !m.params) return;
        const p = m.params;
        switch (m.method) {
          case 'Runtime.consoleAPICalled': {
            const type = p.type as string;
            if (type === 'error' || type === 'assert') consoleErrors.push(((p.args as RemoteObject[]) ?? []).map(remoteText).join(' ') || type);
            break;
          }
          case 'Runtime.exceptionThrown': {
            const d = p.exceptionDetails as { text?: string; exception?: RemoteObject; lineNumber?: number; url?: string };
            exceptions.push(d.exception?.description ?? `${d.text ?? 'exception'}${d.url ? ` at ${d.url}:${d.lineNumber ?? 0}` : ''}`);
            break;
          }
          case 'Log.entryAdded': {
            const e = p.entry as { level?: string; text?: string; url?: string };
            if (e.level === 'error') consoleErrors.push(e.url ? `${e.text ?? ''} (${e.url})` : (e.text ?? 'error'));
            break;
          }
          case 'Fetch.requestPaused': {
            // Only http(s) is intercepted (patterns below): fail it before it reaches the network.
            const req = p.request as { url: string };
            blockedRequests.push(req.url);
            cdp.send('Fetch.failRequest', { requestId: p.requestId, errorReason: 'BlockedByClient' }, sessionId).catch(() => undefined);
            break;
          }
          case 'Page.loadEventFired':
            loaded();
            break;
        }
      });

      const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank' }) as { targetId: string };
      ({ sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true }) as { sessionId: string });
      await cdp.send('Fetch.enable', { patterns: [{ urlPattern: 'http://*' }, { urlPattern: 'https://*' }] }, sessionId);
      await cdp.send('Page.enable', {}, sessionId);
      await cdp.send('Runtime.enable', {}, sessionId);
      await cdp.send('Log.enable', {}, sessionId);
      await cdp.send('Emulation.setDeviceMetricsOverride', { width, height: 900, deviceScaleFactor: 1, mobile: false }, sessionId);
      const url = pathToFileURL(abs).href;
      const nav = await cdp.send('Page.navigate', { url }, sessionId) as { errorText?: string };
      if (nav.errorText) throw chromiumError('VMTC_LAB_CHROMIUM_FAILED', { url, errorText: nav.errorText });
      await loadFired;
      await sleep(opts.settleMs ?? 300);

      const ev = await cdp.send('Runtime.evaluate', {
        expression: 'JSON.stringify({ title: document.title, len: document.body ? document.body.innerText.length : 0 })',
        returnByValue: true,
      }, sessionId) as { result: { value?: string } };
      const page = JSON.parse(ev.result.value ?? '{}') as { title?: string; len?: number };

      let screenshotPng: Buffer | undefined;
      if (opts.screenshot) {
        const metrics = await cdp.send('Page.getLayoutMetrics', {}, sessionId) as { cssContentSize?: { width: number; height: number } };
        const height = Math.min(Math.ceil(metrics.cssContentSize?.height ?? 900), 16_000);
        const shot = await cdp.send('Page.captureScreenshot', {
          format: 'png',
          captureBeyondViewport: true,
          clip: { x: 0, y: 0, width, height, scale: 1 },
        }, sessionId) as { data: string };
        screenshotPng = Buffer.from(shot.data, 'base64');
      }
      // A graceful close lets the browser tidy its profile before the group is killed.
      await Promise.race([cdp.send('Browser.close').catch(() => undefined), sleep(1000)]);
      const out: ChromiumCheck = { consoleErrors, exceptions, title: page.title ?? '', bodyTextLength: page.len ?? 0, blockedRequests };
      if (screenshotPng) out.screenshotPng = screenshotPng;
      return out;
    };
    return await Promise.race([run(), timeout, spawnError]);
  } finally {
    if (timer) clearTimeout(timer);
    if (ws) ws.terminate();
    if (child) await killGroup(child);
    await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }
}
