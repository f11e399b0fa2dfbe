DELETE FROM notifications WHERE subject_kind = 'leaked_key';
ALTER TABLE notifications DROP CONSTRAINT notifications_subject_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_subject_kind_check
    CHECK (subject_kind IN ('api_key', 'certificate', 'permission_drift', 'job_failure'));
DROP TABLE leak_findings;
