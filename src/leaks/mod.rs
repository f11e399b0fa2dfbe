//! Leaked keys: live keywarden keys found in files on this host (a key in
//! a log file or a world-readable config is the commonest leak) are
//! revoked within seconds, like hosted secret scanning does for
//! repositories.
//!
//! - [`find`]: key-shaped strings in bytes, a stream at a time;
//! - [`scan`]: reading files beneath the roots without following symlinks,
//!   whole or from where they were last read;
//! - [`act`]: a candidate confirmed by prefix lookup and Argon2
//!   verification, recorded once per path, revoked or reported, mailed;
//! - [`watch`]: the daemon's watcher (inotify, full scans on the
//!   `watch-perms` schedule).
//!
//! Imports: keys, notify, db, telemetry, config, sys.

pub mod act;
pub mod find;
pub mod scan;
pub mod watch;

use std::path::PathBuf;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tracing::{info, warn};

use crate::config::leaks::{LeakAction, LeaksConfig};
use crate::config::Config;
use crate::db::holder::Holder;
use crate::db::DbConnection;
use crate::keys::{KeyError, KeyService};
use crate::telemetry::message_ids;
use act::{Finding, Outcome};

/// `[leaks]` made ready to use.
#[derive(Debug, Clone)]
pub struct Settings {
    pub roots: Vec<PathBuf>,
    pub exclude: GlobSet,
    pub max_file_size: u64,
    pub action: LeakAction,
}

impl Settings {
    /// `None` when `[leaks]` is absent (the daemon then scans nothing).
    pub fn of(config: &Config) -> Option<Settings> {
        config.leaks.as_ref().map(|l| Self::from_section(config, l))
    }

    /// From a section (the defaults for `leaks scan` without `[leaks]`).
    pub fn from_section(config: &Config, section: &LeaksConfig) -> Settings {
        let roots = if section.roots.is_empty() {
            config.permissions.roots.clone()
        } else {
            section.roots.clone()
        };
        let mut builder = GlobSetBuilder::new();
        for pattern in &section.exclude {
            // Checked when the configuration was read.
            if let Ok(glob) = GlobBuilder::new(pattern).literal_separator(true).build() {
                builder.add(glob);
            }
        }
        Settings {
            roots,
            exclude: builder.build().unwrap_or_else(|_| GlobSet::empty()),
            max_file_size: section.max_file_size,
            action: section.action,
        }
    }
}

/// The key service the scanner verifies and revokes with (a revocation
/// cancels the key's pending expiry warnings, as `keys revoke` does).
pub fn key_service(config: &Config) -> Result<KeyService, KeyError> {
    Ok(KeyService::new(&config.keys)?.on_retire(crate::notify::outbox::cancel_for_key))
}

/// Reports a finding to the journal; the secret is never part of it.
pub fn log_finding(f: &Finding) {
    match f.outcome {
        Outcome::Revoked | Outcome::Alerted | Outcome::Live => warn!(
            message_id = message_ids::LEAKED_KEY,
            key_prefix = %f.prefix,
            leak_path = %f.path,
            leak_line = f.line,
            action = ?f.outcome,
            "leaks: the live key {} ({} of {}) was found in {}:{}; {}",
            f.prefix,
            f.name,
            f.owner,
            f.path,
            f.line,
            match f.outcome {
                Outcome::Revoked => "it has been revoked",
                Outcome::Alerted => "it still works (leaks.action = \"alert\"): rotate it",
                _ => "nothing was changed",
            }
        ),
        Outcome::Recorded | Outcome::NotLive => info!(
            key_prefix = %f.prefix,
            leak_path = %f.path,
            leak_line = f.line,
            "leaks: the {} key {} was found in {}:{}; recorded",
            f.status,
            f.prefix,
            f.path,
            f.line
        ),
        Outcome::AlreadyKnown => {}
    }
}

/// Delivers the outbox now (the leak emails just enqueued, and whatever
/// else is due), as `notify-expiry` would at its next tick; a failure is
/// left to that tick.
pub fn deliver_now(conn: &mut DbConnection, config: &Config) {
    use crate::notify::deliver::deliver;
    use crate::notify::render::Templates;
    use crate::notify::transport::Mailer;
    let cfg = &config.notifications;
    let (hello_name, _) = config.mail_host_name();
    let templates = match Templates::load(cfg) {
        Ok(t) => t,
        Err(e) => return warn!("leaks: the emails wait for notify-expiry: {e}"),
    };
    let mailer = match Mailer::from_config(cfg, &hello_name) {
        Ok(m) => m,
        Err(e) => return warn!("leaks: the emails wait for notify-expiry: {e}"),
    };
    let holder = Holder::current(&config.host_name(), &format!("leaks-{}", uuid::Uuid::new_v4().simple()));
    let started = std::time::Instant::now();
    // A minute at most: the rest waits for notify-expiry.
    match deliver(conn, cfg, &mailer, &templates, &holder, crate::db::now(), |_| {
        started.elapsed() < std::time::Duration::from_secs(60)
    }) {
        Ok(report) if report.messages > 0 => info!("leaks: delivered {} email(s)", report.messages),
        Ok(_) => {}
        Err(e) => warn!(
            "leaks: the emails wait for notify-expiry: {}",
            crate::db::describe_error(&e)
        ),
    }
    mailer.close();
}

/// A one-shot scan of `paths` (directories walked, files read whole; a
/// symlink given is not followed): `leaks scan`. Every key-shaped string is
/// confirmed; `mode` says whether anything is changed.
pub fn scan_once(
    conn: &mut DbConnection,
    config: &Config,
    settings: &Settings,
    paths: &[PathBuf],
    mode: act::Mode,
) -> Result<(Vec<Finding>, scan::Tally), KeyError> {
    let service = key_service(config)?;
    let mut tally = scan::Tally::default();
    let found: std::sync::Mutex<Vec<(PathBuf, Vec<find::Candidate>)>> = std::sync::Mutex::new(Vec::new());
    let read_tally = std::sync::Mutex::new(scan::Tally::default());
    let read_one = |path: &std::path::Path, file: &std::fs::File| {
        let mut pos = find::Position::default();
        let mut candidates = Vec::new();
        let result = scan::read_from(file, &mut pos, true, &mut candidates);
        if let Ok(mut t) = read_tally.lock() {
            match result {
                Ok(Some(n)) => t.bytes += n,
                Ok(None) => t.skipped_binary += 1,
                Err(_) => t.unreadable += 1,
            }
        }
        if !candidates.is_empty() {
            if let Ok(mut f) = found.lock() {
                f.push((path.to_path_buf(), candidates));
            }
        }
    };
    let mut dirs = Vec::new();
    for path in paths {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => dirs.push(path.clone()),
            Ok(m) if m.is_file() => {
                if settings.exclude.is_match(path) {
                    tally.excluded += 1;
                } else if m.len() > settings.max_file_size {
                    tally.skipped_large += 1;
                } else {
                    use std::os::unix::fs::OpenOptionsExt;
                    match std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                        .open(path)
                    {
                        Ok(file) => {
                            tally.files += 1;
                            read_one(path, &file);
                        }
                        Err(_) => tally.unreadable += 1,
                    }
                }
            }
            _ => tally.unreadable += 1,
        }
    }
    let mut walked = scan::Tally::default();
    scan::walk_parallel(
        &dirs,
        &settings.exclude,
        settings.max_file_size,
        scan::default_threads(),
        &mut walked,
        &|path, file, _, _| read_one(path, file),
    );
    let read = read_tally.into_inner().unwrap_or_default();
    tally.files += walked.files;
    tally.bytes += read.bytes;
    tally.skipped_binary += read.skipped_binary;
    tally.skipped_large += walked.skipped_large;
    tally.excluded += walked.excluded;
    tally.unreadable += walked.unreadable + read.unreadable;
    let mut found = found.into_inner().unwrap_or_default();
    // Reported in path order, whatever thread read what.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut findings = Vec::new();
    for (path, candidates) in &found {
        act::respond_file(conn, &service, config, path, candidates, mode, &mut findings)?;
    }
    Ok((findings, tally))
}
