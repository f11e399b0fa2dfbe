//! The verification service: `keywarden run` answers, when `[verify]` is
//! configured, whether a presented key is valid, over HTTP/JSON on a Unix
//! socket (and optionally a loopback address), so that applications in any
//! language use keywarden's rules instead of re-implementing them.
//!
//! - [`http`]: the API, its limits and its error answers;
//! - [`verifier`]: one verification, from the cache or in full with
//!   [`crate::keys::KeyService::verify`] (the same outcome, usage and audit
//!   rows as the library);
//! - [`cache`]: recent successes, keyed by a keyed hash of the whole key;
//! - [`freshness`]: what invalidates the cache at once, across replicas
//!   (PostgreSQL `LISTEN`, SQLite's change counter);
//! - [`usage`]: the batched recording of cached answers.
//!
//! Imports: keys, db, telemetry, config, sys.

pub mod cache;
pub mod freshness;
pub mod http;
pub mod usage;
pub mod verifier;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::verify::VerifyConfig;
use crate::config::Config;
use crate::db::{Backend, Database};
use crate::keys::KeyService;

use cache::Cache;
use http::Limits;
use usage::UsageLog;
use verifier::Verifier;

/// Runs the service until `stop`: nothing when `[verify]` is absent. On
/// stop, connections finish their request, and pending usage is written.
pub async fn run(database: Database, config: Arc<Config>, stop: CancellationToken) {
    let Some(settings) = config.verify.clone() else { return };
    let service = match KeyService::new(&config.keys) {
        Ok(s) => s,
        Err(e) => {
            error!("verify: cannot start: {e}");
            return;
        }
    };
    let backend = database.backend();
    let ttl = settings.cache_ttl.as_duration();
    let cache = match Cache::new(ttl, settings.cache_entries, backend == Backend::Sqlite) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            error!("verify: cannot start: the random number generator failed: {e}");
            return;
        }
    };
    let usage = Arc::new(UsageLog::default());
    let verifier = Arc::new(Verifier::new(
        service,
        cache.clone(),
        usage.clone(),
        database.clone(),
        backend,
        settings.workers(),
        settings.actor.clone(),
    ));
    let tasks = TaskTracker::new();
    // Connections and listeners stop first; usage is written after them.
    let serving = stop.child_token();
    let recording = CancellationToken::new();
    tasks.spawn(usage::record(database.clone(), usage, recording.clone()));
    if backend == Backend::Postgres && cache.enabled() {
        tasks.spawn(freshness::listen(database.clone(), cache.clone(), serving.clone()));
    }
    let limits = Limits {
        max_body: settings.max_body,
        request_time: settings.request_timeout.as_duration(),
    };
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let socket = settings.socket_path();
    let mut serving_any = false;
    match bind_unix(&socket, &settings) {
        Ok(listener) => {
            info!("verify: serving on unix:{}", socket.display());
            tasks.spawn(serve(
                UnixAccept(listener),
                verifier.clone(),
                limits,
                slots.clone(),
                serving.clone(),
            ));
            serving_any = true;
        }
        Err(e) => error!("verify: cannot listen on {}: {e}", socket.display()),
    }
    if let Some(addr) = settings.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                info!("verify: serving on http://{addr}");
                tasks.spawn(serve(
                    TcpAccept(listener),
                    verifier.clone(),
                    limits,
                    slots.clone(),
                    serving.clone(),
                ));
                serving_any = true;
            }
            Err(e) => error!("verify: cannot listen on {addr}: {e}"),
        }
    }
    if !serving_any {
        warn!("verify: no socket could be opened; the service is off until the next reload");
    }
    stop.cancelled().await;
    serving.cancel();
    // Requests in flight finish (each is bounded by request_timeout).
    let connections = settings.max_connections as u32;
    let _ = tokio::time::timeout(limits.request_time, slots.acquire_many(connections)).await;
    recording.cancel();
    tasks.close();
    tasks.wait().await;
    if let Ok(meta) = std::fs::symlink_metadata(&socket) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(&socket);
        }
    }
}

/// Binds the socket under a temporary name in the same directory, gives it
/// its mode (0660) and group, then renames it into place: the socket never
/// exists at the final path with a wider mode. A socket left by an earlier
/// run is replaced; any other kind of file is not.
fn bind_unix(path: &Path, settings: &VerifyConfig) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
    }
    let gid = match &settings.socket_group {
        Some(name) => match crate::sys::ids::group_id(name)? {
            Some(gid) => Some(gid),
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("verify.socket_group: no group {name:?}"),
                ))
            }
        },
        None => None,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

trait Accept: Send + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Conn>> + Send;
}

struct UnixAccept(tokio::net::UnixListener);
struct TcpAccept(tokio::net::TcpListener);

impl Accept for UnixAccept {
    type Conn = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        self.0.accept().await.map(|(c, _)| c)
    }
}

impl Accept for TcpAccept {
    type Conn = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        let (c, _) = self.0.accept().await?;
        let _ = c.set_nodelay(true);
        Ok(c)
    }
}

async fn serve<A: Accept>(
    listener: A,
    verifier: Arc<Verifier>,
    limits: Limits,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok(conn) = conn else {
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let verifier = verifier.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| http::handle(verifier.clone(), limits, req));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // Also closes a kept-alive connection idle for as long.
                .header_read_timeout(limits.request_time)
                .max_buf_size(limits.max_body.max(8192) * 2)
                .serve_connection(TokioIo::new(conn), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
}
