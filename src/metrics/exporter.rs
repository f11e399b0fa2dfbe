//! The daemon's metrics task: a snapshot every `metrics.interval`, written
//! atomically to the textfile and kept for `GET /metrics` on the Unix
//! socket and the loopback address. A scrape is answered from the last
//! snapshot, never from the database, with limits on connections, request
//! size and time, so a scraper cannot load either.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::sys::listen::{bind_unix, remove_socket, Accept, TcpAccept, UnixAccept};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::counters::JobCounters;
use super::render::{render, Format};
use super::snapshot::Snapshot;
use crate::config::Config;
use crate::db::Database;
use crate::telemetry::one_line;

/// Scrapes served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 16;
/// The largest request head read.
const MAX_REQUEST: usize = 8192;
/// The time a scraper has to send its request and read the answer.
const REQUEST_TIME: Duration = Duration::from_secs(5);

type Latest = Arc<RwLock<Option<Arc<Snapshot>>>>;

/// Runs until `stop`: nothing when `[metrics]` is absent.
pub async fn run(database: Database, config: Arc<Config>, counters: Arc<JobCounters>, stop: CancellationToken) {
    let Some(settings) = config.metrics.clone() else { return };
    let latest: Latest = Arc::default();
    if let Some(path) = &settings.socket {
        match bind_unix(path, None) {
            Ok(listener) => {
                info!("metrics served on unix:{}", path.display());
                tokio::spawn(serve(
                    UnixAccept(listener),
                    latest.clone(),
                    counters.clone(),
                    stop.clone(),
                ));
            }
            Err(e) => warn!("metrics: cannot listen on {}: {e}", path.display()),
        }
    }
    if let Some(addr) = settings.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                info!("metrics served on http://{addr}/metrics");
                tokio::spawn(serve(
                    TcpAccept(listener),
                    latest.clone(),
                    counters.clone(),
                    stop.clone(),
                ));
            }
            Err(e) => warn!("metrics: cannot listen on {addr}: {e}"),
        }
    }
    let textfile = settings.textfile();
    let mut ticker = tokio::time::interval(settings.interval.as_duration());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let db = database.clone();
        let cfg = config.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<Snapshot, String> {
            let mut conn = db.connect().map_err(|e| e.to_string())?;
            Snapshot::read(&mut conn, &cfg, crate::db::now()).map_err(|e| crate::db::describe_error(&e).to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the metrics task failed: {e}")));
        let outcome = read.and_then(|snap| {
            let snap = Arc::new(snap);
            if let Ok(mut slot) = latest.write() {
                *slot = Some(snap.clone());
            }
            match &textfile {
                Some(path) => write_textfile(path, &render(&snap, &counters, Format::Prometheus))
                    .map_err(|e| format!("writing {}: {e}", path.display())),
                None => Ok(()),
            }
        });
        match outcome {
            Ok(()) if failing => {
                info!("metrics: published again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                // Once per streak: the figures' timestamp tells a scraper the rest.
                warn!(error = %one_line(&e), "metrics: cannot publish: {}", one_line(&e));
                failing = true;
            }
            Err(_) => {}
        }
    }
    if let Some(path) = &settings.socket {
        remove_socket(path);
    }
}

/// Writes `text` to `path` through a temporary file in the same directory,
/// created 0644 without following a symlink, then renamed over it: the
/// collector never reads half a file.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Not ending in .prom: the collector skips it while it is written.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // The umask may have narrowed the mode.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

async fn serve<A: Accept>(listener: A, latest: Latest, counters: Arc<JobCounters>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let latest = latest.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIME, answer(conn, &latest, &counters)).await;
            drop(permit);
        });
    }
}

/// One HTTP/1.x exchange; the connection is closed after the answer.
async fn answer<C: AsyncRead + AsyncWrite + Unpin>(
    mut conn: C,
    latest: &Latest,
    counters: &JobCounters,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != "GET" && method != "HEAD" {
        return respond(&mut conn, "405 Method Not Allowed", "text/plain", "only GET /metrics\n").await;
    }
    if target.split('?').next() != Some("/metrics") {
        return respond(&mut conn, "404 Not Found", "text/plain", "only GET /metrics\n").await;
    }
    let accepts_openmetrics = lines.any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text"))
    });
    let format = if accepts_openmetrics {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    let snap = latest.read().ok().and_then(|s| s.clone());
    match snap {
        Some(snap) => {
            let body = render(&snap, counters, format);
            let body = if method == "HEAD" { String::new() } else { body };
            respond(&mut conn, "200 OK", format.content_type(), &body).await
        }
        None => {
            respond(
                &mut conn,
                "503 Service Unavailable",
                "text/plain",
                "no figures read yet\n",
            )
            .await
        }
    }
}

async fn respond<C: AsyncWrite + Unpin>(
    conn: &mut C,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}
