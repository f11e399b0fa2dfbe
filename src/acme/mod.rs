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
    #[error("ACME: {during}: {}", describe_client_error(.source))]
    Ca {
        during: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    /// The CA does not know the stored account (a test CA restarted, a
    /// staging reset): registering again is the remedy.
    #[error("ACME: {during}: the CA does not know the stored account ({})", describe_client_error(.source))]
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

/// What failed, said for an admin: the CA's problem document (type and
/// detail), or the cause at the bottom of an HTTP error (the client's own
/// message is "client error (Connect)"), with what to do for the usual
/// three: a refused connection, a name that does not resolve, a TLS
/// certificate not trusted.
pub fn describe_client_error(error: &instant_acme::Error) -> String {
    if let instant_acme::Error::Api(problem) = error {
        let kind = problem.r#type.as_deref().unwrap_or("about:blank");
        let detail = problem.detail.as_deref().unwrap_or("no detail given");
        return format!("the CA refused: {detail} (problem {kind})");
    }
    let mut chain: Vec<String> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut io_kind = None;
    let mut tls = None;
    while let Some(e) = source {
        let text = e.to_string();
        if !chain.iter().any(|seen| seen.contains(&text)) {
            chain.push(text);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            tls.get_or_insert_with(|| t.to_string());
        }
        source = e.source();
    }
    let all = chain.join(": ");
    let lower = all.to_ascii_lowercase();
    // rustls's error may arrive wrapped where no downcast reaches it; its
    // text is then the evidence.
    let tls = tls.or_else(|| {
        chain
            .iter()
            .find(|t| t.starts_with("invalid peer certificate"))
            .cloned()
    });
    let hint = if let Some(t) = tls.filter(|t| t.contains("certificate")) {
        format!(
            "the CA's TLS certificate is not trusted ({t}); keywarden trusts the system's CA certificates \
             (package ca-certificates) or only acme.ca_file when it is set"
        )
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
        "connection refused: nothing listens at the CA's address (acme.directory)".to_string()
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        "the CA's host name does not resolve (acme.directory)".to_string()
    } else if io_kind == Some(std::io::ErrorKind::TimedOut) || lower.contains("timed out") {
        "the connection to the CA timed out".to_string()
    } else {
        return all;
    };
    format!("{hint} [{all}]")
}
