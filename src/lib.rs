//! keywarden keeps an organisation's credentials healthy with nobody at the
//! console: it expires and retires API keys, warns owners before keys and
//! certificates expire, renews TLS certificates over ACME, and watches file
//! permissions for drift. It runs under systemd, wakes on schedules, writes
//! everything it changes to PostgreSQL or SQLite and reports to journald.
//!
//! # Layout
//!
//! Floors from the top; a module imports only modules below it:
//! `cli` → `daemon` → `verify` → `metrics` → `jobs` → the domains (`acme`, `perms`, `leaks`, then `notify`,
//! then `keys`) → `db` → `telemetry` → `config` → `sys`. Each module's doc
//! lists what it imports in one line.
//!
//! | module | concern |
//! |---|---|
//! | [`cli`] | the command line, one module per command group; `main.rs` only calls [`cli::main`] |
//! | [`daemon`] | the runtime: scheduler, signals (reload, stop), sd_notify, task supervision |
//! | [`verify`] | the verification service: HTTP/JSON on a Unix socket, a cache of recent successes invalidated across replicas |
//! | [`metrics`] | Prometheus metrics: a snapshot from the database, OpenMetrics text, the textfile and `GET /metrics` |
//! | [`jobs`] | the job registry, the run wrapper, one module per job; loads the configuration with the registry's jobs ([`jobs::load_config`]) |
//! | [`acme`] | certificates: ACME issuance and renewal, monitoring |
//! | [`perms`] | permission drift: policy, scanner, watcher, safe remediation |
//! | [`leaks`] | live keys found in files: scanned on write and on schedule, confirmed, revoked, reported |
//! | [`notify`] | expiry emails: outbox, templates, delivery, admin alerts |
//! | [`keys`] | the API-key domain |
//! | [`db`] | connections for both backends, schema, embedded migrations, job locks |
//! | [`telemetry`] | tracing to journald under systemd, to stderr otherwise |
//! | [`config`] | the TOML model, validation with file:line:column errors, secrets |
//! | [`sys`] | system helpers: NSS lookups, file handling that never follows a symlink |
//!
//! # Choices that are not obvious
//!
//! - **Diesel `MultiConnection`** gives one query path for PostgreSQL and
//!   SQLite; the few backend-only statements are in [`db::lock`] and
//!   [`db::migrate`]. Diesel is synchronous: jobs run on tokio's blocking
//!   pool, one connection per run, which for jobs that fire every few minutes
//!   costs nothing and avoids a pool holding session state.
//! - **`croner`** validates schedules and computes next runs, for
//!   `check-config`, `jobs list` and the daemon alike: each job's task sleeps
//!   until its next time and nothing else (tokio-cron-scheduler, chosen at
//!   first, polls every job twice a second, so an idle daemon never slept).
//! - **`toml`'s spanned parser** (`DeTable`) lets each section be checked on
//!   its own, so one pass reports every broken section with its place.
//! - **`signal-hook-tokio`** delivers signals as a stream, so reload and stop
//!   are ordinary `select!` arms in the daemon loop.

pub mod acme;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod jobs;
pub mod keys;
pub mod leaks;
pub mod metrics;
pub mod notify;
pub mod perms;
pub mod sys;
pub mod telemetry;
pub mod verify;
