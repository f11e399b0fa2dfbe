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

use std::path::Path;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::verify::VerifyConfig;
use crate::config::Config;
use crate::db::{Backend, Database};
use crate::keys::KeyService;
use crate::sys::listen::{bind_unix, remove_socket, Accept, TcpAccept, UnixAccept};

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
    match bind_socket(&socket, &settings) {
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
    remove_socket(&socket);
}

/// Binds the socket (mode 0660, group `verify.socket_group`); see
/// [`crate::sys::listen::bind_unix`].
fn bind_socket(path: &Path, settings: &VerifyConfig) -> std::io::Result<tokio::net::UnixListener> {
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
    bind_unix(path, gid)
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
