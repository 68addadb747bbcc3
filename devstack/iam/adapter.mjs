// A small file-backed oidc-provider adapter: all models in one JSON file, rewritten atomically after
// each change. Enough for a dev IdP with a handful of users, and it means a restart (for example a
// signing-key rotation) keeps sessions, grants and refresh tokens valid within a run.
import { existsSync, readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

class FileStore {
  constructor(path) {
    this.path = path;
    this.entries = new Map();
    this.pending = Promise.resolve();
    if (existsSync(path)) {
      const now = Date.now();
      for (const [key, entry] of Object.entries(JSON.parse(readFileSync(path, 'utf8')))) {
        if (!entry.expiresAt || entry.expiresAt > now) this.entries.set(key, entry);
      }
    }
  }

  get(key) {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt && entry.expiresAt <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  /** Persist the whole store (dropping expired entries); writes are chained so they never interleave. */
  flush() {
    const now = Date.now();
    for (const [key, entry] of this.entries) {
      if (entry.expiresAt && entry.expiresAt <= now) this.entries.delete(key);
    }
    const snapshot = JSON.stringify(Object.fromEntries(this.entries));
    this.pending = this.pending.then(async () => {
      const tmp = `${this.path}.tmp`;
      await writeFile(tmp, snapshot, { mode: 0o600 });
      await rename(tmp, this.path);
    });
    return this.pending;
  }
}

/** Build the adapter class oidc-provider instantiates once per model name. */
export function fileAdapter(stateDir) {
  const store = new FileStore(join(stateDir, 'store.json'));

  return class FileAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      store.entries.set(this.key(id), {
        payload,
        expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined,
      });
      await store.flush();
    }

    async find(id) {
      return store.get(this.key(id))?.payload;
    }

    async findByUid(uid) {
      return this.findBy((payload) => payload.uid === uid);
    }

    async findByUserCode(userCode) {
      return this.findBy((payload) => payload.userCode === userCode);
    }

    findBy(predicate) {
      const prefix = `${this.model}:`;
      for (const key of store.entries.keys()) {
        const payload = key.startsWith(prefix) ? store.get(key)?.payload : undefined;
        if (payload && predicate(payload)) return payload;
      }
      return undefined;
    }

    async consume(id) {
      const entry = store.get(this.key(id));
      if (entry) {
        entry.payload.consumed = Math.floor(Date.now() / 1000);
        await store.flush();
      }
    }

    async destroy(id) {
      store.entries.delete(this.key(id));
      await store.flush();
    }

    async revokeByGrantId(grantId) {
      for (const [key, entry] of store.entries) {
        if (entry.payload.grantId === grantId) store.entries.delete(key);
      }
      await store.flush();
    }
  };
}
