CREATE OR REPLACE FUNCTION keywarden_is_json_array(value TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN json_typeof(value::json) = 'array';
EXCEPTION WHEN others THEN
    RETURN FALSE;
END;
$$;
ALTER TABLE users ALTER COLUMN created_at DROP DEFAULT, ALTER COLUMN updated_at DROP DEFAULT;
ALTER TABLE api_keys ALTER COLUMN created_at DROP DEFAULT, ALTER COLUMN updated_at DROP DEFAULT;
ALTER TABLE api_key_events ALTER COLUMN created_at DROP DEFAULT;
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.table_name,
               string_agg(format('ALTER COLUMN %I TYPE timestamp USING %I AT TIME ZONE ''UTC''',
                                 c.column_name, c.column_name), ', ') AS alters
        FROM information_schema.columns c
        WHERE c.table_schema = current_schema()
          AND c.data_type = 'timestamp with time zone'
          AND c.table_name IN ('job_runs', 'job_leases', 'users', 'api_keys', 'api_key_events',
                               'notifications', 'permission_drift', 'permission_events',
                               'certificates', 'user_events')
        GROUP BY c.table_name
    LOOP
        EXECUTE format('ALTER TABLE %I %s', t.table_name, t.alters);
    END LOOP;
END
$$;
