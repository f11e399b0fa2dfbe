-- Who claimed a row being sent (host, boot, process, run): rows held by a
-- process that is provably gone are claimed again at once instead of
-- waiting for the claim to time out.
ALTER TABLE notifications ADD COLUMN claimed_by TEXT;
