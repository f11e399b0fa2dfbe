//! Reading certificates keywarden does not issue: from a file, or from what
//! a server presents on `host:port` (the TLS handshake is completed only to
//! read the certificate; it is not trusted or used for anything else).

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::certinfo::{self, CertInfo};
use crate::config::acme::MonitorConfig;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts any certificate: we only read it.
#[derive(Debug)]
struct ReadOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for ReadOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a monitored certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} resolves to nothing")]
    NoAddress(String),
    #[error("cannot reach {address}: {source}")]
    Network {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {address}: {source}")]
    Tls {
        address: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{0:?} is not a server name")]
    ServerName(String),
    #[error("{0} presented no certificate")]
    NoCertificate(String),
    #[error("{place}: {source}")]
    File {
        place: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{place}: {source}")]
    Certificate {
        place: String,
        #[source]
        source: certinfo::CertError,
    },
    #[error("neither file nor address is set")]
    NoSource,
}

/// The leaf certificate `address` (host:port) presents for `server_name`.
pub fn fetch(address: &str, server_name: &str) -> Result<CertInfo, MonitorError> {
    let network = |source| MonitorError::Network {
        address: address.to_string(),
        source,
    };
    let tls = |source| MonitorError::Tls {
        address: address.to_string(),
        source,
    };
    let addr = address
        .to_socket_addrs()
        .map_err(|source| MonitorError::Resolve {
            address: address.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| MonitorError::NoAddress(address.to_string()))?;
    let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(network)?;
    tcp.set_read_timeout(Some(TIMEOUT)).map_err(network)?;
    tcp.set_write_timeout(Some(TIMEOUT)).map_err(network)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadOnly(provider)))
        .with_no_client_auth();
    let name =
        ServerName::try_from(server_name.to_string()).map_err(|_| MonitorError::ServerName(server_name.to_string()))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(tls)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(network)?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| MonitorError::NoCertificate(address.to_string()))?;
    let info = certinfo::parse(leaf.as_ref()).map_err(|source| MonitorError::Certificate {
        place: address.to_string(),
        source,
    });
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    let _ = tcp.flush();
    info
}

/// Reads what a `[[monitor]]` entry points at.
pub fn read(m: &MonitorConfig) -> Result<CertInfo, MonitorError> {
    if let Some(file) = &m.file {
        let place = file.display().to_string();
        let pem = std::fs::read(file).map_err(|source| MonitorError::File {
            place: place.clone(),
            source,
        })?;
        return certinfo::parse_pem_leaf(&pem).map_err(|source| MonitorError::Certificate { place, source });
    }
    if let Some(address) = &m.address {
        let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        return fetch(address, m.server_name.as_deref().unwrap_or(host));
    }
    Err(MonitorError::NoSource)
}

/// Where a monitor entry reads from, for listings.
pub fn source(m: &MonitorConfig) -> String {
    match (&m.file, &m.address) {
        (Some(f), _) => f.display().to_string(),
        (None, Some(a)) => a.clone(),
        _ => String::new(),
    }
}
