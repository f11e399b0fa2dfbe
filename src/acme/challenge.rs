//! Proving control of a domain: the three challenge responders.
//!
//! - HTTP-01 from a webroot: the key authorization is written (0644) under
//!   `webroot/.well-known/acme-challenge/TOKEN` for the web server already
//!   running, and removed afterwards.
//! - HTTP-01 from a built-in listener: a minimal HTTP/1.1 responder that
//!   answers only `GET /.well-known/acme-challenge/TOKEN` for tokens of the
//!   order in progress.
//! - TLS-ALPN-01 from a built-in listener: a TLS server speaking only
//!   `acme-tls/1`, presenting per SNI name a self-signed certificate with
//!   the `acmeIdentifier` extension (RFC 8737).
//! - DNS-01 through a hook: `hook… present NAME VALUE` and, afterwards,
//!   `hook… cleanup NAME VALUE`, run without a shell.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::hooks;
use super::AcmeError;

const WELL_KNOWN: &str = "/.well-known/acme-challenge/";

/// Tokens (or SNI names) a built-in listener answers for.
type Answers<T> = Arc<Mutex<HashMap<String, T>>>;

/// A built-in HTTP-01 responder, stopped when dropped.
pub struct HttpResponder {
    answers: Answers<String>,
    task: JoinHandle<()>,
    /// Where it listens (the port, when bound to port 0).
    pub local_addr: SocketAddr,
}

/// Connections a challenge listener serves at once; more are closed at
/// once. The CA validates with a handful; the limit is for everyone else.
const MAX_CONNECTIONS: usize = 64;

/// The longest one connection may take, reading and answering together.
const CONNECTION_TIME: Duration = Duration::from_secs(10);

/// Accepts one connection with a permit from `limit`. `None` when the
/// accept failed (after a short pause, so an exhausted descriptor table
/// does not spin) or no permit was free (the connection is closed).
async fn accept_bounded(
    listener: &TcpListener,
    limit: &Arc<tokio::sync::Semaphore>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    match listener.accept().await {
        Ok((stream, _)) => match limit.clone().try_acquire_owned() {
            Ok(permit) => Some((stream, permit)),
            Err(_) => None,
        },
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

impl HttpResponder {
    pub async fn bind(addr: SocketAddr) -> Result<HttpResponder, AcmeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| AcmeError::Challenge(format!("cannot listen on {addr} for http-01: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| AcmeError::Challenge(format!("cannot listen on {addr} for http-01: {e}")))?;
        let answers: Answers<String> = Arc::default();
        let shared = answers.clone();
        let task = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            loop {
                let Some((mut stream, permit)) = accept_bounded(&listener, &limit).await else {
                    continue;
                };
                let answers = shared.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut buf = vec![0u8; 4096];
                    let mut len = 0;
                    // Read the request head (bounded, with a deadline).
                    let read = tokio::time::timeout(CONNECTION_TIME, async {
                        while len < buf.len() {
                            let n = stream.read(&mut buf[len..]).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            len += n;
                            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    })
                    .await;
                    if read.is_err() {
                        return;
                    }
                    let head = String::from_utf8_lossy(&buf[..len]);
                    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let answer = match (method, path.strip_prefix(WELL_KNOWN)) {
                        ("GET", Some(token)) => answers.lock().ok().and_then(|a| a.get(token).cloned()),
                        _ => None,
                    };
                    let response = match answer {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string(),
                    };
                    let _ = tokio::time::timeout(CONNECTION_TIME, async {
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                });
            }
        });
        Ok(HttpResponder {
            answers,
            task,
            local_addr,
        })
    }

    pub fn add(&self, token: &str, key_authorization: &str) {
        if let Ok(mut a) = self.answers.lock() {
            a.insert(token.to_string(), key_authorization.to_string());
        }
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A token file in a webroot, removed when dropped.
pub struct WebrootFile {
    path: PathBuf,
}

impl WebrootFile {
    pub fn write(webroot: &Path, token: &str, key_authorization: &str) -> Result<WebrootFile, AcmeError> {
        // Tokens are base64url; anything else could name another path.
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AcmeError::Challenge(format!("refusing the unusual token {token:?}")));
        }
        let dir = webroot.join(".well-known/acme-challenge");
        std::fs::create_dir_all(&dir)
            .map_err(|e| AcmeError::Challenge(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(token);
        super::install::write_atomically(
            &super::install::Target {
                path: &path,
                mode: 0o644,
                uid: None,
                gid: None,
            },
            key_authorization.as_bytes(),
        )
        .map_err(|e| AcmeError::Challenge(format!("cannot write {}: {e}", path.display())))?;
        Ok(WebrootFile { path })
    }
}

impl Drop for WebrootFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, Default)]
struct AlpnCerts(Mutex<HashMap<String, Arc<CertifiedKey>>>);

impl ResolvesServerCert for AlpnCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.lock().ok()?.get(&name).cloned()
    }
}

/// A built-in TLS-ALPN-01 responder, stopped when dropped.
pub struct AlpnResponder {
    certs: Arc<AlpnCerts>,
    task: JoinHandle<()>,
}

impl AlpnResponder {
    pub async fn bind(addr: SocketAddr) -> Result<AlpnResponder, AcmeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| AcmeError::Challenge(format!("cannot listen on {addr} for tls-alpn-01: {e}")))?;
        let certs = Arc::new(AlpnCerts::default());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Challenge(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            loop {
                let Some((stream, permit)) = accept_bounded(&listener, &limit).await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // The handshake is the whole answer.
                    let _ = tokio::time::timeout(CONNECTION_TIME, async {
                        if let Ok(mut tls) = acceptor.accept(stream).await {
                            let _ = tls.shutdown().await;
                        }
                    })
                    .await;
                });
            }
        });
        Ok(AlpnResponder { certs, task })
    }

    /// Presents, for `domain`, a certificate carrying `digest` (the SHA-256
    /// of the key authorization).
    pub fn add(&self, domain: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let fail = |e: String| AcmeError::Challenge(format!("tls-alpn-01 certificate for {domain}: {e}"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| fail(e.to_string()))?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| fail(e.to_string()))?;
        let certified = CertifiedKey::new(vec![CertificateDer::from(cert.der().to_vec())], signer);
        if let Ok(mut map) = self.certs.0.lock() {
            map.insert(domain.to_ascii_lowercase(), Arc::new(certified));
        }
        Ok(())
    }
}

impl Drop for AlpnResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TXT record published through the DNS hook, cleaned up when dropped.
pub struct DnsRecord {
    hook: Vec<String>,
    name: String,
    value: String,
    timeout: Duration,
}

impl DnsRecord {
    pub fn present(hook: &[String], domain: &str, value: &str, timeout: Duration) -> Result<DnsRecord, AcmeError> {
        let name = format!(
            "_acme-challenge.{}.",
            domain.trim_start_matches("*.").trim_end_matches('.')
        );
        let mut argv = hook.to_vec();
        argv.extend(["present".to_string(), name.clone(), value.to_string()]);
        hooks::run(&argv, &[], timeout).map_err(|e| AcmeError::Challenge(format!("dns-01 hook: {e}")))?;
        Ok(DnsRecord {
            hook: hook.to_vec(),
            name,
            value: value.to_string(),
            timeout,
        })
    }
}

impl Drop for DnsRecord {
    fn drop(&mut self) {
        let mut argv = self.hook.clone();
        argv.extend(["cleanup".to_string(), self.name.clone(), self.value.clone()]);
        if let Err(e) = hooks::run(&argv, &[], self.timeout) {
            tracing::warn!(
                "dns-01 cleanup hook failed for {}: {}",
                self.name,
                crate::telemetry::one_line(&e.to_string())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle connections hold at most MAX_CONNECTIONS permits; one more is
    /// closed at once, and the CA's request is answered once they go.
    #[tokio::test]
    async fn the_http_listener_bounds_its_connections() {
        let responder = HttpResponder::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        responder.add("tok", "tok.thumb");
        let addr = responder.local_addr;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the connection beyond the limit is closed at once"
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut ca = tokio::net::TcpStream::connect(addr).await.unwrap();
        ca.write_all(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), ca.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("tok.thumb"),
            "{answer}"
        );
    }
}
