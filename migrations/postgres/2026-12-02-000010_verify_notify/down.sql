DROP TRIGGER users_announce_truncate ON users;
DROP TRIGGER users_announce_delete ON users;
DROP TRIGGER users_announce_update ON users;
DROP TRIGGER api_keys_announce_truncate ON api_keys;
DROP TRIGGER api_keys_announce_delete ON api_keys;
DROP TRIGGER api_keys_announce_update ON api_keys;
DROP FUNCTION keywarden_announce_truncate();
DROP FUNCTION keywarden_announce_user_change();
DROP FUNCTION keywarden_announce_key_change();
