ALTER TABLE certificates DROP COLUMN deploy_serial;
ALTER TABLE certificates DROP COLUMN deploy_error;
ALTER TABLE certificates DROP COLUMN deploy_failures;
ALTER TABLE certificates DROP COLUMN next_deploy_at;
ALTER TABLE certificates DROP COLUMN installed_at;
ALTER TABLE certificates DROP COLUMN previous_serial;
