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
    /// A configuration mistake only found at run time (an unreadable EAB
    /// key, an account file readable by others), said for the admin.
    #[error("{0}")]
    Config(String),
    /// The CA answered with an error, or could not be reached.
    #[error("ACME: {during}: {source}")]
    Ca {
        during: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    /// The CA does not know the stored account (a test CA restarted, a
    /// staging reset): registering again is the remedy.
    #[error("ACME: {during}: the CA does not know the stored account ({source})")]
    UnknownAccount {
        during: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the issued certificate: {0}")]
    Certificate(#[from] certinfo::CertError),
    /// The CA's answers do not add up (a certificate for other names, an
    /// order that never completes).
    #[error("ACME: {0}")]
    Protocol(String),
    #[error("challenge: {0}")]
    Challenge(String),
    #[error("key generation: {0}")]
    Key(#[from] rcgen::Error),
    #[error("RSA key generation: {0}")]
    Rsa(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {}", crate::db::describe_error(.0))]
    Db(#[from] diesel::result::Error),
}

impl AcmeError {
    /// Maps an error of the ACME client, telling an unknown account apart
    /// by the problem type the CA sends (RFC 8555, 6.7).
    pub fn ca(during: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
        move |source| match &source {
            instant_acme::Error::Api(problem)
                if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
            {
                AcmeError::UnknownAccount { during, source }
            }
            _ => AcmeError::Ca { during, source },
        }
    }

    /// An I/O error, with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AcmeError {
        let what = what.into();
        move |source| AcmeError::Io { what, source }
    }
}
