-- The schema other applications share (README, "Sharing the database").
-- Timestamps stay UTC text (`YYYY-MM-DD HH:MM:SS[.ffffff]`), as before.
--
-- The JSON checks on `scopes` and `allowed_ips` (triggers since 000006)
-- also refuse an array holding anything but strings, and always answer
-- "CHECK constraint failed": json_type is asked only of valid JSON (SQLite
-- does not promise to stop evaluating an AND early, and json_type of
-- malformed JSON is an error of its own).
DROP TRIGGER api_keys_json_lists_insert;
DROP TRIGGER api_keys_json_lists_update;
CREATE TRIGGER api_keys_json_lists_insert BEFORE INSERT ON api_keys
WHEN NOT (CASE WHEN json_valid(NEW.scopes) AND json_valid(NEW.allowed_ips)
               THEN json_type(NEW.scopes) = 'array' AND json_type(NEW.allowed_ips) = 'array'
                    AND NOT EXISTS (SELECT 1 FROM json_each(NEW.scopes) WHERE type <> 'text')
                    AND NOT EXISTS (SELECT 1 FROM json_each(NEW.allowed_ips) WHERE type <> 'text')
               ELSE 0 END)
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: scopes and allowed_ips must be JSON arrays of strings');
END;

CREATE TRIGGER api_keys_json_lists_update BEFORE UPDATE OF scopes, allowed_ips ON api_keys
WHEN NOT (CASE WHEN json_valid(NEW.scopes) AND json_valid(NEW.allowed_ips)
               THEN json_type(NEW.scopes) = 'array' AND json_type(NEW.allowed_ips) = 'array'
                    AND NOT EXISTS (SELECT 1 FROM json_each(NEW.scopes) WHERE type <> 'text')
                    AND NOT EXISTS (SELECT 1 FROM json_each(NEW.allowed_ips) WHERE type <> 'text')
               ELSE 0 END)
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: scopes and allowed_ips must be JSON arrays of strings');
END;
