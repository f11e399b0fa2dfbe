//! What the daemon is asked to do from outside: reload or stop. Under
//! systemd the requests are signals, through signal-hook's async stream
//! (SIGHUP reloads, SIGTERM and SIGINT stop); a test in the same process
//! hands [`super::run`] a stream of its own, or a future
//! ([`super::run_until`]).

use futures_util::{Stream, StreamExt};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonSignal {
    Reload,
    /// Stop, for the signal with this number (a second one exits with
    /// 128 + it).
    Stop(i32),
}

/// The process's signals as requests. Installing them replaces the default
/// actions, so a reload or a stop arriving during startup never kills the
/// process. Needs a tokio runtime.
pub fn install() -> std::io::Result<impl Stream<Item = DaemonSignal> + Unpin + Send> {
    let signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    Ok(signals.map(|sig| match sig {
        SIGHUP => DaemonSignal::Reload,
        sig => DaemonSignal::Stop(sig),
    }))
}

/// Waits for the next stop request, ignoring reloads (used while
/// stopping). Returns the signal number; never returns once the requests
/// have ended.
pub async fn next_stop<R: Stream<Item = DaemonSignal> + Unpin>(requests: &mut R) -> i32 {
    loop {
        match requests.next().await {
            Some(DaemonSignal::Stop(sig)) => return sig,
            Some(DaemonSignal::Reload) => tracing::info!("reload ignored: stopping"),
            None => std::future::pending::<()>().await,
        }
    }
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGHUP => "SIGHUP",
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
    }
}
