// Signing keys of the dev IAM, kept in the state dir so restarts keep the same `kid`s, and a small
// RS256 JWT verifier (our own access tokens are stateless JWTs that oidc-provider cannot look up).
import * as crypto from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function writePrivateJson(path, value) {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 1), { mode: 0o600 });
  renameSync(tmp, path);
}

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = crypto.createHash('sha256').update(`${jwk.e}.${jwk.n}`).digest('base64url').slice(0, 16);
  return { ...jwk, kid, alg: 'RS256', use: 'sig' };
}

/**
 * Private JWKs from `<stateDir>/signing-keys.json`, newest first (the first one signs). When the file
 * holds fewer than `count` keys, new keys are generated and put in front: that is how a rotation
 * happens (raise the count and restart) while older keys stay published for verification.
 */
export function ensureSigningKeys(stateDir, count) {
  const path = join(stateDir, 'signing-keys.json');
  const keys = existsSync(path) ? JSON.parse(readFileSync(path, 'utf8')).keys : [];
  if (keys.length >= count) return keys;
  const fresh = Array.from({ length: count - keys.length }, newSigningKey);
  const all = [...fresh, ...keys];
  writePrivateJson(path, { keys: all });
  return all;
}

/** Keys signing the interaction/session cookies; kept so a restart does not log everyone out. */
export function ensureCookieKeys(stateDir) {
  const path = join(stateDir, 'cookie-keys.json');
  if (existsSync(path)) return JSON.parse(readFileSync(path, 'utf8')).keys;
  const keys = [crypto.randomBytes(32).toString('base64url')];
  writePrivateJson(path, { keys });
  return keys;
}

export class InvalidJwt extends Error {}

function decodePart(part, what) {
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw new InvalidJwt(`malformed JWT ${what}`);
  }
}

/**
 * Verify an RS256 JWT against `privateJwks` (their public halves): signature, `typ`, `iss`, `exp`,
 * `nbf`. Returns the payload; throws InvalidJwt with a reason that never contains the token.
 */
export function verifyJwt(token, privateJwks, { issuer, typ, clockTolerance = 5 }) {
  if (typeof token !== 'string') throw new InvalidJwt('token missing');
  const parts = token.split('.');
  if (parts.length !== 3) throw new InvalidJwt('not a signed JWT');
  const header = decodePart(parts[0], 'header');
  if (header.alg !== 'RS256') throw new InvalidJwt('unexpected JWT alg');
  if (typ && header.typ !== typ) throw new InvalidJwt('unexpected JWT typ');
  const jwk = privateJwks.find((key) => key.kid === header.kid);
  if (!jwk) throw new InvalidJwt('unknown signing key');
  const publicKey = crypto.createPublicKey({ key: { kty: jwk.kty, n: jwk.n, e: jwk.e }, format: 'jwk' });
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  if (!crypto.verify('sha256', signed, publicKey, Buffer.from(parts[2], 'base64url'))) {
    throw new InvalidJwt('bad signature');
  }
  const payload = decodePart(parts[1], 'payload');
  const now = Math.floor(Date.now() / 1000);
  if (payload.iss !== issuer) throw new InvalidJwt('issued by another issuer');
  if (typeof payload.exp !== 'number' || payload.exp + clockTolerance <= now) throw new InvalidJwt('expired');
  if (typeof payload.nbf === 'number' && payload.nbf - clockTolerance > now) throw new InvalidJwt('not yet valid');
  return payload;
}
