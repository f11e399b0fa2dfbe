-- Live (or once live) keys found in files by the leak scanner. One row per
-- key and path: a key found again where it was already found is not
-- reported again. The secret is never stored; the prefix, path and line are.
CREATE TABLE leak_findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id BIGINT REFERENCES api_keys (id) ON DELETE SET NULL,
    prefix TEXT NOT NULL,
    path TEXT NOT NULL,
    line BIGINT NOT NULL,
    host TEXT NOT NULL,
    key_status TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('revoked', 'alerted', 'recorded')),
    found_at TIMESTAMP NOT NULL,
    UNIQUE (prefix, path)
);
CREATE INDEX leak_findings_found_at ON leak_findings (found_at);

-- Leak emails (to the key's owner and the admins) go through the outbox:
-- SQLite changes a CHECK by rebuilding the table.
CREATE TABLE notifications_rebuilt (
    id              INTEGER PRIMARY KEY,
    subject_kind    TEXT NOT NULL CHECK (subject_kind IN ('api_key', 'certificate', 'permission_drift', 'job_failure', 'leaked_key')),
    subject_id      TEXT NOT NULL,
    generation      TEXT NOT NULL,
    notice_window   TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    recipient_name  TEXT,
    payload         TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_at      TIMESTAMP,
    last_error      TEXT,
    message_id      TEXT,
    created_at      TIMESTAMP NOT NULL,
    sent_at         TIMESTAMP,
    updated_at      TIMESTAMP NOT NULL,
    claimed_by      TEXT,
    CHECK (status <> 'sent' OR sent_at IS NOT NULL)
);
INSERT INTO notifications_rebuilt (id, subject_kind, subject_id, generation, notice_window, recipient, recipient_name, payload, status, attempts, next_attempt_at, claimed_at, last_error, message_id, created_at, sent_at, updated_at, claimed_by) SELECT id, subject_kind, subject_id, generation, notice_window, recipient, recipient_name, payload, status, attempts, next_attempt_at, claimed_at, last_error, message_id, created_at, sent_at, updated_at, claimed_by FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_rebuilt RENAME TO notifications;
CREATE UNIQUE INDEX notifications_once ON notifications (subject_kind, subject_id, generation, notice_window);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_recipient ON notifications (recipient, created_at);
CREATE INDEX notifications_pending_order ON notifications (status, id);
