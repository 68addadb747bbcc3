// Koa middleware mounted in front of oidc-provider's own routes: request logging without token
// values, the login interaction (a plain HTML form), and /userinfo plus /introspect support for our
// stateless JWT access tokens (oidc-provider only knows the opaque ones it stores).
import { errors } from 'oidc-provider';

import { InvalidJwt, verifyJwt } from './keys.mjs';
import { loginPage, messagePage } from './pages.mjs';
import { userClaims } from './users.mjs';

const BODY_LIMIT = 16 * 1024;

async function readForm(ctx) {
  const chunks = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new errors.InvalidRequest('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

/** One stderr line per request: method, path (never the query), status, duration. */
export function requestLog(log) {
  return async function logRequest(ctx, next) {
    const started = process.hrtime.bigint();
    try {
      await next();
    } finally {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const client = ctx.oidc?.client?.clientId ? ` client=${ctx.oidc.client.clientId}` : '';
      log(`${ctx.method} ${ctx.path} ${ctx.status} ${ms.toFixed(1)}ms${client}`);
    }
  };
}

/**
 * IAM issues a refresh token whenever `offline_access` is asked; oidc-provider follows OpenID Connect
 * Core strictly and drops `offline_access` unless `prompt=consent` is present. Consent is automatic
 * here (the login interaction grants it), so adding `consent` to the prompt gives IAM's behaviour.
 */
export function offlineAccessLikeIam() {
  return async function addConsentPrompt(ctx, next) {
    if (ctx.path === '/authorize' && ctx.method === 'GET') {
      const scopes = String(ctx.query.scope ?? '').split(' ');
      const prompts = String(ctx.query.prompt ?? '').split(' ').filter(Boolean);
      if (scopes.includes('offline_access') && !prompts.includes('none') && !prompts.includes('consent')) {
        ctx.query = { ...ctx.query, prompt: [...prompts, 'consent'].join(' ') };
      }
    }
    return next();
  };
}

/** GET /interaction/:uid shows the login form; POST /interaction/:uid/login checks it. */
export function loginInteraction(provider, directory, log) {
  const pattern = /^\/interaction\/([\w-]+)(\/login)?$/;
  return async function interaction(ctx, next) {
    const match = pattern.exec(ctx.path);
    if (!match) return next();
    const [, uid, isLogin] = match;
    ctx.set('Cache-Control', 'no-store');
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = messagePage('CMS IAM development login: error', `This sign-in request is no longer valid (${err.message}). Start again from the application.`);
      return undefined;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = messagePage('CMS IAM development login: error', 'This sign-in request does not match your browser session. Start again from the application.');
      return undefined;
    }
    const client = await provider.Client.find(details.params.client_id);
    const clientName = client?.clientName || details.params.client_id;
    const action = `/interaction/${uid}/login`;

    if (details.prompt.name !== 'login') {
      // Consent is automatic (see loadExistingGrant); finishing the prompt lets the grant decide.
      const redirectTo = await provider.interactionResult(ctx.req, ctx.res, { consent: {} }, { mergeWithLastSubmission: true });
      ctx.status = 303;
      return ctx.redirect(redirectTo);
    }
    if (ctx.method === 'GET' && !isLogin) {
      ctx.type = 'html';
      ctx.body = loginPage({ action, clientName });
      return undefined;
    }
    if (ctx.method !== 'POST' || !isLogin) return next();

    const form = await readForm(ctx);
    const username = form.get('login') ?? '';
    const user = directory.authenticate(username, form.get('password'));
    if (!user) {
      log(`login failed for user ${JSON.stringify(username.slice(0, 64))}`);
      ctx.type = 'html';
      ctx.body = loginPage({ action, clientName, login: username, error: 'Wrong username or password.' });
      return undefined;
    }
    log(`login ${user.username} (${user.sub}) for client ${details.params.client_id}`);
    const redirectTo = await provider.interactionResult(
      ctx.req, ctx.res, { login: { accountId: user.sub }, consent: {} }, { mergeWithLastSubmission: false },
    );
    ctx.status = 303;
    return ctx.redirect(redirectTo);
  };
}

function bearerError(ctx, status, error, description) {
  ctx.status = status;
  ctx.set('WWW-Authenticate', `Bearer realm="dev-iam", error="${error}", error_description="${description}"`);
  ctx.body = { error, error_description: description };
}

/** IAM's /userinfo accepts its JWT access tokens (scope `openid`), answering per granted scope. */
export function jwtUserinfo(provider, directory, signingKeys) {
  return async function userinfo(ctx, next) {
    if (ctx.path !== '/userinfo' || !['GET', 'POST'].includes(ctx.method)) return next();
    ctx.set('Cache-Control', 'no-store');
    const [scheme, token] = (ctx.get('authorization') || '').split(' ');
    if (scheme?.toLowerCase() !== 'bearer' || !token) {
      return bearerError(ctx, 401, 'invalid_request', 'no bearer access token provided');
    }
    let payload;
    try {
      payload = verifyJwt(token, signingKeys, { issuer: provider.issuer, typ: 'at+jwt' });
    } catch (err) {
      if (!(err instanceof InvalidJwt)) throw err;
      return bearerError(ctx, 401, 'invalid_token', `invalid access token: ${err.message}`);
    }
    const scopes = new Set((payload.scope ?? '').split(' '));
    if (!scopes.has('openid')) return bearerError(ctx, 403, 'insufficient_scope', 'access token missing openid scope');
    const user = directory.bySub.get(payload.sub);
    if (!user) return bearerError(ctx, 401, 'invalid_token', 'access token subject is not a user');
    ctx.body = userClaims(user, scopes);
    return undefined;
  };
}

/**
 * oidc-provider refuses to introspect structured (JWT) access tokens; IAM introspects its JWTs. After
 * oidc-provider has authenticated the calling client, answer for our JWTs from their verified claims.
 */
export function jwtIntrospection(provider, signingKeys) {
  return async function introspect(ctx, next) {
    await next();
    if (ctx.path !== '/introspect' || ctx.body?.error !== 'unsupported_token_type') return;
    const token = ctx.oidc?.params?.token;
    if (!ctx.oidc?.client || typeof token !== 'string') return;
    ctx.status = 200;
    try {
      const payload = verifyJwt(token, signingKeys, { issuer: provider.issuer, typ: 'at+jwt' });
      ctx.body = { ...payload, active: true, token_type: 'Bearer' };
    } catch (err) {
      if (!(err instanceof InvalidJwt)) throw err;
      ctx.body = { active: false };
    }
  };
}
