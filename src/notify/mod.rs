//! Expiry notifications by email.
//!
//! - [`detect`] finds keys entering a warning window (or just expired) and
//!   plans one notice per key: the tightest window due; wider windows it
//!   passed while nobody ran the job are recorded as `skipped`, not sent late.
//! - [`outbox`] is the `notifications` table. Its unique index over
//!   (subject, generation, window) makes a second warning for the same key,
//!   expiry and window impossible by construction; rows are enqueued in the
//!   same transaction as their detection.
//! - [`deliver`] claims due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL),
//!   renders one digest per recipient ([`render`]), sends it through the
//!   configured [`transport`], and marks the rows sent; failures are retried
//!   with exponential backoff and jitter, then marked failed.
//!
//! Delivery is at-least-once: a crash after the server accepted a message
//! and before its rows were marked sent is the one way to get a duplicate
//! (such rows are claimed again after [`deliver::STALE_CLAIM`]).
//!
//! Imports: keys (statuses of the keys it warns about), db, telemetry,
//! config. Nothing below it knows of email.

pub mod alerts;
pub mod deliver;
pub mod detect;
mod eml;
pub mod outbox;
pub mod render;
pub mod send_error;
pub mod smtp;
pub mod transport;
mod wire;

/// Subject kinds as stored.
pub mod kind {
    pub const API_KEY: &str = "api_key";
    pub const CERTIFICATE: &str = "certificate";
    pub const PERMISSION_DRIFT: &str = "permission_drift";
    pub const JOB_FAILURE: &str = "job_failure";
}

/// Row statuses as stored.
pub mod status {
    pub const PENDING: &str = "pending";
    pub const SENDING: &str = "sending";
    pub const SENT: &str = "sent";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
    pub const SKIPPED: &str = "skipped";
}

/// The window name of the notice sent once a key has expired.
pub const EXPIRED_WINDOW: &str = "expired";
