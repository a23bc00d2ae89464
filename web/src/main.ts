// The dashboard page (docs/dashboard.md): asks the controller who is logged in, shows the login
// form or the dashboard, loads the fleet once over the REST API and then follows the controller's
// event stream (GET /v1/events, server-sent events; the browser's EventSource resumes by its last
// event id). Every change comes from an event: no polling loop.
import { ApiError, call } from './api.ts';
import { h } from './dom.ts';
import { addProbes, emptyModel, putMigration, type Host, type Migration, type Model, type ProbeEvent, type Vm } from './model.ts';
import { radarView, renderSections } from './view.ts';

const app = document.getElementById('app')!;
let model: Model = emptyModel();
let stream: EventSource | undefined;
let sectionsEl: HTMLElement | undefined;
let statusEl: HTMLElement | undefined;

type Session = { authenticated: boolean; name?: string; role?: string; expiresAt?: string };

function showLogin(message?: string): void {
  stream?.close();
  stream = undefined;
  model = emptyModel();
  const err = h('p', { id: 'login-error', class: 'bad', role: 'alert' }, message ?? '');
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false', 'aria-describedby': 'token-help login-error' });
  const form = h('form', { class: 'login', 'aria-labelledby': 'login-h', onsubmit: (e: Event) => { e.preventDefault(); void login(input.value, err); } },
    h('h1', { id: 'login-h' }, 'vmtc dashboard'),
    h('label', { for: 'token' }, 'Credential'),
    input,
    h('p', { id: 'token-help', class: 'help' }, 'Paste a controller credential (vmtc_…, e.g. the admin token or one made with `vmtc credential create`). It is sent once; the browser keeps only a session cookie it cannot read.'),
    h('button', { type: 'submit' }, 'Log in'),
    err);
  app.replaceChildren(h('main', { id: 'main' }, form));
  input.focus();
}

async function login(token: string, err: HTMLElement): Promise<void> {
  err.textContent = '';
  try {
    const s = await call<Session>('POST', '/dashboard/session', { token: token.trim() });
    await showDashboard(s);
  } catch (e) {
    err.textContent = e instanceof ApiError ? `${e.code}: ${e.message}` : 'The controller did not answer.';
  }
}

async function logout(): Promise<void> {
  try { await call('DELETE', '/dashboard/session'); } finally { showLogin('Logged out.'); }
}

function setStatus(s: Model['stream']): void {
  model.stream = s;
  if (statusEl) {
    statusEl.textContent = { connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…', closed: 'disconnected' }[s];
    statusEl.className = `stream ${s === 'live' ? 'ok' : 'bad'}`;
  }
}

// ---- rendering, at most once a frame, keeping keyboard focus where it was ----------------------
let pending = false;
function render(): void {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    if (!sectionsEl) return;
    const key = (document.activeElement as HTMLElement | null)?.dataset?.focusKey;
    renderSections(sectionsEl, model, select);
    if (key) (sectionsEl.querySelector(`[data-focus-key="${CSS.escape(key)}"]`) as HTMLElement | null)?.focus();
  });
}
function select(id: string): void {
  model.selected = model.selected === id ? undefined : id;
  if (model.selected) void refreshMigration(id);
  render();
}
function redrawRadar(id: string): void {
  const mig = model.migrations.get(id);
  const old = sectionsEl?.querySelector(`[data-radar="${CSS.escape(id)}"], [data-radar-none="${CSS.escape(id)}"]`);
  if (!mig || !old) return render();
  const fresh = radarView(model, mig);
  if (fresh) old.replaceWith(fresh);
}

// ---- data ---------------------------------------------------------------------------------------
async function refreshMigration(id: string): Promise<void> {
  const rec = await call<Migration>('GET', `/v1/migrations/${encodeURIComponent(id)}`);
  putMigration(model, rec);
  render();
}

let fleetTimer: number | undefined;
/** Hosts and VMs again after a change that moves capacity (a transition, an agent's link): one
 *  read for a burst of events. */
function refreshFleetSoon(): void {
  if (fleetTimer !== undefined) return;
  fleetTimer = window.setTimeout(() => {
    fleetTimer = undefined;
    void refreshFleet().catch(onError);
  }, 250);
}
async function refreshFleet(): Promise<void> {
  const [hosts, vms] = await Promise.all([call<{ hosts: Host[] }>('GET', '/v1/hosts'), call<{ vms: Vm[] }>('GET', '/v1/vms')]);
  model.hosts = hosts.hosts;
  model.vms = vms.vms;
  render();
}

function onError(e: unknown): void {
  if (e instanceof ApiError && e.status === 401) showLogin('The session ended: log in again.');
  else console.warn('dashboard:', e);
}

function follow(): void {
  stream?.close();
  const es = new EventSource('/v1/events');
  stream = es;
  es.addEventListener('open', () => setStatus('live'));
  es.addEventListener('error', () => {
    if (stream !== es) return;
    if (es.readyState === EventSource.CLOSED) {
      // Refused (the session ended, say): find out whether to log in again.
      setStatus('closed');
      void call<Session>('GET', '/dashboard/session').then((s) => { if (!s.authenticated) showLogin('The session ended: log in again.'); else window.setTimeout(follow, 2000); }, onError);
    } else setStatus('reconnecting');
  });
  es.addEventListener('transition', (e) => {
    const t = JSON.parse((e as MessageEvent).data) as { migrationId: string };
    void refreshMigration(t.migrationId).catch(onError);
    refreshFleetSoon();
  });
  es.addEventListener('progress', (e) => {
    const p = JSON.parse((e as MessageEvent).data) as Migration['progress'] & { migrationId: string };
    const mig = model.migrations.get(p.migrationId);
    if (mig) { mig.progress = p; render(); }
  });
  es.addEventListener('host', () => refreshFleetSoon());
  es.addEventListener('probe', (e) => {
    const p = JSON.parse((e as MessageEvent).data) as ProbeEvent;
    addProbes(model, p);
    redrawRadar(p.migrationId);
  });
}

async function showDashboard(s: Session): Promise<void> {
  model = emptyModel();
  model.user = { name: s.name ?? '?', role: s.role ?? '?', expiresAt: s.expiresAt ?? '' };
  statusEl = h('span', { class: 'stream', role: 'status', 'aria-live': 'polite' }, 'connecting…');
  sectionsEl = h('div', { class: 'sections' });
  app.replaceChildren(
    h('header', { class: 'top' },
      h('h1', {}, 'vmtc'),
      h('span', { class: 'who' }, `${model.user.name} (${model.user.role})`),
      statusEl,
      h('button', { type: 'button', onclick: () => void logout() }, 'Log out')),
    h('main', { id: 'main', tabindex: -1 }, sectionsEl));
  // The stream first, then the lists: what happens in between arrives twice, never not at all.
  follow();
  const [, list] = await Promise.all([refreshFleet(), call<{ migrations: Migration[] }>('GET', '/v1/migrations?limit=100')]);
  for (const m of list.migrations) putMigration(model, m);
  // The timelines of those in flight (the list has no transitions).
  await Promise.all(list.migrations.filter((m) => !m.terminal).map((m) => refreshMigration(m.id)));
  render();
}

async function boot(): Promise<void> {
  try {
    const s = await call<Session>('GET', '/dashboard/session');
    if (s.authenticated) await showDashboard(s);
    else showLogin();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) showLogin();
    else app.replaceChildren(h('p', { class: 'bad', role: 'alert' }, 'The controller did not answer; reload the page to try again.'));
  }
}

void boot();
