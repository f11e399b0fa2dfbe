-- One row per configured certificate: issued ones (renewed over ACME) and
-- monitored ones (only watched). What is installed, when it is next due,
-- and how the last attempt went.
CREATE TABLE certificates (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL CHECK (kind IN ('issued', 'monitored')),
    source           TEXT NOT NULL,
    domains          TEXT NOT NULL DEFAULT '',
    serial           TEXT,
    issuer           TEXT,
    not_before       TIMESTAMP,
    not_after        TIMESTAMP,
    -- When renewal falls due (ARI choice or lifetime rule, with the spread).
    renew_at         TIMESTAMP,
    -- When renew_at was last decided (ARI windows are asked for again).
    renew_planned_at TIMESTAMP,
    last_attempt_at  TIMESTAMP,
    last_success_at  TIMESTAMP,
    last_error       TEXT,
    failures         INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    next_attempt_at  TIMESTAMP,
    updated_at       TIMESTAMP NOT NULL
);
CREATE INDEX certificates_due ON certificates (next_attempt_at);
