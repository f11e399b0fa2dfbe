//! Permission drift: files under watched roots are held to a policy.
//!
//! - [`policy`] compiles `[permissions]` (globs built by `patterns`, rules refining each other,
//!   the global rules) and judges one path's metadata.
//! - [`scan`] walks the roots (metadata only, a few threads, never following
//!   a symlink) and lists every violation.
//! - [`remediate`] puts drift back through an `O_PATH` handle opened with
//!   `openat2(RESOLVE_NO_SYMLINKS)`, refusing symlinks, hard links and
//!   unexpected types; [`crate::sys::safe_fs`] holds those system calls.
//! - [`store`] records drift in `permission_drift` and its history in
//!   `permission_events`, once when it appears and once when it ends, and
//!   logs each event to journald; [`digest`] emails the admins at most once
//!   per interval.
//! - [`watch`] is the continuous watcher the daemon runs for `watch-perms`;
//!   the scheduled `watch-perms` job and `keywarden perms scan` use
//!   [`scan_and_fix`] directly.
//!
//! Imports: notify (drift alerts), sys (safe file handling, NSS), db,
//! telemetry, config.

pub mod digest;
mod patterns;
pub mod policy;
pub mod remediate;
pub mod scan;
pub mod store;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

pub use policy::Policy;
pub use remediate::Remedy;
pub use scan::{ScanReport, Violation};

/// Which violations a scan puts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// None: report only.
    Nothing,
    /// Those whose rule (or `permissions.remediate`) says so.
    AsPolicySays,
    /// All of them (`perms scan --fix`, an admin's explicit request).
    Everything,
}

/// Scans `starts`, then remediates as `fix` says. Returns the report and
/// what each remediation attempt did, by path.
pub fn scan_and_fix(
    policy: &Policy,
    starts: &[PathBuf],
    threads: usize,
    fix: Fix,
    on_dir: &(dyn Fn(&Path) + Sync),
) -> (ScanReport, HashMap<PathBuf, Remedy>) {
    let report = scan::scan(policy, starts, threads, on_dir);
    let mut remedies = HashMap::new();
    for v in &report.violations {
        let wanted = match fix {
            Fix::Nothing => false,
            Fix::AsPolicySays => v.verdict.remediate,
            Fix::Everything => true,
        };
        if wanted {
            remedies.insert(v.path.clone(), remediate::remediate(policy, &v.path));
        }
    }
    (report, remedies)
}

/// Logs what a scan could not examine, then one summary line with the
/// events its recording wrote (the watcher and the job say the same).
pub fn log_scan(why: &str, report: &ScanReport, tally: &store::Tally, took: Duration) {
    for (path, e) in &report.errors {
        warn!(path = %path.display(), "watch-perms: cannot examine {}: {e}", path.display());
    }
    info!(
        files = report.files,
        directories = report.directories,
        drifted = report.violations.len(),
        detected = tally.detected,
        remediated = tally.remediated,
        refused = tally.refused,
        resolved = tally.resolved,
        duration_ms = took.as_millis() as u64,
        "watch-perms {why}: {} file(s) in {} director(ies), {} drifted; new events: {} detected, {} remediated, {} refused, {} resolved",
        report.files,
        report.directories,
        report.violations.len(),
        tally.detected,
        tally.remediated,
        tally.refused,
        tally.resolved
    );
}
