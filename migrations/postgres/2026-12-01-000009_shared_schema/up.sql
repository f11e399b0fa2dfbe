-- The schema other applications share (README, "Sharing the database").
--
-- Every timestamp becomes `timestamptz`, keeping each value's instant: the
-- stored values were UTC. A client that sends a local time with its offset
-- (node-postgres sends a Date so) is now stored at the right instant
-- instead of hours off. One ALTER TABLE a table, so each is rewritten once.
-- The identifiers come from the catalog, quoted by format('%I').
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.table_name,
               string_agg(format('ALTER COLUMN %I TYPE timestamptz USING %I AT TIME ZONE ''UTC''',
                                 c.column_name, c.column_name), ', ') AS alters
        FROM information_schema.columns c
        WHERE c.table_schema = current_schema()
          AND c.data_type = 'timestamp without time zone'
          AND c.table_name IN ('job_runs', 'job_leases', 'users', 'api_keys', 'api_key_events',
                               'notifications', 'permission_drift', 'permission_events',
                               'certificates', 'user_events')
        GROUP BY c.table_name
    LOOP
        EXECUTE format('ALTER TABLE %I %s', t.table_name, t.alters);
    END LOOP;
END
$$;

-- Rows written by another application get the time of the write.
ALTER TABLE users ALTER COLUMN created_at SET DEFAULT now(), ALTER COLUMN updated_at SET DEFAULT now();
ALTER TABLE api_keys ALTER COLUMN created_at SET DEFAULT now(), ALTER COLUMN updated_at SET DEFAULT now();
ALTER TABLE api_key_events ALTER COLUMN created_at SET DEFAULT now();

-- The JSON checks on `scopes` and `allowed_ips` (since 000006) also refuse
-- an array holding anything but strings, such as [1] or [["10.0.0.1"]].
CREATE OR REPLACE FUNCTION keywarden_is_json_array(value TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN json_typeof(value::json) = 'array'
        AND NOT EXISTS (SELECT 1 FROM json_array_elements(value::json) e WHERE json_typeof(e) <> 'string');
EXCEPTION WHEN others THEN
    RETURN FALSE;
END;
$$;
