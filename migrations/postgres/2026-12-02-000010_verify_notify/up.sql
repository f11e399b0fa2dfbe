-- The verification service (`[verify]`) remembers recent successful
-- verifications. Every change that could turn such an answer into a
-- refusal is announced on the channel keywarden_keys, by whoever makes it
-- (keywarden, or another application sharing the database), so that every
-- replica forgets the key at once. Payloads: 'k:<api_keys.id>',
-- 'u:<users.id>', '*' (forget everything).
--
-- Changes the cache already checks by the clock are not announced: an
-- active key expired after its expires_at, a rotating key revoked after
-- its grace period. Usage counting (usage_count, last_used_at) is not a
-- change of state. The WHEN clauses are evaluated without calling the
-- function, so the expiry job and usage counting pay nothing.

CREATE FUNCTION keywarden_announce_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('keywarden_keys', 'k:' || OLD.id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('keywarden_keys', 'k:' || NEW.id);
    RETURN NEW;
END
$$;

CREATE FUNCTION keywarden_announce_user_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('keywarden_keys', 'u:' || OLD.id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('keywarden_keys', 'u:' || NEW.id);
    RETURN NEW;
END
$$;

CREATE FUNCTION keywarden_announce_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keywarden_keys', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_announce_update AFTER UPDATE ON api_keys
FOR EACH ROW
WHEN (
    OLD.key_hash IS DISTINCT FROM NEW.key_hash
    OR OLD.prefix IS DISTINCT FROM NEW.prefix
    OR OLD.owner_id IS DISTINCT FROM NEW.owner_id
    OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
    OR OLD.grace_period_ends_at IS DISTINCT FROM NEW.grace_period_ends_at
    OR OLD.scopes IS DISTINCT FROM NEW.scopes
    OR OLD.allowed_ips IS DISTINCT FROM NEW.allowed_ips
    OR (OLD.status IS DISTINCT FROM NEW.status AND NOT (
        (OLD.status = 'active' AND NEW.status = 'expired' AND NEW.expires_at <= now())
        OR (OLD.status = 'rotating' AND NEW.status = 'revoked' AND NEW.grace_period_ends_at <= now())
    ))
)
EXECUTE FUNCTION keywarden_announce_key_change();

CREATE TRIGGER api_keys_announce_delete AFTER DELETE ON api_keys
FOR EACH ROW EXECUTE FUNCTION keywarden_announce_key_change();

CREATE TRIGGER api_keys_announce_truncate AFTER TRUNCATE ON api_keys
FOR EACH STATEMENT EXECUTE FUNCTION keywarden_announce_truncate();

CREATE TRIGGER users_announce_update AFTER UPDATE ON users
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION keywarden_announce_user_change();

CREATE TRIGGER users_announce_delete AFTER DELETE ON users
FOR EACH ROW EXECUTE FUNCTION keywarden_announce_user_change();

CREATE TRIGGER users_announce_truncate AFTER TRUNCATE ON users
FOR EACH STATEMENT EXECUTE FUNCTION keywarden_announce_truncate();

-- A later migration that changes the type of a column named above must
-- drop api_keys_announce_update first and create it again.
