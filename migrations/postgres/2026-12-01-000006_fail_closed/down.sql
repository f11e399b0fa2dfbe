DROP TABLE user_events;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_allowed_ips_json_array;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_json_array;
DROP FUNCTION keywarden_is_json_array(TEXT);
