// The web dashboard's routes (docs/dashboard.md): the page and its bundle under /dashboard/, the
// session (log in with a credential, who am I, log out), and the hook that lets the page's
// fetch() and EventSource use the controller's REST API with the session cookie instead of a
// bearer header. Every route here is outside the OpenAPI document (it is the browser's, not an
// orchestrator's); the API routes the page reads keep their own role checks (api.ts requireRole).
//
// CSRF: the cookie is SameSite=Strict, no route changes anything on GET, and a request that
// changes something (POST, PATCH, DELETE) with the cookie must carry X-VMTC-Dashboard (which a
// cross-site form cannot send, and a cross-site fetch cannot without a CORS preflight this
// server never grants) and, when the browser sends Origin, this server's own origin.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { commonError } from '../../common/errors.ts';
import { Type } from '../../common/schemas.ts';
import type { Clock, Ids } from '../../common/clock.ts';
import type { Logger } from '../../common/log.ts';
import { err } from '../errors.ts';
import type { ControllerStore } from '../store.ts';
import { buildDashboard, readBuiltDashboard, type DashboardAssets } from './build.ts';
import { SESSION_DEFAULTS, SessionStore, cookieValue, sessionCookie } from './session.ts';

export interface DashboardDeps {
  store: Pick<ControllerStore, 'findCredential'>;
  clock: Clock;
  ids: Ids;
  logger: Logger;
  /** The controller serves HTTPS: the cookie is Secure and the expected Origin is https. */
  tls: boolean;
  /** Where the bundle comes from (default: web/dist, else built from web/ on first use). */
  assets?: () => Promise<DashboardAssets>;
  sessionTtlMs?: number;
}

export const CSRF_HEADER = 'x-vmtc-dashboard';

const TYPES: Record<keyof DashboardAssets, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'app.css': 'text/css; charset=utf-8',
};

/** Everything the page loads comes from this server: no inline script, no other origin. */
const PAGE_HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

const LoginBody = Type.Object({ token: Type.String({ minLength: 1, maxLength: 512 }) }, { additionalProperties: false });
const hidden = { hide: true } as const;

export function registerDashboard(fastify: FastifyInstance, d: DashboardDeps): SessionStore {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>();
  const sessions = new SessionStore(d.clock, d.ids, d.sessionTtlMs ?? SESSION_DEFAULTS.ttlMs);
  const log = d.logger.child({ mod: 'dashboard' });
  const sid = (request: FastifyRequest) => cookieValue(request.headers.cookie, SESSION_DEFAULTS.cookie);

  // The bundle, read or built once; a failure is answered (503, coded) and tried again later.
  let loading: Promise<DashboardAssets> | undefined;
  const assets = (): Promise<DashboardAssets> => {
    loading ??= (d.assets ?? (async () => readBuiltDashboard() ?? buildDashboard()))().catch((e: unknown) => {
      loading = undefined;
      log.error({ err: e }, 'dashboard bundle unavailable');
      throw err('VMTC_DASHBOARD_UNAVAILABLE', { reason: (e as Error).message?.slice(0, 300) ?? String(e) });
    });
    return loading;
  };

  const checkCsrf = (request: FastifyRequest) => {
    if (request.headers[CSRF_HEADER] !== '1') throw err('VMTC_CSRF_REFUSED', { reason: `no ${CSRF_HEADER} header` });
    const origin = request.headers.origin;
    if (origin !== undefined && origin !== `${d.tls ? 'https' : 'http'}://${request.headers.host}`) throw err('VMTC_CSRF_REFUSED', { reason: 'foreign origin' });
  };

  // Before every route's own hooks (registered ahead of the API): a session cookie on an API
  // request stands for its credential. A bearer header, when sent, wins. An unknown or expired
  // session adds nothing, and the route's role check answers 401 as it would without a cookie.
  app.addHook('onRequest', async (request) => {
    if (!request.url.startsWith('/v1/') || request.headers.authorization !== undefined) return;
    const s = sessions.get(sid(request));
    if (!s) return;
    if (!['GET', 'HEAD', 'OPTIONS'].includes(request.method)) checkCsrf(request);
    request.headers.authorization = `Bearer ${s.token}`;
  });

  const send = async (reply: FastifyReply, name: keyof DashboardAssets) => {
    const a = await assets();
    return reply.headers(PAGE_HEADERS).type(TYPES[name]).send(a[name]);
  };
  app.get('/', { schema: hidden }, async (_request, reply) => reply.redirect('/dashboard/'));
  app.get('/dashboard', { schema: hidden }, async (_request, reply) => reply.redirect('/dashboard/'));
  app.get('/dashboard/', { schema: hidden }, async (_request, reply) => send(reply, 'index.html'));
  app.get('/dashboard/app.js', { schema: hidden }, async (_request, reply) => send(reply, 'app.js'));
  app.get('/dashboard/app.css', { schema: hidden }, async (_request, reply) => send(reply, 'app.css'));

  const who = (s: { name: string; role: string; expiresAt: number }) => ({ name: s.name, role: s.role, expiresAt: new Date(s.expiresAt).toISOString() });
  // The session as the page sees it: { authenticated: false } without one (the page then shows
  // its login form; an answer, not a 401, so a browser logs no failed load before the login).
  app.get('/dashboard/session', { schema: hidden }, async (request, reply) => {
    const s = sessions.get(sid(request));
    // A credential revoked since the login ends its sessions.
    if (s && !d.store.findCredential(s.token)) sessions.delete(s.id);
    const live = s && d.store.findCredential(s.token) ? s : undefined;
    return reply.header('cache-control', 'no-store').send(live ? { authenticated: true, ...who(live) } : { authenticated: false });
  });
  // Log in: the credential goes in the body, once; the answer sets the cookie.
  app.post('/dashboard/session', { schema: { ...hidden, body: LoginBody } }, async (request, reply) => {
    checkCsrf(request);
    const token = request.body.token.trim();
    const cred = d.store.findCredential(token);
    if (!cred) throw commonError('VMTC_UNAUTHENTICATED', { reason: 'unknown or revoked credential' });
    sessions.delete(sid(request));
    const s = sessions.create(token, cred);
    log.info({ credentialId: cred.id, name: cred.name, role: cred.role }, 'dashboard login');
    return reply.header('set-cookie', sessionCookie(SESSION_DEFAULTS.cookie, s.id, (s.expiresAt - s.createdAt) / 1000, d.tls)).header('cache-control', 'no-store').send({ authenticated: true, ...who(s) });
  });
  app.delete('/dashboard/session', { schema: hidden }, async (request, reply) => {
    checkCsrf(request);
    sessions.delete(sid(request));
    return reply.header('set-cookie', sessionCookie(SESSION_DEFAULTS.cookie, '', 0, d.tls)).status(204).send();
  });
  return sessions;
}
