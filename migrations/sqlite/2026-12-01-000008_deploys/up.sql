-- A deploy hook that fails is a failure of its certificate: the serial
-- whose hook has not yet succeeded stays here until a retry succeeds, with
-- its own failure streak and back-off (a renewal is not due, yet the
-- service still serves the old certificate).
ALTER TABLE certificates ADD COLUMN deploy_serial TEXT;
ALTER TABLE certificates ADD COLUMN deploy_error TEXT;
ALTER TABLE certificates ADD COLUMN deploy_failures INTEGER NOT NULL DEFAULT 0 CHECK (deploy_failures >= 0);
ALTER TABLE certificates ADD COLUMN next_deploy_at TIMESTAMP;
-- What the last install replaced, and when: a monitored endpoint still
-- serving the previous serial some time after an install is stale.
ALTER TABLE certificates ADD COLUMN installed_at TIMESTAMP;
ALTER TABLE certificates ADD COLUMN previous_serial TEXT;
