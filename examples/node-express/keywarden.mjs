// Verifying API keys through keywarden's verification service, for Express.
//
// The service answers on a Unix socket (README.md, "The verification
// service"); this module talks to it with Node's own http module, over
// kept-alive connections, and needs no package besides Express itself.
//
//   import { authenticateApiKey, requireScopes } from './keywarden.mjs';
//   app.use('/api', authenticateApiKey({ socketPath: '/run/keywarden/verify.sock' }));
//   app.post('/api/products', requireScopes('write:products'), handler);
//
// keywarden applies every rule (status, expiry, grace period, the owner's
// status, the allow-list, scopes), counts the use and writes the audit row.
// This module only maps its answer onto HTTP. When the service cannot
// answer, the request is refused with 503: it fails closed.

import http from 'node:http';

const DEFAULT_SOCKET = '/run/keywarden/verify.sock';

// Refusals the caller can fix by presenting another key: 401. The others
// (a valid key that may not do this) are 403.
const FORBIDDEN = new Set(['ip_not_allowed', 'missing_scope', 'owner_disabled']);

/**
 * Asks the service about `key`. Resolves to keywarden's answer
 * ({ outcome: 'valid', key_id, prefix, owner_id, name, scopes, expires_at,
 * grace_ends_at } or { outcome: 'refused', reason, detail, message });
 * rejects when the service cannot be reached or answers with an error.
 */
export function verifyKey(question, { socketPath = DEFAULT_SOCKET, agent, timeoutMs = 10000 } = {}) {
  const body = JSON.stringify({
    key: question.key,
    ip: question.ip ?? undefined,
    scopes: question.scopes ?? [],
    endpoint: question.endpoint ?? undefined,
    user_agent: question.userAgent ?? undefined,
  });
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        agent,
        path: '/v1/verify',
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          let answer;
          try {
            answer = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch (e) {
            return reject(new Error(`keywarden answered ${res.statusCode} without JSON`));
          }
          if (res.statusCode !== 200) {
            return reject(new Error(`keywarden answered ${res.statusCode}: ${answer.error}`));
          }
          resolve(answer);
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('keywarden did not answer in time')));
    req.on('error', reject);
    req.end(body);
  });
}

/** The key a request presents: `Authorization: Bearer <key>` or `X-API-Key`. */
function presentedKey(req) {
  const auth = req.headers.authorization;
  if (typeof auth === 'string' && auth.startsWith('Bearer ')) {
    return auth.slice(7).trim();
  }
  const header = req.headers['x-api-key'];
  return typeof header === 'string' ? header.trim() : '';
}

/**
 * Express middleware doing what the guide's authenticateApiKey does, with
 * keywarden deciding. `scopes` are required of every request it guards.
 * On success it sets req.apiKey (keywarden's answer), req.userId and
 * req.scopes, and the grace-period headers while the key is rotating.
 */
export function authenticateApiKey({ socketPath = DEFAULT_SOCKET, scopes = [], timeoutMs } = {}) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  return async function authenticate(req, res, next) {
    const key = presentedKey(req);
    if (!key) {
      return res.status(401).json({
        error: 'Missing or invalid Authorization header',
        message: 'Format: Authorization: Bearer <key>',
      });
    }
    let answer;
    try {
      answer = await verifyKey(
        {
          key,
          ip: req.ip,
          scopes,
          endpoint: `${req.method} ${req.originalUrl.split('?')[0]}`,
          userAgent: req.headers['user-agent'],
        },
        { socketPath, agent, timeoutMs },
      );
    } catch (e) {
      // Never let a request through that keywarden did not vouch for.
      console.error(`API key verification unavailable: ${e.message}`);
      return res.status(503).json({ error: 'Authentication is unavailable; try again later' });
    }
    if (answer.outcome !== 'valid') {
      const status = FORBIDDEN.has(answer.reason) ? 403 : 401;
      return res.status(status).json({ error: 'Invalid API key', reason: answer.reason });
    }
    if (answer.grace_ends_at) {
      res.setHeader('X-API-Key-Status', 'grace-period');
      res.setHeader('X-API-Key-Valid-Until', answer.grace_ends_at);
    }
    req.apiKey = answer;
    req.userId = answer.owner_id;
    req.scopes = answer.scopes;
    next();
  };
}

/**
 * Route-level scopes, checked on the scopes keywarden returned. (To have
 * keywarden audit the refusal too, pass the scopes to authenticateApiKey.)
 */
export function requireScopes(...required) {
  return (req, res, next) => {
    const have = req.scopes ?? [];
    const missing = required.filter((s) => !have.includes(s));
    if (missing.length > 0) {
      return res.status(403).json({ error: 'Insufficient permissions', required, provided: have });
    }
    next();
  };
}
