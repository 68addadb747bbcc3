// Reads and checks the dev IAM's run configuration (a JSON file written by devstack/iam.py).
// Pure: no I/O besides reading the file; every problem becomes one ConfigError line.
import { readFileSync } from 'node:fs';

export class ConfigError extends Error {}

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

const KNOWN_GRANTS = new Set([
  'authorization_code', 'refresh_token', 'client_credentials', DEVICE_CODE_GRANT, TOKEN_EXCHANGE_GRANT,
]);

const TTL_NAMES = ['access_token', 'id_token', 'refresh_token', 'device_code'];

function positiveInt(value, name) {
  if (!Number.isInteger(value) || value <= 0) {
    throw new ConfigError(`${name} must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

function checkClient(client, index) {
  const where = `clients[${index}]`;
  if (typeof client?.client_id !== 'string' || !client.client_id) {
    throw new ConfigError(`${where}.client_id must be a non-empty string`);
  }
  if (typeof client.client_secret !== 'string' || client.client_secret.length < 8) {
    throw new ConfigError(`${where} (${client.client_id}): client_secret must be a string of 8+ characters`);
  }
  const grants = client.grant_types ?? ['authorization_code', 'refresh_token'];
  for (const grant of grants) {
    if (!KNOWN_GRANTS.has(grant)) {
      throw new ConfigError(`${where} (${client.client_id}): unknown grant type ${JSON.stringify(grant)}`);
    }
  }
  const redirectUris = client.redirect_uris ?? [];
  if (grants.includes('authorization_code') && redirectUris.length === 0) {
    throw new ConfigError(`${where} (${client.client_id}): authorization_code needs at least one redirect_uri`);
  }
  const allowed = client.scope ?? 'openid profile email offline_access';
  // oidc-provider only accepts its static scopes in client metadata: `storage.read:/store/user`
  // registers as `storage.read:/`; the exact allow-list is kept in `allowed_scope` and enforced here.
  const registered = [...new Set(allowed.split(' ').filter(Boolean)
    .map((scope) => scope.replace(/^(storage\.(?:read|create|modify)):\/.*$/, '$1:/')))];
  return {
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: redirectUris,
    // where RP-initiated logout (end_session) may send the browser back to
    post_logout_redirect_uris: client.post_logout_redirect_uris ?? [],
    grant_types: grants,
    response_types: grants.includes('authorization_code') ? ['code'] : [],
    scope: registered.join(' '),
    token_endpoint_auth_method: 'client_secret_basic',
    // Not oidc-provider metadata (split off before it sees them): the exact scope allow-list, and
    // the `aud` of access tokens when the request names no audience.
    allowed_scope: allowed,
    default_audience: client.default_audience ?? client.client_id,
  };
}

/** Load the config file at `path`; returns a normalised plain object or throws ConfigError. */
export function loadConfig(path) {
  let raw;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`cannot read config ${path}: ${err.message}`);
  }
  for (const key of ['state_dir', 'users_file', 'tls']) {
    if (!raw[key]) throw new ConfigError(`config key ${key} is required`);
  }
  if (!raw.tls.cert || !raw.tls.key) throw new ConfigError('config tls needs cert and key paths');
  const port = raw.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(`port must be an integer in 0..65535, got ${JSON.stringify(port)}`);
  }
  const ttl = {};
  for (const name of TTL_NAMES) ttl[name] = positiveInt(raw.ttl?.[name] ?? 3600, `ttl.${name}`);
  const clients = (raw.clients ?? []).map(checkClient);
  const ids = new Set();
  for (const client of clients) {
    if (ids.has(client.client_id)) throw new ConfigError(`client ${client.client_id} is listed twice`);
    ids.add(client.client_id);
  }
  if (clients.length === 0) throw new ConfigError('config lists no clients');
  return {
    host: raw.host ?? '127.0.0.1',
    port,
    tls: { cert: raw.tls.cert, key: raw.tls.key },
    stateDir: raw.state_dir,
    usersFile: raw.users_file,
    exitOnStdinClose: raw.exit_on_stdin_close === true,
    signingKeys: positiveInt(raw.signing_keys ?? 1, 'signing_keys'),
    ttl,
    clients,
  };
}
