DROP TRIGGER api_key_events_no_update;
DROP TABLE api_key_events;
DROP TABLE api_keys;
DROP TABLE users;
DROP TABLE job_leases;
DROP TABLE job_runs;
