// Issuing and verifying keywarden keys from a Node.js application that
// shares keywarden's PostgreSQL database, written from README.md's
// "Sharing the database" section alone.
//
//   DATABASE_URL=postgres://... node shared-db.mjs issue OWNER_EMAIL NAME SCOPE...
//       prints {"key": ..., "prefix": ..., "expires_at": ...}; the key is shown once
//   DATABASE_URL=postgres://... node shared-db.mjs verify IP SCOPE... < key
//       prints {"valid": true, ...} or {"valid": false, "reason": ...}
import crypto from "node:crypto";
import net from "node:net";
import argon2 from "argon2";
import pg from "pg";

const ACTOR = "app:node-example";
const DAY_MS = 24 * 3600 * 1000;

async function issue(db, ownerEmail, name, scopes) {
  const owner = await db.query(
    "INSERT INTO users (email) VALUES ($1) ON CONFLICT ((lower(email))) DO UPDATE SET email = users.email RETURNING id",
    [ownerEmail],
  );
  const prefix = "sk_live_v2_" + crypto.randomBytes(8).toString("hex");
  const secret = crypto.randomBytes(32).toString("base64url");
  const hash = await argon2.hash(secret, { type: argon2.argon2id });
  // A Date: node-postgres sends it as local time with its offset.
  const expiresAt = new Date(Date.now() + 90 * DAY_MS);
  const key = await db.query(
    "INSERT INTO api_keys (prefix, key_hash, name, owner_id, scopes, allowed_ips, expires_at) " +
      "VALUES ($1, $2, $3, $4, $5, '[]', $6) RETURNING id",
    [prefix, hash, name, owner.rows[0].id, JSON.stringify(scopes), expiresAt],
  );
  await db.query(
    "INSERT INTO api_key_events (key_id, prefix, event, actor) VALUES ($1, $2, 'created', $3)",
    [key.rows[0].id, prefix, ACTOR],
  );
  return { key: `${prefix}.${secret}`, prefix, expires_at: expiresAt.toISOString() };
}

function ipAllowed(list, ip) {
  if (list.length === 0) return true;
  const blocks = new net.BlockList();
  for (const entry of list) {
    const [addr, bits] = entry.split("/");
    const type = net.isIPv6(addr) ? "ipv6" : "ipv4";
    if (!net.isIP(addr)) return null;
    if (bits === undefined) blocks.addAddress(addr, type);
    else blocks.addSubnet(addr, Number(bits), type);
  }
  return blocks.check(ip, net.isIPv6(ip) ? "ipv6" : "ipv4");
}

function parseList(text) {
  try {
    const v = JSON.parse(text);
    return Array.isArray(v) && v.every((e) => typeof e === "string") ? v : null;
  } catch {
    return null;
  }
}

async function verify(db, presented, ip, required) {
  const parts = presented.trim().split(".");
  if (parts.length !== 2 || !/^[A-Za-z0-9_]{3,64}$/.test(parts[0]) || !/^[A-Za-z0-9_-]{16,128}$/.test(parts[1])) {
    return { valid: false, reason: "malformed" };
  }
  const [prefix, secret] = parts;
  const found = await db.query(
    "SELECT k.id, k.key_hash, k.status, k.scopes, k.allowed_ips, k.expires_at, " +
      "k.grace_period_ends_at, u.status AS owner_status " +
      "FROM api_keys k JOIN users u ON u.id = k.owner_id WHERE k.prefix = $1",
    [prefix],
  );
  const row = found.rows[0];
  // An unknown prefix costs what a wrong secret costs: verify against a stored hash.
  const hash = row ? row.key_hash : (await db.query("SELECT key_hash FROM api_keys LIMIT 1")).rows[0]?.key_hash;
  const secretOk = hash ? await argon2.verify(hash, secret).catch(() => false) : false;
  const refuse = async (reason) => {
    if (row) {
      await db.query(
        "INSERT INTO api_key_events (key_id, prefix, event, reason, actor, ip) VALUES ($1, $2, 'verify_failed', $3, $4, $5)",
        [row.id, prefix, reason, ACTOR, ip],
      );
    }
    return { valid: false, reason };
  };
  if (!row || !secretOk) return refuse("invalid key");
  const now = new Date();
  const inGrace = row.status === "rotating" && row.grace_period_ends_at > now;
  if (row.status !== "active" && !inGrace) return refuse(row.status);
  if (row.expires_at <= now) return refuse("expired");
  if (row.owner_status !== "active") return refuse("owner disabled");
  const ips = parseList(row.allowed_ips);
  const scopes = parseList(row.scopes);
  if (ips === null || scopes === null) return refuse("unreadable restrictions");
  const allowed = ipAllowed(ips, ip);
  if (allowed !== true) return refuse(allowed === null ? "unreadable restrictions" : "address not allowed");
  const missing = required.filter((s) => !scopes.includes(s));
  if (missing.length > 0) return refuse("missing scope " + missing.join(","));
  // Counted in the database: concurrent requests never lose a use.
  await db.query("UPDATE api_keys SET usage_count = usage_count + 1, last_used_at = now() WHERE id = $1", [row.id]);
  await db.query(
    "INSERT INTO api_key_events (key_id, prefix, event, actor, ip) VALUES ($1, $2, 'used', $3, $4)",
    [row.id, prefix, ACTOR, ip],
  );
  return { valid: true, prefix, scopes, expires_at: row.expires_at.toISOString(), grace: inGrace };
}

async function readStdin() {
  let data = "";
  for await (const chunk of process.stdin) data += chunk;
  return data;
}

const [command, ...args] = process.argv.slice(2);
const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
try {
  let result;
  if (command === "issue") result = await issue(db, args[0], args[1], args.slice(2));
  else if (command === "verify") result = await verify(db, await readStdin(), args[0], args.slice(1));
  else throw new Error("usage: shared-db.mjs issue OWNER NAME SCOPE... | verify IP SCOPE... < key");
  console.log(JSON.stringify(result));
} finally {
  await db.end();
}
