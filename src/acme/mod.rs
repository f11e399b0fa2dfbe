//! Certificates: issued and renewed over ACME, or only monitored.
//!
//! - [`client`] talks ACME through `instant-acme`: the account (created on
//!   first use, stored 0600) and one order from new to certificate.
//! - [`challenge`] proves control: HTTP-01 (webroot or built-in listener),
//!   DNS-01 (an admin's hook), TLS-ALPN-01 (built-in listener).
//! - [`timing`] decides when: ARI window, else a third of the lifetime left
//!   (half for short certificates), with a fleet spread; retries back off
//!   1 min, 10 min, 100 min, then daily.
//! - [`install`] writes key and chain atomically with their final modes,
//!   keeping the previous pair; [`hooks`] runs the deploy hook.
//! - [`monitor`] reads certificates keywarden does not issue, from a file
//!   or a live `host:port`.
//! - [`store`] is the `certificates` table; [`decide`] is what a pass does
//!   with one certificate, a pure function of its state and the time;
//!   [`renew`] reads the state, carries the decision out, for the
//!   `renew-certs` job and the `certs` commands.
//!
//! Imports: notify (admin alerts), sys (owners of installed files), db,
//! telemetry, config.

pub mod certinfo;
pub mod challenge;
pub mod client;
pub mod decide;
pub mod hooks;
pub mod install;
pub mod monitor;
pub mod renew;
mod rsa;
pub mod store;
pub mod timing;

/// Why a certificate could not be obtained or checked.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{0}")]
    Config(String),
    #[error("ACME: {0}")]
    Protocol(String),
    #[error("challenge: {0}")]
    Challenge(String),
    #[error("key generation: {0}")]
    Crypto(String),
    #[error("{0}")]
    Io(String),
    #[error("database: {}", crate::db::describe_error(.0))]
    Db(#[from] diesel::result::Error),
}
