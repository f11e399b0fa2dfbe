CREATE TABLE notifications_rebuilt (
    id              INTEGER PRIMARY KEY,
    subject_kind    TEXT NOT NULL CHECK (subject_kind IN ('api_key', 'certificate', 'permission_drift', 'job_failure')),
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
INSERT INTO notifications_rebuilt (id, subject_kind, subject_id, generation, notice_window, recipient, recipient_name, payload, status, attempts, next_attempt_at, claimed_at, last_error, message_id, created_at, sent_at, updated_at, claimed_by) SELECT id, subject_kind, subject_id, generation, notice_window, recipient, recipient_name, payload, status, attempts, next_attempt_at, claimed_at, last_error, message_id, created_at, sent_at, updated_at, claimed_by FROM notifications WHERE subject_kind <> 'leaked_key';
DROP TABLE notifications;
ALTER TABLE notifications_rebuilt RENAME TO notifications;
CREATE UNIQUE INDEX notifications_once ON notifications (subject_kind, subject_id, generation, notice_window);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_recipient ON notifications (recipient, created_at);
CREATE INDEX notifications_pending_order ON notifications (status, id);
DROP TABLE leak_findings;
