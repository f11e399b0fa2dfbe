-- `scopes` and `allowed_ips` hold JSON arrays of strings. Another
-- application writing anything else (PostgreSQL array text such as
-- {"10.9.9.9"}, a bare string) is refused here, and verification refuses
-- such a key anyway. NOT VALID: rows already present are not judged (an
-- upgrade must not fail on them); every new or changed row is.
CREATE FUNCTION keywarden_is_json_array(value TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN json_typeof(value::json) = 'array';
EXCEPTION WHEN others THEN
    RETURN FALSE;
END;
$$;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scopes_json_array
    CHECK (keywarden_is_json_array(scopes)) NOT VALID;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_allowed_ips_json_array
    CHECK (keywarden_is_json_array(allowed_ips)) NOT VALID;

-- Owners disabled and enabled, by whom: the audit trail of `users`.
CREATE TABLE user_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id),
    event      TEXT NOT NULL CHECK (event IN ('disabled', 'enabled')),
    actor      TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX user_events_user ON user_events (user_id, created_at);
