//! Signals, through signal-hook's async stream: SIGHUP reloads, SIGTERM and
//! SIGINT stop.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonSignal {
    Reload,
    Stop(i32),
}

pub struct SignalStream(Signals);

impl SignalStream {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self(Signals::new([SIGHUP, SIGTERM, SIGINT])?))
    }

    pub async fn next(&mut self) -> Option<DaemonSignal> {
        let sig = self.0.next().await?;
        Some(if sig == SIGHUP {
            DaemonSignal::Reload
        } else {
            DaemonSignal::Stop(sig)
        })
    }

    /// Waits for the next stop signal, ignoring reloads (used while
    /// stopping). Returns the signal number.
    pub async fn next_stop(&mut self) -> i32 {
        loop {
            match self.next().await {
                Some(DaemonSignal::Stop(sig)) => return sig,
                Some(DaemonSignal::Reload) => tracing::info!("reload ignored: stopping"),
                None => std::future::pending::<()>().await,
            }
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
