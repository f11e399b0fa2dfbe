-- PostgreSQL announces key changes to the verification service's cache
-- with triggers (this migration's PostgreSQL twin). SQLite has no such
-- channel: the service reads PRAGMA data_version, which changes with every
-- commit of another connection, and checks a remembered key's row again
-- after one. Nothing to change in the schema.
SELECT 1;
