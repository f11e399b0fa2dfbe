-- Live (or once live) keys found in files by the leak scanner. One row per
-- key and path: a key found again where it was already found is not
-- reported again. The secret is never stored; the prefix, path and line are.
CREATE TABLE leak_findings (
    id BIGSERIAL PRIMARY KEY,
    key_id BIGINT REFERENCES api_keys (id) ON DELETE SET NULL,
    prefix TEXT NOT NULL,
    path TEXT NOT NULL,
    line BIGINT NOT NULL,
    host TEXT NOT NULL,
    -- The key's status when it was found, and what was done.
    key_status TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('revoked', 'alerted', 'recorded')),
    found_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (prefix, path)
);
CREATE INDEX leak_findings_found_at ON leak_findings (found_at);

-- Leak emails (to the key's owner and the admins) go through the outbox.
ALTER TABLE notifications DROP CONSTRAINT notifications_subject_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_subject_kind_check
    CHECK (subject_kind IN ('api_key', 'certificate', 'permission_drift', 'job_failure', 'leaked_key'));
