ALTER TABLE certificates DROP COLUMN deploy_serial, DROP COLUMN deploy_error, DROP COLUMN deploy_failures,
    DROP COLUMN next_deploy_at, DROP COLUMN installed_at, DROP COLUMN previous_serial;
