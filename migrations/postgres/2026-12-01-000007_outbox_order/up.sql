-- Delivery walks the due rows in id order from where its previous claim
-- stopped. Through (status, next_attempt_at) every claim had to step over
-- the index entries of the rows already claimed in the run (PostgreSQL keeps
-- them until VACUUM), so a run's cost grew with the square of its size.
CREATE INDEX notifications_pending_order ON notifications (status, id);
