// Test-only OAuth 2.1 authorization server for mcp-gateway integration tests.
// Wraps oidc-provider (a certified, spec-complete AS) with:
//   - browserless interactions (auto-login of a test user, auto-consent),
//   - per-resource token format / signing alg switches,
//   - an RFC 8693 token-exchange grant,
//   - /_test/* control endpoints (stats, key rotation, revocation, resource settings).
// NEVER use this outside tests: it logs in anybody and grants everything.
//
// stdout carries exactly one line, `READY <issuer>`; everything else goes to stderr.

import * as http from 'node:http';
import { randomUUID } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';
import * as jose from 'jose';

// oidc-provider prints notices with console.info (stdout); keep stdout for the READY line only.
console.log = console.info = console.error;

const env = process.env;
const PORT = Number(env.AS_PORT ?? 0);
const GATEWAY_SECRET = env.GATEWAY_AS_SECRET || 'gateway-secret';
const SCOPES = (env.AS_SCOPES || 'mcp:tools github:read github:write admin').trim().split(/\s+/).join(' ');
const DEFAULT_ALG = (env.AS_ALG || 'RS256').toUpperCase();
const DEFAULT_FORMAT = (env.AS_TOKEN_FORMAT || 'jwt').toLowerCase();
const TOKEN_TTL = Number(env.AS_TOKEN_TTL || 600);
const TEST_USER = env.AS_TEST_USER || 'alice';
const VERBOSE = env.AS_LOG === 'debug';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TT_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';

if (!['RS256', 'ES256'].includes(DEFAULT_ALG)) throw new Error(`AS_ALG must be RS256 or ES256, got ${DEFAULT_ALG}`);
if (!['jwt', 'opaque'].includes(DEFAULT_FORMAT)) throw new Error(`AS_TOKEN_FORMAT must be jwt or opaque, got ${DEFAULT_FORMAT}`);

const log = (...args) => { if (VERBOSE) console.error('[as]', ...args); };

// ---------------------------------------------------------------- keys

// Private JWKS, newest first. oidc-provider signs with the first key matching the alg,
// so prepending a key makes it the active one while older keys stay published for verification.
let signingKeys = [];

async function newKey(alg) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${randomUUID().slice(0, 8)}` };
}

const publicJwks = () => ({
  keys: signingKeys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub),
});

const activeKids = () => Object.fromEntries(
  ['RS256', 'ES256'].map((alg) => [alg, signingKeys.find((k) => k.alg === alg)?.kid]),
);

// ---------------------------------------------------------------- storage

// Minimal in-memory adapter (oidc-provider's own is an LRU capped at 1000 entries and warns).
// It lives at module level so clients, grants, sessions and opaque tokens survive the
// provider rebuild done by key rotation.
const store = new Map(); // key -> { payload, exp (ms epoch) }
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest']);

class MemoryAdapter {
  constructor(model) { this.model = model; }

  static get(key) {
    const e = store.get(key);
    if (e && e.exp !== undefined && e.exp <= Date.now()) { store.delete(key); return undefined; }
    return e?.payload;
  }

  static set(key, payload, expiresIn) {
    store.set(key, { payload, exp: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
  }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    if (this.model === 'Session') MemoryAdapter.set(`sessionUid:${payload.uid}`, id, expiresIn);
    if (payload.userCode) MemoryAdapter.set(`userCode:${payload.userCode}`, id, expiresIn);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      const list = MemoryAdapter.get(`grant:${payload.grantId}`) ?? [];
      MemoryAdapter.set(`grant:${payload.grantId}`, [...list, this.key(id)], 24 * 3600);
    }
    MemoryAdapter.set(this.key(id), payload, expiresIn);
  }

  async find(id) { return MemoryAdapter.get(this.key(id)); }

  async findByUid(uid) { return this.find(MemoryAdapter.get(`sessionUid:${uid}`)); }

  async findByUserCode(code) { return this.find(MemoryAdapter.get(`userCode:${code}`)); }

  async consume(id) {
    const payload = MemoryAdapter.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of MemoryAdapter.get(`grant:${grantId}`) ?? []) store.delete(key);
    store.delete(`grant:${grantId}`);
  }
}

// ---------------------------------------------------------------- stats

let stats;
function resetStats() {
  const zeros = (keys) => Object.fromEntries(keys.map((k) => [k, 0]));
  stats = {
    // Requests by oidc-provider route name (plus the harness' own routes); other routes
    // (e.g. userinfo, end_session) appear once hit. /_test/* calls are not counted.
    requests: zeros(['discovery', 'oauth_authorization_server', 'jwks', 'registration', 'authorization',
      'interaction', 'resume', 'token', 'introspection', 'revocation']),
    token_by_grant_type: zeros(['client_credentials', 'authorization_code', 'refresh_token', TOKEN_EXCHANGE]),
    token_exchange: { calls: 0, issued: 0 },
  };
}
resetStats();
const bump = (obj, key) => { obj[key] = (obj[key] ?? 0) + 1; };

// ---------------------------------------------------------------- resources

// Per-resource settings set via POST /_test/resources; keyed by the exact resource string.
const resourceSettings = new Map();

// Resource Server config for a resource indicator (or token-exchange audience).
// Precedence: /_test/resources settings > path-segment convention > env defaults.
function resourceServerInfo(identifier, { requireUrl = true } = {}) {
  let url;
  try {
    url = new URL(identifier);
  } catch {
    if (requireUrl) throw new errors.InvalidTarget('resource must be an absolute http(s) URL');
  }
  if (url && !['http:', 'https:'].includes(url.protocol)) {
    throw new errors.InvalidTarget('resource must be an absolute http(s) URL');
  }
  const segments = url ? url.pathname.split('/') : [];
  const s = resourceSettings.get(identifier) ?? {};
  const format = s.format ?? (segments.includes('opaque') ? 'opaque' : DEFAULT_FORMAT);
  const alg = s.alg ?? (segments.includes('es256') ? 'ES256' : DEFAULT_ALG);
  return {
    scope: s.scopes ?? SCOPES,
    audience: identifier,
    accessTokenTTL: s.ttl ?? TOKEN_TTL,
    accessTokenFormat: format,
    ...(format === 'jwt' ? { jwt: { sign: { alg } } } : {}),
  };
}

// ---------------------------------------------------------------- token exchange (RFC 8693)

// Finds and validates a subject token issued by this AS: JWTs are verified against our own
// JWKS (they are not stored, so cannot be revoked), opaque tokens are looked up in storage.
async function loadSubjectToken(provider, token) {
  if (token.split('.').length === 3) {
    try {
      const { payload } = await jose.jwtVerify(token, jose.createLocalJWKSet(publicJwks()), {
        issuer: provider.issuer,
        typ: 'at+jwt',
      });
      return { sub: payload.sub, scope: payload.scope, clientId: payload.client_id };
    } catch (err) {
      throw new errors.InvalidGrant(`subject_token invalid: ${err.code || err.message}`);
    }
  }
  const found = (await provider.AccessToken.find(token)) ?? (await provider.ClientCredentials.find(token));
  if (!found || !found.isValid) throw new errors.InvalidGrant('subject_token invalid, expired or revoked');
  if (found.grantId) {
    const grant = await provider.Grant.find(found.grantId);
    if (!grant) throw new errors.InvalidGrant('subject_token grant revoked');
  }
  return { sub: found.accountId ?? found.clientId, scope: found.scope, clientId: found.clientId };
}

async function tokenExchangeHandler(ctx, next) {
  const { params, client, provider } = ctx.oidc;
  stats.token_exchange.calls += 1;

  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
  if (params.subject_token_type !== TT_ACCESS_TOKEN) {
    throw new errors.InvalidRequest(`subject_token_type must be ${TT_ACCESS_TOKEN}`);
  }
  if (params.requested_token_type && params.requested_token_type !== TT_ACCESS_TOKEN) {
    throw new errors.InvalidRequest(`requested_token_type must be ${TT_ACCESS_TOKEN}`);
  }
  const target = params.resource ?? params.audience;
  if (!target) throw new errors.InvalidTarget('resource or audience is required');

  const subject = await loadSubjectToken(provider, params.subject_token);
  const info = resourceServerInfo(target, { requireUrl: !!params.resource });
  const allowed = new Set(info.scope.split(' '));
  // Explicit scope: any scope the target resource allows. No scope: inherit the subject's.
  const requested = (params.scope ?? subject.scope ?? '').split(' ').filter(Boolean);
  const scope = requested.filter((s) => allowed.has(s)).join(' ') || undefined;

  const token = new provider.AccessToken({
    accountId: subject.sub,
    client,
    scope,
    gty: 'token_exchange',
  });
  token.resourceServer = new provider.ResourceServer(target, info);

  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  stats.token_exchange.issued += 1;

  ctx.body = {
    access_token: value,
    issued_token_type: TT_ACCESS_TOKEN,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope,
  };
  await next();
}

// ---------------------------------------------------------------- provider

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    adapter: MemoryAdapter,
    jwks: { keys: signingKeys },
    clients: [{
      client_id: 'gateway',
      client_secret: GATEWAY_SECRET,
      grant_types: ['client_credentials', TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true, initialAccessToken: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Any authenticated confidential client (e.g. `gateway`) may introspect any token.
        allowedPolicy: async (ctx, client, token) => client.clientAuthMethod !== 'none'
          || token.clientId === client.clientId,
      },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf?.[0],
        // The token request may omit `resource`; the one granted at /auth is used.
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => resourceServerInfo(resource),
      },
    },
    responseTypes: ['code'], // OAuth 2.1: no implicit / hybrid
    // Resource scopes are also declared as AS scopes so that DCR requests carrying a `scope`
    // (as MCP clients send) validate and discovery lists them in scopes_supported.
    scopes: ['openid', 'offline_access', ...SCOPES.split(' ')],
    pkce: { methods: ['S256'], required: () => true },
    // A logged-in session (cookie `_session`) skips the login interaction; switching the user of
    // an existing session would need a browser logout form, so tests use one cookie jar per user.
    interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
    // Any account id is valid; it becomes the `sub`.
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, name: sub, email: `${sub}@example.test` }),
    }),
    // Auto-consent: every authorization request is granted all requested scopes for every
    // requested resource, so after login no consent interaction is ever needed.
    loadExistingGrant: async (ctx) => {
      const { client, session, params, resourceServers, provider: p } = ctx.oidc;
      const grantId = session.grantIdFor(client.clientId);
      let grant = grantId ? await p.Grant.find(grantId) : undefined;
      if (!grant || grant.accountId !== session.accountId) {
        grant = new p.Grant({ clientId: client.clientId, accountId: session.accountId });
      }
      const scope = params.scope || '';
      grant.addOIDCScope(scope);
      for (const [resource, rs] of Object.entries(resourceServers ?? {})) {
        const granted = scope.split(' ').filter((s) => rs.scopes.has(s)).join(' ');
        if (granted) grant.addResourceScope(resource, granted);
      }
      await grant.save();
      return grant;
    },
    // Extra claims go into JWT access tokens and introspection responses alike. oidc-provider
    // overwrites token.extra with this function's result, so token exchange's `act` lives here.
    extraTokenClaims: async (ctx, token) => {
      // RFC 8693 section 4.1: the acting party is the client that performed the exchange.
      if (ctx?.oidc.params?.grant_type === TOKEN_EXCHANGE) return { act: { sub: ctx.oidc.client.clientId } };
      // Opaque client_credentials tokens get `sub` = client_id in introspection, like their JWTs.
      if (token.kind === 'ClientCredentials') return { sub: token.clientId };
      return undefined;
    },
    // Refresh tokens whenever the client registered the refresh_token grant (no offline_access dance).
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    clientBasedCORS: () => true,
    // Unsigned cookies would trigger a warning; the key is a fixed test value so cookies stay
    // valid across the provider rebuild on key rotation.
    cookies: { keys: ['test-only-cookie-key'], long: { sameSite: 'lax' }, short: { sameSite: 'lax' } },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_TTL,
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_TTL,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
      RefreshToken: 3600,
    },
    enabledJWA: {
      // Let DCR clients ask for ES256 ID tokens etc. too.
      idTokenSigningAlgValues: ['RS256', 'ES256'],
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  });

  provider.registerGrantType(
    TOKEN_EXCHANGE,
    tokenExchangeHandler,
    ['subject_token', 'subject_token_type', 'resource', 'audience', 'scope', 'requested_token_type'],
  );

  // Count every request that reaches oidc-provider by its route name.
  provider.use(async (ctx, next) => {
    try {
      await next();
    } finally {
      const route = ctx.oidc?.route;
      if (route) {
        bump(stats.requests, route);
        if (route === 'token') bump(stats.token_by_grant_type, ctx.oidc.params?.grant_type ?? '(none)');
      }
      log(ctx.method, ctx.path, ctx.status);
    }
  });

  provider.on('server_error', (ctx, err) => console.error('[as] server_error', err));
  return provider;
}

// ---------------------------------------------------------------- harness routes

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

let provider;
let providerCallback;
let issuer;

function installProvider() {
  provider = buildProvider(issuer);
  providerCallback = provider.callback();
}

// Browserless login: GET /interaction/<uid> logs in `login_hint` (or the test user) and
// redirects (303) to the authorization resume endpoint. Consent never comes up thanks to
// loadExistingGrant, but is handled anyway for robustness.
async function handleInteraction(req, res) {
  const { prompt, params, session } = await provider.interactionDetails(req, res);
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: params.login_hint || TEST_USER } };
  } else if (prompt.name === 'consent') {
    const grant = new provider.Grant({ clientId: params.client_id, accountId: session.accountId });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [rs, scopes] of Object.entries(d.missingResourceScopes ?? {})) grant.addResourceScope(rs, scopes.join(' '));
    result = { consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'access_denied', error_description: `unsupported prompt ${prompt.name}` };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function handleRevoke(url) {
  const token = url.searchParams.get('token');
  if (!token) return [400, { error: 'token query parameter required' }];
  for (const model of [provider.AccessToken, provider.ClientCredentials, provider.RefreshToken]) {
    const found = await model.find(token, { ignoreExpiration: true });
    if (found) {
      await found.destroy();
      return [200, { revoked: true, kind: found.kind }];
    }
  }
  return [404, { revoked: false, error: 'not an opaque token known to this AS (JWTs cannot be revoked)' }];
}

async function handleResources(req) {
  let body;
  try {
    body = JSON.parse((await readBody(req)) || '{}');
  } catch {
    return [400, { error: 'body must be JSON' }];
  }
  if (typeof body.resource !== 'string') return [400, { error: 'resource (string) required' }];
  const s = {};
  if (body.format !== undefined) {
    if (!['jwt', 'opaque'].includes(body.format)) return [400, { error: 'format must be jwt or opaque' }];
    s.format = body.format;
  }
  if (body.alg !== undefined) {
    if (!['RS256', 'ES256'].includes(body.alg)) return [400, { error: 'alg must be RS256 or ES256' }];
    s.alg = body.alg;
  }
  if (body.scopes !== undefined) s.scopes = String(body.scopes);
  if (body.ttl !== undefined) s.ttl = Number(body.ttl);
  resourceSettings.set(body.resource, s);
  return [200, { resource: body.resource, ...resourceServerInfo(body.resource, { requireUrl: false }) }];
}

// Forged tokens for the gateway's security tests: arbitrary claims signed with the active
// key (so only the claims are wrong), or an unsigned `none` token, or a chosen `kid`.
async function handleSign(req) {
  let body;
  try {
    body = JSON.parse((await readBody(req)) || '{}');
  } catch {
    return [400, { error: 'body must be JSON' }];
  }
  const claims = body.claims ?? {};
  const alg = body.alg ?? 'RS256';
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  if (alg === 'none') {
    return [200, { token: `${b64({ alg: 'none', typ: 'at+jwt', ...(body.header ?? {}) })}.${b64(claims)}.` }];
  }
  const jwk = signingKeys.find((k) => k.alg === alg);
  if (!jwk) return [400, { error: 'alg must be RS256, ES256 or none' }];
  const key = await jose.importJWK(jwk, alg);
  const header = { alg, typ: 'at+jwt', kid: body.kid ?? jwk.kid, ...(body.header ?? {}) };
  const token = await new jose.SignJWT(claims).setProtectedHeader(header).sign(key);
  return [200, { token }];
}

// The active public key of an algorithm as SPKI PEM (what a key-confusion attacker knows).
async function handlePem(url) {
  const alg = url.searchParams.get('alg') ?? 'RS256';
  const jwk = signingKeys.find((k) => k.alg === alg);
  if (!jwk) return [400, { error: 'alg must be RS256 or ES256' }];
  const { d, p, q, dp, dq, qi, ...pub } = jwk;
  const key = await jose.importJWK(pub, alg);
  return [200, { pem: await jose.exportSPKI(key) }];
}

async function handleTest(req, res, url) {
  const route = `${req.method} ${url.pathname}`;
  let out;
  switch (route) {
    case 'GET /_test/stats':
      out = [200, stats];
      break;
    case 'POST /_test/stats/reset':
      resetStats();
      out = [200, stats];
      break;
    case 'GET /_test/keys':
      out = [200, { active: activeKids(), kids: signingKeys.map((k) => k.kid) }];
      break;
    case 'POST /_test/rotate': {
      // New RS256 + ES256 keys go first (active); old ones stay published unless drop_old=1.
      const fresh = [await newKey('RS256'), await newKey('ES256')];
      const dropOld = ['1', 'true'].includes(url.searchParams.get('drop_old'));
      signingKeys = dropOld ? fresh : [...fresh, ...signingKeys];
      // oidc-provider reads jwks only at construction: rebuild it. All state (clients,
      // grants, sessions, opaque tokens) lives in the module-global memory adapter and survives.
      installProvider();
      out = [200, { active: activeKids(), kids: signingKeys.map((k) => k.kid) }];
      break;
    }
    case 'POST /_test/revoke':
      out = await handleRevoke(url);
      break;
    case 'POST /_test/resources':
      out = await handleResources(req);
      break;
    case 'POST /_test/sign':
      out = await handleSign(req);
      break;
    case 'GET /_test/pem':
      out = await handlePem(url);
      break;
    default:
      out = [404, { error: `unknown test route ${route}` }];
  }
  sendJson(res, ...out);
}

async function handle(req, res) {
  const url = new URL(req.url, issuer);
  if (url.pathname.startsWith('/_test/')) {
    return handleTest(req, res, url);
  }
  if (req.method === 'GET' && /^\/interaction\/[^/]+$/.test(url.pathname)) {
    bump(stats.requests, 'interaction');
    return handleInteraction(req, res);
  }
  if (url.pathname === '/.well-known/oauth-authorization-server') {
    // RFC 8414 metadata: oidc-provider only serves the OIDC discovery document, whose
    // content is a superset of RFC 8414 for the same issuer, so serve that.
    bump(stats.requests, 'oauth_authorization_server');
    req.url = `/.well-known/openid-configuration${url.search}`;
  }
  return providerCallback(req, res);
}

// ---------------------------------------------------------------- main

signingKeys = [await newKey('RS256'), await newKey('ES256')];

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('[as] harness error', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: err.message });
    else res.end();
  });
});

server.listen(PORT, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  installProvider();
  process.stdout.write(`READY ${issuer}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  // Keep-alive connections could hold close() open; never hang a test teardown.
  setTimeout(() => process.exit(0), 500).unref();
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, shutdown);
// Opt-in orphan protection: a parent that spawns us with a piped stdin and dies (e.g. a
// panicking test) closes the pipe, and we exit instead of lingering on the port.
if (env.AS_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', shutdown).on('close', shutdown).resume();
}
