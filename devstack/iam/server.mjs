// The cmsaf-hub development identity provider: npm oidc-provider configured like INDIGO-IAM.
// Usage: node devstack/iam/server.mjs <config.json>   (devstack/iam.py writes the config)
// Prints exactly one stdout line, `dev-iam ready <issuer>`, once it listens; logs go to stderr.
import { readFileSync, mkdirSync } from 'node:fs';
import * as https from 'node:https';

import { ConfigError, loadConfig } from './config.mjs';
import { fileAdapter } from './adapter.mjs';
import { ensureCookieKeys, ensureSigningKeys } from './keys.mjs';
import { Directory } from './users.mjs';

// oidc-provider 9 warns at import time that Node.js < 22 is unsupported. This machine runs Node 20,
// on which it was verified to work (see README.md), so that one warning is replaced by a note.
// stdout carries exactly one line (the ready line); library notices go to stderr with the logs.
console.info = console.error;
const RUNTIME_WARNING = 'oidc-provider WARNING: Unsupported runtime.';
const realWarn = console.warn;
console.warn = (first, ...rest) => {
  if (typeof first === 'string' && first.startsWith(RUNTIME_WARNING)) return;
  realWarn(first, ...rest);
};
const { buildProvider } = await import('./provider.mjs');
const {
  jwtIntrospection, jwtUserinfo, loginInteraction, offlineAccessLikeIam, requestLog,
} = await import('./routes.mjs');
console.warn = realWarn;

function log(line) {
  process.stderr.write(`${new Date().toISOString()} dev-iam ${line}\n`);
}

function fail(message) {
  process.stderr.write(`dev-iam: error: ${message}\n`);
  process.exit(1);
}

function listen(server, host, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

async function main(configPath) {
  if (!configPath) throw new ConfigError('usage: node server.mjs <config.json>');
  const config = loadConfig(configPath);
  const directory = Directory.load(config.usersFile);
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  const signingKeys = ensureSigningKeys(config.stateDir, config.signingKeys);
  const cookieKeys = ensureCookieKeys(config.stateDir);
  let tls;
  try {
    tls = { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) };
  } catch (err) {
    throw new ConfigError(`cannot read TLS certificate/key: ${err.message}`);
  }

  // Listen first: with port 0 the issuer URL is only known once the port is.
  const server = https.createServer(tls);
  let port;
  try {
    port = await listen(server, config.host, config.port);
  } catch (err) {
    if (err.code === 'EADDRINUSE') throw new ConfigError(`port ${config.port} on ${config.host} is already in use`);
    throw new ConfigError(`cannot listen on ${config.host}:${config.port}: ${err.message}`);
  }
  const hostPart = config.host.includes(':') ? `[${config.host}]` : config.host;
  const issuer = `https://${hostPart}:${port}/`;

  const provider = buildProvider(issuer, {
    config, directory, signingKeys, cookieKeys, Adapter: fileAdapter(config.stateDir),
  });
  provider.use(requestLog(log));
  provider.use(jwtIntrospection(provider, signingKeys));
  provider.use(jwtUserinfo(provider, directory, signingKeys));
  provider.use(loginInteraction(provider, directory, log));
  provider.use(offlineAccessLikeIam());
  provider.on('server_error', (ctx, err) => log(`server error on ${ctx.path}: ${err.message}`));
  for (const event of ['grant.error', 'authorization.error', 'introspection.error', 'revocation.error', 'userinfo.error']) {
    provider.on(event, (ctx, err) => log(`${event} ${err.error}: ${err.error_description ?? err.message}`));
  }
  server.on('request', provider.callback());

  const shutdown = (why) => {
    log(`stopping (${why})`);
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => shutdown(signal));
  if (config.exitOnStdinClose) {
    // Started by devstack/iam.py: if the Python side dies, its end of our stdin closes; follow it.
    process.stdin.on('end', () => shutdown('parent went away')).resume();
  }
  if (process.release.lts === undefined || Number(process.versions.node.split('.')[0]) < 22) {
    log(`note: Node.js ${process.versions.node}; oidc-provider asks for 22+ and is verified to work here`);
  }
  log(`issuer ${issuer}; signing key ${signingKeys[0].kid} (${signingKeys.length} published)`);
  process.stdout.write(`dev-iam ready ${issuer}\n`);
}

main(process.argv[2]).catch((err) => {
  if (err instanceof ConfigError) fail(err.message);
  fail(err.stack ?? String(err));
});
