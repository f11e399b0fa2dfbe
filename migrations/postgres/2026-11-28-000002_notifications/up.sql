-- The notification outbox. One row per (subject, generation, window): the
-- unique index makes a second warning for the same key and window impossible
-- however often the job runs and however many replicas run it. The
-- generation is the subject's expiry, so a key whose expiry is extended
-- becomes eligible again for its new windows.
CREATE TABLE notifications (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    CHECK (status <> 'sent' OR sent_at IS NOT NULL)
);
CREATE UNIQUE INDEX notifications_once ON notifications (subject_kind, subject_id, generation, notice_window);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_recipient ON notifications (recipient, created_at);
