// RFC 8693 token exchange with INDIGO-IAM's rules: the subject token must be an access token this
// issuer signed and that is still valid; delegation (actor_token) is refused; a client may not turn
// a token issued to itself into an offline (refresh) grant; requested scopes must be allowed for the
// client and for the subject's user. The result is a JWT access token with `act: {sub: <client>}`.
import { errors } from 'oidc-provider';

import { InvalidJwt, verifyJwt } from './keys.mjs';
import { clientAllowsScope } from './users.mjs';

export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

export const TOKEN_EXCHANGE_PARAMS = [
  'audience', 'scope', 'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
  'requested_token_type', 'resource',
];

function splitSpaces(value) {
  return [...new Set((value ?? '').split(' ').filter(Boolean))];
}

/**
 * Check the request and decide what to issue; pure apart from the signature check.
 * Returns {sub, user, scopes, audience}; throws oidc-provider errors (clear one-line descriptions).
 */
export function decideExchange({ params, client, allowedScope, directory, signingKeys, issuer }) {
  if (params.actor_token || params.actor_token_type) {
    throw new errors.InvalidRequest('delegation not supported');
  }
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`subject_token_type must be ${ACCESS_TOKEN_TYPE}`);
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE}`);
  }
  let subject;
  try {
    subject = verifyJwt(params.subject_token, signingKeys, { issuer, typ: 'at+jwt' });
  } catch (err) {
    if (err instanceof InvalidJwt) throw new errors.InvalidRequest(`invalid subject_token: ${err.message}`);
    throw err;
  }
  const user = directory.bySub.get(subject.sub);
  if (!user) throw new errors.InvalidRequest('invalid subject_token: not issued to a user');

  const scopes = params.scope ? splitSpaces(params.scope) : splitSpaces(subject.scope);
  if (scopes.includes('offline_access') && subject.client_id === client.clientId) {
    throw new errors.InvalidRequest(
      'offline_access cannot be requested when exchanging a token issued to the same client',
    );
  }
  for (const scope of scopes) {
    if (!clientAllowsScope(allowedScope, scope)) {
      throw new errors.InvalidScope(`scope ${scope} is not allowed for client ${client.clientId}`, scope);
    }
    if (!directory.userMayGet(user, scope)) {
      throw new errors.InvalidScope(`scope ${scope} is not allowed for the subject's user`, scope);
    }
  }
  const audience = splitSpaces(params.audience ?? params.resource);
  return { sub: subject.sub, user, scopes, audience: audience.length ? audience : [client.clientId] };
}

/** Build the grant handler registered with provider.registerGrantType. */
export function tokenExchangeHandler({ directory, allowedScopeOf, signingKeys, ttl, resourceServerFor }) {
  return async function exchange(ctx) {
    const { provider, client, params } = ctx.oidc;
    const decision = decideExchange({
      params, client, allowedScope: allowedScopeOf(client), directory, signingKeys, issuer: provider.issuer,
    });
    const scope = decision.scopes.join(' ');
    const resourceServer = resourceServerFor(decision.audience.join(' '), scope);

    const accessToken = new provider.AccessToken({
      accountId: decision.sub,
      client,
      scope,
      gty: 'token_exchange',
      resourceServer,
    });
    ctx.oidc.entity('AccessToken', accessToken);
    const value = await accessToken.save();

    const body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: accessToken.expiration,
      scope,
    };

    if (decision.scopes.includes('offline_access') && client.grantTypeAllowed('refresh_token')) {
      const grant = new provider.Grant({ accountId: decision.sub, clientId: client.clientId });
      grant.addOIDCScope(scope);
      grant.addResourceScope(resourceServer.identifier(), scope);
      const grantId = await grant.save();
      const refreshToken = new provider.RefreshToken({
        accountId: decision.sub,
        client,
        grantId,
        scope,
        resource: resourceServer.identifier(),
        gty: 'token_exchange',
        expiresWithSession: false,
        rotations: 0,
        expiresIn: ttl.refresh_token,
      });
      body.refresh_token = await refreshToken.save();
    }
    ctx.body = body;
  };
}
