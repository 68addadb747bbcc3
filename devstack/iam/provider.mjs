// oidc-provider configured to behave like INDIGO-IAM: IAM's endpoint paths, RS256 JWT access tokens
// with WLCG claims, rotated refresh tokens, device flow, client credentials and token exchange.
import Provider from 'oidc-provider';

import { TOKEN_EXCHANGE_GRANT } from './config.mjs';
import { providerPages } from './pages.mjs';
import { TOKEN_EXCHANGE_PARAMS, tokenExchangeHandler } from './token_exchange.mjs';
import { STATIC_SCOPES, clientAllowsScope, userClaims } from './users.mjs';

export const IAM_ROUTES = {
  authorization: '/authorize',
  token: '/token',
  userinfo: '/userinfo',
  jwks: '/jwk',
  device_authorization: '/devicecode',
  code_verification: '/device',
  introspection: '/introspect',
  revocation: '/revoke',
  end_session: '/logout',
};

// Access tokens are always bound to a "resource" so oidc-provider issues them as JWTs. The audience
// the client asked for (or its default) travels inside the resource indicator, so it survives the
// authorization code, device code and refresh token steps; plain RFC 8707 `resource` URIs work too.
const AUDIENCE_INDICATOR = 'urn:cmsaf:iam:audience:';

export function audienceIndicator(audience) {
  return `${AUDIENCE_INDICATOR}${encodeURIComponent(audience)}`;
}

export function audienceOf(indicator) {
  return indicator.startsWith(AUDIENCE_INDICATOR)
    ? decodeURIComponent(indicator.slice(AUDIENCE_INDICATOR.length))
    : indicator;
}

/** Scopes a request may carry for the resource: the client's own plus allowed parameterised ones. */
function candidateScopes(ctx, client, allowedScope) {
  const scopes = new Set(allowedScope.split(' ').filter(Boolean));
  const sources = [
    ctx?.oidc?.params?.scope,
    ...['AuthorizationCode', 'DeviceCode', 'RefreshToken'].map((name) => ctx?.oidc?.entities?.[name]?.scope),
  ];
  for (const source of sources) {
    for (const scope of (source ?? '').split(' ')) {
      if (scope && clientAllowsScope(allowedScope, scope)) scopes.add(scope);
    }
  }
  return [...scopes].join(' ');
}

/** An `audience` sent to the token endpoint (refresh, client credentials) overrides the granted one. */
function requestedAudience(ctx) {
  const oidc = ctx?.oidc;
  if (oidc?.route !== 'token' || oidc.params?.grant_type === TOKEN_EXCHANGE_GRANT) return undefined;
  return oidc.body?.audience;
}

/** Add the WLCG profile claims and honour an `audience` asked at the token endpoint. */
function wlcgCustomizer(directory) {
  return async function customizeJwt(ctx, token, jwt) {
    const { payload } = jwt;
    payload.nbf = payload.iat;
    payload['wlcg.ver'] = '1.0';
    const scopes = new Set((payload.scope ?? '').split(' '));
    const user = token.accountId ? directory.bySub.get(token.accountId) : undefined;
    if (user && scopes.has('wlcg.groups')) payload['wlcg.groups'] = [...user.groups];
    // Exchanged tokens (and their refreshes) say who acts for the subject (RFC 8693 `act`).
    if (token.gty?.split(' ').includes('token_exchange')) payload.act = { sub: payload.client_id };
    const asked = requestedAudience(ctx);
    if (typeof asked === 'string' && asked.trim()) payload.aud = asked;
    if (typeof payload.aud === 'string' && payload.aud.includes(' ')) {
      payload.aud = payload.aud.split(' ').filter(Boolean);
    }
  };
}

/**
 * Consent is automatic for registered clients (IAM's behaviour for the hub): grant what the client
 * may ask and IAM's scope policies let the user have; record the rest as rejected so no consent
 * prompt is ever needed.
 */
function autoGrant(directory, allowedScopeOf) {
  return async function loadExistingGrant(ctx) {
    const { client, session, provider } = ctx.oidc;
    const accountId = session.accountId;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== accountId) {
      grant = new provider.Grant({ clientId: client.clientId, accountId });
    }
    const user = directory.bySub.get(accountId);
    const allowedScope = allowedScopeOf(client);
    const allowed = (scope) => clientAllowsScope(allowedScope, scope) && directory.userMayGet(user, scope);
    const requested = [...ctx.oidc.requestParamScopes];
    const oidcRequested = [...ctx.oidc.requestParamOIDCScopes];
    const grantSplit = (scopes) => [scopes.filter(allowed), scopes.filter((s) => !allowed(s))];
    const [oidcOk, oidcDenied] = grantSplit(oidcRequested);
    if (oidcOk.length) grant.addOIDCScope(oidcOk.join(' '));
    if (oidcDenied.length) grant.rejectOIDCScope(oidcDenied.join(' '));
    const [ok, denied] = grantSplit(requested);
    for (const indicator of Object.keys(ctx.oidc.resourceServers)) {
      if (ok.length) grant.addResourceScope(indicator, ok.join(' '));
      if (denied.length) grant.rejectResourceScope(indicator, denied.join(' '));
    }
    await grant.save();
    return grant;
  };
}

/** The exact scope allow-list of each configured client (see config.mjs). */
export function scopeAllowLists(config) {
  const lists = new Map(config.clients.map((c) => [c.client_id, c.allowed_scope]));
  return (client) => lists.get(client.clientId) ?? client.scope ?? '';
}

/** The oidc-provider configuration object (pure: no I/O). */
export function providerConfiguration({ config, directory, signingKeys, cookieKeys, Adapter }) {
  const { ttl } = config;
  const defaultAudience = new Map(config.clients.map((c) => [c.client_id, c.default_audience]));
  const allowedScopeOf = scopeAllowLists(config);
  return {
    adapter: Adapter,
    clients: config.clients.map(({ default_audience: _a, allowed_scope: _s, ...metadata }) => metadata),
    jwks: { keys: signingKeys },
    cookies: { keys: cookieKeys },
    routes: IAM_ROUTES,
    scopes: STATIC_SCOPES,
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username', 'given_name', 'family_name', 'groups', 'organisation_name'],
      email: ['email', 'email_verified'],
      'wlcg.groups': ['wlcg.groups'],
    },
    extraParams: ['audience'],
    responseTypes: ['code'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    pkce: { required: (ctx, client) => client.clientAuthMethod === 'none' },
    rotateRefreshToken: true,
    async findAccount(ctx, sub) {
      const user = directory.bySub.get(sub);
      if (!user) return undefined;
      return { accountId: sub, claims: async (use, scope) => userClaims(user, new Set(scope.split(' '))) };
    },
    loadExistingGrant: autoGrant(directory, allowedScopeOf),
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Like IAM: any authenticated client (a resource server) may introspect; only a token's own
      // client may revoke it.
      introspection: { enabled: true, allowedPolicy: async () => true },
      revocation: {
        enabled: true,
        async allowedPolicy(ctx, client, token) {
          return token.clientId === client.clientId;
        },
      },
      userinfo: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: providerPages.logoutSource,
        postLogoutSuccessSource: providerPages.postLogoutSuccessSource,
      },
      deviceFlow: {
        enabled: true,
        userCodeInputSource: providerPages.userCodeInputSource,
        userCodeConfirmSource: providerPages.userCodeConfirmSource,
        successSource: providerPages.successSource,
      },
      resourceIndicators: {
        enabled: true,
        async defaultResource(ctx, client, oneOf) {
          if (oneOf) return oneOf;
          const asked = ctx.oidc.route === 'token' ? undefined : ctx.oidc.params.audience;
          return audienceIndicator(asked || defaultAudience.get(client.clientId) || client.clientId);
        },
        useGrantedResource: async () => true,
        async getResourceServerInfo(ctx, indicator, client) {
          return {
            audience: audienceOf(indicator),
            scope: candidateScopes(ctx, client, allowedScopeOf(client)),
            accessTokenTTL: ttl.access_token,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    formats: { customizers: { jwt: wlcgCustomizer(directory) } },
    ttl: {
      AccessToken: ttl.access_token,
      ClientCredentials: ttl.access_token,
      IdToken: ttl.id_token,
      RefreshToken: ttl.refresh_token,
      DeviceCode: ttl.device_code,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: ttl.refresh_token,
      Grant: ttl.refresh_token,
    },
    renderError: providerPages.renderError,
    clientBasedCORS: () => false,
  };
}

/** Build the provider and register the token-exchange grant. */
export function buildProvider(issuer, options) {
  const provider = new Provider(issuer, providerConfiguration(options));
  const { ttl } = options.config;
  provider.registerGrantType(
    TOKEN_EXCHANGE_GRANT,
    tokenExchangeHandler({
      directory: options.directory,
      allowedScopeOf: scopeAllowLists(options.config),
      signingKeys: options.signingKeys,
      ttl,
      resourceServerFor: (audience, scope) => new provider.ResourceServer(audienceIndicator(audience), {
        audience,
        scope,
        accessTokenTTL: ttl.access_token,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    }),
    TOKEN_EXCHANGE_PARAMS,
  );
  return provider;
}
