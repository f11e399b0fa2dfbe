-- Permission drift. `permission_drift` holds what is wrong right now, one
-- row per (host, path); `permission_events` is the append-only history:
-- each drift is recorded once when it appears and once when it ends.
-- Both are per host: replicas on several machines watch their own files.
CREATE TABLE permission_drift (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host               TEXT NOT NULL,
    path               TEXT NOT NULL,
    rules              TEXT NOT NULL,
    expected           TEXT NOT NULL,
    found_mode         INTEGER NOT NULL CHECK (found_mode >= 0),
    found_uid          BIGINT NOT NULL,
    found_gid          BIGINT NOT NULL,
    -- What was found and expected, so a change in either is a new detection.
    fingerprint        TEXT NOT NULL,
    -- Set when remediation was refused for this fingerprint (reported once).
    refused            TEXT,
    detected_at        TIMESTAMP NOT NULL,
    updated_at         TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX permission_drift_path ON permission_drift (host, path);

CREATE TABLE permission_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host        TEXT NOT NULL,
    path        TEXT NOT NULL,
    rules       TEXT NOT NULL,
    expected    TEXT NOT NULL,
    found_mode  INTEGER CHECK (found_mode >= 0),
    found_uid   BIGINT,
    found_gid   BIGINT,
    action      TEXT NOT NULL CHECK (action IN ('detected', 'remediated', 'remediation-refused', 'resolved')),
    detail      TEXT,
    created_at  TIMESTAMP NOT NULL
);
CREATE INDEX permission_events_host ON permission_events (host, id);
CREATE INDEX permission_events_created ON permission_events (created_at);
