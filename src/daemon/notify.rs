//! The systemd notification protocol (`sd_notify`): readiness, reloads,
//! stopping, the one-line status and watchdog pings. Every call is a no-op
//! when `NOTIFY_SOCKET` is not set, so the daemon runs the same way by hand.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Sends one datagram to `$NOTIFY_SOCKET`, without ever blocking: a
/// manager that stops reading (its queue full) must not wedge the runtime
/// thread calling this. A status line that cannot go now is dropped (the
/// next one replaces it anyway).
fn send(states: &[NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let mut msg = String::new();
    for s in states {
        msg.push_str(&s.to_string());
        msg.push('\n');
    }
    if let Err(e) = send_nonblocking(&path, msg.as_bytes()) {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            debug!(
                "the service manager's notification queue is full; dropped: {}",
                msg.trim_end()
            );
        } else {
            warn!("could not notify systemd: {e}");
        }
    }
}

fn send_nonblocking(path: &std::ffi::OsStr, msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.first() {
        // An abstract socket ("@name").
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        _ => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}

/// Startup is complete: migrations applied, scheduler running.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins. systemd (253+) requires `MONOTONIC_USEC` in the same
/// datagram; older versions ignore it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading configuration"),
        ]),
        Err(e) => {
            warn!("cannot read CLOCK_MONOTONIC for the reload notification: {e}");
            send(&[NotifyState::Reloading]);
        }
    }
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: waiting for running jobs"),
    ]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Pings the watchdog at half the interval systemd asked for, from a task on
/// the runtime: if the runtime wedges, the pings stop and systemd restarts us.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    debug!("watchdog enabled: pinging every {period:?}");
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}
