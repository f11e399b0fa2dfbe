DROP TRIGGER api_key_events_no_update ON api_key_events;
DROP FUNCTION api_key_events_append_only();
DROP TABLE api_key_events;
DROP TABLE api_keys;
DROP TABLE users;
DROP TABLE job_leases;
DROP TABLE job_runs;
