DROP TABLE permission_events;
DROP TABLE permission_drift;
