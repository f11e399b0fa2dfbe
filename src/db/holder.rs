//! Who holds a job lease or an outbox claim: the host, its boot, the
//! process (PID and start time, so a reused PID is not mistaken for the
//! holder) and the run.
//!
//! Written into `job_leases.holder` and `notifications.claimed_by`, it lets
//! a process decide that a holder on its own host is provably gone (another
//! boot, no such process, or a different process under the same PID) and
//! take over at once, instead of waiting for a lease or claim to time out.
//! A holder on another host is never judged: its lease or claim runs out.
//! This relies on `daemon.host_name` naming one machine only (the default,
//! the system's host name, does).

use std::fmt;

/// One run of one process on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    boot: String,
    pid: u32,
    /// Start time of the process, in clock ticks since boot (`/proc/PID/stat`).
    start: u64,
    pub run: String,
}

impl Holder {
    /// This process, running `run`, on `host`.
    pub fn current(host: &str, run: &str) -> Holder {
        let pid = std::process::id();
        Holder {
            host: host.to_string(),
            boot: boot_id(),
            pid,
            start: process_start(pid).unwrap_or(0),
            run: run.to_string(),
        }
    }

    /// Reads the text form written by `Display`. `None` for anything else
    /// (an older format, a hand-made row): such a holder is never judged gone.
    pub fn parse(text: &str) -> Option<Holder> {
        let mut host = None;
        let mut boot = None;
        let mut pid = None;
        let mut start = None;
        let mut run = None;
        for field in text.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            match k {
                "host" => host = Some(v.to_string()),
                "boot" => boot = Some(v.to_string()),
                "pid" => pid = v.parse().ok(),
                "start" => start = v.parse().ok(),
                "run" => run = Some(v.to_string()),
                _ => return None,
            }
        }
        Some(Holder {
            host: host?,
            boot: boot?,
            pid: pid?,
            start: start?,
            run: run?,
        })
    }

    /// Whether this holder, seen by `me`, has certainly stopped holding:
    /// it is on my host and its boot ended, its process is gone, its PID
    /// belongs to another process now, or it is an earlier run of this very
    /// process (a process runs a job once at a time, so that run has ended).
    pub fn is_gone(&self, me: &Holder) -> bool {
        if self.host != me.host {
            return false;
        }
        if self.boot != me.boot {
            return !self.boot.is_empty() && !me.boot.is_empty();
        }
        if self.pid == me.pid && self.start == me.start {
            return self.run != me.run;
        }
        match process_start(self.pid) {
            None => !std::path::Path::new(&format!("/proc/{}", self.pid)).exists(),
            Some(start) => start != self.start,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A host name with whitespace does not read back: such a holder is
        // never judged, which is the safe side.
        write!(
            f,
            "host={} boot={} pid={} start={} run={}",
            self.host, self.boot, self.pid, self.start, self.run
        )
    }
}

/// The kernel's id of the current boot; empty when unreadable.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Field 22 of `/proc/PID/stat`: when the process started.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start behind the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_judges_only_its_own_host() {
        let me = Holder::current("vm1", "run-a");
        assert_eq!(Holder::parse(&me.to_string()), Some(me.clone()));
        assert!(me.start > 0);
        // The same run is alive; an earlier run of this process is not.
        assert!(!me.is_gone(&me));
        let earlier = Holder {
            run: "run-0".into(),
            ..me.clone()
        };
        assert!(earlier.is_gone(&me));
        // A process that does not exist, or a reused PID, is gone.
        let dead = Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(dead.is_gone(&me));
        let reused = Holder {
            start: me.start + 1,
            pid: 1,
            ..me.clone()
        };
        assert!(reused.is_gone(&me));
        let other_boot = Holder {
            boot: "b".into(),
            ..me.clone()
        };
        assert!(other_boot.is_gone(&me));
        // Another host is never judged.
        let elsewhere = Holder {
            host: "vm2".into(),
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert!(!elsewhere.is_gone(&me));
        assert_eq!(Holder::parse("otherhost:4242:run"), None);
    }
}
