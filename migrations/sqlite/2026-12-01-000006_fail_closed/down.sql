DROP TABLE user_events;
DROP TRIGGER api_keys_json_lists_update;
DROP TRIGGER api_keys_json_lists_insert;
