// The dev IAM's directory (users, groups, scope policies from users.json) and the scope rules that
// INDIGO-IAM applies: per-client scope allow-lists (with path-parameterised storage scopes) and
// group-based scope policies per user. Pure functions over plain data.
import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';

import { ConfigError } from './config.mjs';

/** Scopes listed in discovery; `storage.*:/` also stands for every `storage.*:/<path>`. */
export const STATIC_SCOPES = [
  'openid', 'profile', 'email', 'offline_access', 'wlcg', 'wlcg.groups',
  'compute.read', 'compute.create', 'compute.modify', 'compute.cancel',
  'storage.read:/', 'storage.create:/', 'storage.modify:/',
];

const STORAGE_SCOPE = /^(storage\.(?:read|create|modify)):(\/\S*)$/;

/** Does the client's registered scope string allow `scope`? `storage.read:/a` allows `storage.read:/a/b`. */
export function clientAllowsScope(clientScope, scope) {
  const allowed = new Set((clientScope ?? '').split(' ').filter(Boolean));
  if (allowed.has(scope)) return true;
  const match = STORAGE_SCOPE.exec(scope);
  if (!match) return false;
  const [, name, path] = match;
  for (const entry of allowed) {
    if (!entry.startsWith(`${name}:`)) continue;
    const prefix = entry.slice(name.length + 1);
    if (prefix === '/' || path === prefix || path.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`)) {
      return true;
    }
  }
  return false;
}

function scopeMatches(pattern, scope) {
  return pattern.endsWith('*') ? scope.startsWith(pattern.slice(0, -1)) : pattern === scope;
}

export class Directory {
  constructor({ users, scope_policies: policies = [] }) {
    this.users = users;
    this.policies = policies;
    this.bySub = new Map(users.map((user) => [user.sub, user]));
    this.byName = new Map(users.map((user) => [user.username, user]));
  }

  static load(path) {
    let raw;
    try {
      raw = JSON.parse(readFileSync(path, 'utf8'));
    } catch (err) {
      throw new ConfigError(`cannot read users file ${path}: ${err.message}`);
    }
    if (!Array.isArray(raw.users) || raw.users.length === 0) {
      throw new ConfigError(`users file ${path} lists no users`);
    }
    for (const user of raw.users) {
      for (const key of ['username', 'password', 'sub']) {
        if (typeof user[key] !== 'string' || !user[key]) {
          throw new ConfigError(`users file ${path}: every user needs a string ${key}`);
        }
      }
      user.groups ??= [];
    }
    return new Directory(raw);
  }

  /** The user whose password matches, or undefined (constant-time compare). */
  authenticate(username, password) {
    const user = this.byName.get(username);
    const expected = Buffer.from(user?.password ?? 'no such user, still compare');
    const given = Buffer.from(typeof password === 'string' ? password : '');
    const same = expected.length === given.length && crypto.timingSafeEqual(expected, given);
    return user && same ? user : undefined;
  }

  /** IAM scope policies: a scope matched by a policy is only for members of its groups. */
  userMayGet(user, scope) {
    for (const policy of this.policies) {
      if (policy.scopes.some((pattern) => scopeMatches(pattern, scope))) {
        return (user?.groups ?? []).some((group) => policy.groups.includes(group));
      }
    }
    return true;
  }
}

/** Claims IAM returns for `user` given the granted scopes (userinfo and, by request, ID tokens). */
export function userClaims(user, scopes) {
  const claims = { sub: user.sub };
  if (scopes.has('profile')) {
    Object.assign(claims, {
      preferred_username: user.username,
      name: user.name ?? user.username,
      given_name: user.given_name,
      family_name: user.family_name,
      // IAM's own `groups` claim: group names without the leading slash.
      groups: user.groups.map((group) => group.replace(/^\//, '')),
      organisation_name: user.organisation_name ?? 'cms',
    });
  }
  if (scopes.has('email')) {
    Object.assign(claims, { email: user.email, email_verified: Boolean(user.email) });
  }
  if (scopes.has('wlcg.groups')) claims['wlcg.groups'] = [...user.groups];
  return Object.fromEntries(Object.entries(claims).filter(([, value]) => value !== undefined));
}
