-- `scopes` and `allowed_ips` hold JSON arrays of strings. Another
-- application writing anything else (PostgreSQL array text such as
-- {"10.9.9.9"}, a bare string) is refused here, and verification refuses
-- such a key anyway. SQLite cannot add a CHECK to an existing table: these
-- triggers are its CHECK constraints. Rows already present are not judged.
CREATE TRIGGER api_keys_json_lists_insert BEFORE INSERT ON api_keys
WHEN NOT (json_valid(NEW.scopes) AND json_type(NEW.scopes) = 'array'
          AND json_valid(NEW.allowed_ips) AND json_type(NEW.allowed_ips) = 'array')
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: scopes and allowed_ips must be JSON arrays');
END;
CREATE TRIGGER api_keys_json_lists_update BEFORE UPDATE OF scopes, allowed_ips ON api_keys
WHEN NOT (json_valid(NEW.scopes) AND json_type(NEW.scopes) = 'array'
          AND json_valid(NEW.allowed_ips) AND json_type(NEW.allowed_ips) = 'array')
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: scopes and allowed_ips must be JSON arrays');
END;

-- Owners disabled and enabled, by whom: the audit trail of `users`.
CREATE TABLE user_events (
    id         INTEGER PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id),
    event      TEXT NOT NULL CHECK (event IN ('disabled', 'enabled')),
    actor      TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX user_events_user ON user_events (user_id, created_at);
