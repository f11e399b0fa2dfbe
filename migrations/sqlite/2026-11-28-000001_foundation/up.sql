-- keywarden's first schema: job bookkeeping and the API-key model.
-- Timestamps are UTC text ('YYYY-MM-DD HH:MM:SS.ffffff'), as Diesel writes them.

CREATE TABLE job_runs (
    id            INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL UNIQUE,
    job           TEXT NOT NULL,
    host          TEXT NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    started_at    TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP,
    outcome       TEXT NOT NULL CHECK (outcome IN ('running', 'ok', 'failed', 'interrupted')),
    rows_affected BIGINT NOT NULL DEFAULT 0 CHECK (rows_affected >= 0),
    error         TEXT,
    CHECK ((outcome = 'running') = (finished_at IS NULL))
);
CREATE INDEX job_runs_job_started ON job_runs (job, started_at DESC);

CREATE TABLE job_leases (
    job         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at TIMESTAMP NOT NULL,
    expires_at  TIMESTAMP NOT NULL
);

CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL CHECK (length(email) BETWEEN 3 AND 254 AND email LIKE '%_@_%'),
    name       TEXT,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX users_email_unique ON users (lower(email));

CREATE TABLE api_keys (
    id                   INTEGER PRIMARY KEY,
    prefix               TEXT NOT NULL UNIQUE,
    key_hash             TEXT NOT NULL CHECK (key_hash LIKE '$argon2id$%'),
    name                 TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status               TEXT NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'rotating', 'revoked', 'expired')),
    version              INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    owner_id             BIGINT NOT NULL REFERENCES users (id),
    scopes               TEXT NOT NULL DEFAULT '[]',
    allowed_ips          TEXT NOT NULL DEFAULT '[]',
    expires_at           TIMESTAMP NOT NULL,
    rotated_at           TIMESTAMP,
    revoked_at           TIMESTAMP,
    revoked_reason       TEXT,
    grace_period_ends_at TIMESTAMP,
    replaced_by_id       BIGINT REFERENCES api_keys (id),
    last_used_at         TIMESTAMP,
    usage_count          BIGINT NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    created_at           TIMESTAMP NOT NULL,
    updated_at           TIMESTAMP NOT NULL,
    CHECK (status <> 'rotating' OR (rotated_at IS NOT NULL AND grace_period_ends_at IS NOT NULL)),
    CHECK (status <> 'revoked' OR revoked_at IS NOT NULL),
    CHECK (replaced_by_id IS NULL OR replaced_by_id <> id)
);
CREATE INDEX api_keys_status_expires ON api_keys (status, expires_at);
CREATE INDEX api_keys_status_grace ON api_keys (status, grace_period_ends_at);
CREATE INDEX api_keys_owner_status ON api_keys (owner_id, status);

-- Append-only audit trail: rows are inserted by every state change in the
-- same transaction, deleted only by retention, never updated. key_id has no
-- foreign key on purpose: keywarden writes it from the key row itself, every
-- event also carries the key's prefix, the trail must not depend on the key
-- rows' lifecycle, and the per-row lock a foreign key check takes made bulk
-- expiry cost 1.5 times as much (benches/expire_keys.rs).
CREATE TABLE api_key_events (
    id         INTEGER PRIMARY KEY,
    key_id     BIGINT,
    prefix     TEXT NOT NULL,
    event      TEXT NOT NULL CHECK (event IN
               ('created', 'used', 'verify_failed', 'rotated', 'revoked', 'expired', 'grace_ended')),
    reason     TEXT,
    actor      TEXT NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    endpoint   TEXT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX api_key_events_key_created ON api_key_events (key_id, created_at);
CREATE INDEX api_key_events_created ON api_key_events (created_at);

CREATE TRIGGER api_key_events_no_update BEFORE UPDATE ON api_key_events
BEGIN
    SELECT RAISE(ABORT, 'api_key_events is append-only');
END;
