//! Metrics for Prometheus: what an operator watches credentials with.
//!
//! [`snapshot`] reads the figures from the database in a handful of
//! aggregate statements (certificates, keys by status and by warning
//! window, verifications, jobs, the outbox, permission drift); [`counters`]
//! holds what only this daemon knows (its job runs by outcome since it
//! started); [`render`] writes both as OpenMetrics text, or as Prometheus's
//! text format 0.0.4 for node_exporter's textfile collector; [`exporter`]
//! is the daemon's task that reads a snapshot every `metrics.interval`,
//! writes the textfile atomically and answers `GET /metrics` on a Unix
//! socket or a loopback address from the last snapshot, so a scrape never
//! reaches the database.
//!
//! Imports: jobs (run history), acme (certificate rows), notify, keys, db,
//! config.

pub mod counters;
pub mod exporter;
pub mod render;
pub mod snapshot;

pub use counters::JobCounters;
pub use render::{render, Format};
pub use snapshot::Snapshot;
