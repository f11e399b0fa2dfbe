DROP TRIGGER api_keys_json_lists_insert;
DROP TRIGGER api_keys_json_lists_update;
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
