// A small Express API guarded by keywarden (see keywarden.mjs).
//
//   KEYWARDEN_VERIFY_SOCKET=/run/keywarden/verify.sock PORT=3000 node server.mjs
//
// GET /api/products needs read:products (checked by keywarden, which
// audits a refusal); POST /api/products also needs write:products.

import express from 'express';
import { authenticateApiKey, requireScopes } from './keywarden.mjs';

const socketPath = process.env.KEYWARDEN_VERIFY_SOCKET ?? '/run/keywarden/verify.sock';
const port = Number(process.env.PORT ?? 3000);

const app = express();
app.use(express.json());

app.get('/health', (req, res) => res.json({ status: 'ok' }));

const api = express.Router();
api.use(authenticateApiKey({ socketPath, scopes: ['read:products'] }));
api.get('/products', (req, res) => {
  res.json({ products: [], owner_id: req.userId, key: req.apiKey.prefix, scopes: req.scopes });
});
api.post('/products', requireScopes('write:products'), (req, res) => {
  res.status(201).json({ created: req.body?.name ?? null, owner_id: req.userId });
});
app.use('/api', api);

const server = app.listen(port, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
