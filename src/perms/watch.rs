//! The continuous watcher behind `watch-perms`.
//!
//! It adds one non-recursive inotify watch per directory itself, from its
//! own walk, rather than letting `notify` recurse: the watch on a directory
//! is then always in place *before* that directory is read, so a file created
//! in a brand-new directory is either seen by the read or reported by the
//! watch; the walk never follows a symlink; and when the kernel's watch
//! limit is hit we know exactly which directories are blind and rescan them
//! on `permissions.fallback_rescan` instead.
//!
//! `notify` cannot tell a chmod from a chown (both are `Metadata(Any)`), so
//! every event is answered with an `lstat` and a policy check. A queue
//! overflow (`Flag::Rescan`) triggers a full rescan at once. Events arriving
//! together are handled as one batch, each path once, in one transaction.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{EventKind, ModifyKind, RemoveKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::policy::Policy;
use super::store::{self, Observation};
use super::{digest, log_scan, scan, scan_and_fix, Fix};
use crate::config::Config;
use crate::db::{Database, DbConnection};
use crate::sys::inode::InodeKind;
use crate::telemetry::message_ids;

/// How long a batch keeps collecting after its first event. Short: the
/// promise is drift recorded within a second, and chmod storms still
/// coalesce.
const SETTLE: Duration = Duration::from_millis(10);
/// How often an unreachable database is tried again after an outage.
const RECOVERY_EVERY: Duration = Duration::from_secs(5);
/// How soon after this watcher records drift due digests are looked for,
/// and how often otherwise (events other processes record on this host).
const DIGEST_EVERY: Duration = Duration::from_secs(10);
const DIGEST_IDLE: Duration = Duration::from_secs(60);
/// The longest wait for an event when no runtime can tell the watcher to
/// stop (it is then polled for).
const STOP_POLL: Duration = Duration::from_millis(200);

/// What wakes the watcher: inotify, or the daemon stopping it.
enum Wake {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// The inotify side: watches per directory, and which could not be added.
struct Watches {
    watcher: Mutex<notify::RecommendedWatcher>,
    watched: Mutex<HashSet<PathBuf>>,
    /// Directories left unwatched by the watch limit.
    blind: Mutex<BTreeSet<PathBuf>>,
    limit_reported: AtomicBool,
}

impl Watches {
    fn add(&self, dir: &Path) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if watched.contains(dir) {
            return;
        }
        let result = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watch(dir, RecursiveMode::NonRecursive);
        match result {
            Ok(()) => {
                watched.insert(dir.to_path_buf());
            }
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                self.blind
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(dir.to_path_buf());
                self.report_limit(watched.len());
            }
            // Vanished meanwhile, or unreadable: the scan reports it.
            Err(e) => tracing::debug!("cannot watch {}: {e}", dir.display()),
        }
    }

    fn report_limit(&self, watching: usize) {
        if !self.limit_reported.swap(true, Ordering::SeqCst) {
            // The system-wide limit, and the one of this user namespace
            // (Linux 5.11+), whichever is lower.
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
            };
            let limit = [
                read("/proc/sys/fs/inotify/max_user_watches"),
                read("/proc/sys/user/max_inotify_watches"),
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into());
            error!(
                message_id = message_ids::WATCH_LIMIT,
                watching,
                "the inotify watch limit (fs.inotify.max_user_watches = {limit}) is reached after {watching} directories; \
                 the rest are rescanned every permissions.fallback_rescan instead of watched. \
                 Raise the limit (sysctl fs.inotify.max_user_watches) or narrow permissions.roots"
            );
        }
    }

    /// Forgets `dir` and everything below it (after a delete or a move away).
    fn forget_under(&self, dir: &Path) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<PathBuf> = watched.iter().filter(|w| w.starts_with(dir)).cloned().collect();
        let mut watcher = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        for w in gone {
            let _ = watcher.unwatch(&w);
            watched.remove(&w);
        }
        self.blind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|b| !b.starts_with(dir));
    }

    fn is_watched(&self, dir: &Path) -> bool {
        self.watched.lock().unwrap_or_else(|p| p.into_inner()).contains(dir)
    }
}

/// Runs until `stop` is cancelled. Blocking: run it on a thread of its own.
pub fn run(database: Database, config: Arc<Config>, stop: CancellationToken) {
    let policy = match Policy::of(&config.permissions) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                error!("watch-perms: {e}");
            }
            return;
        }
    };
    if policy.roots().is_empty() {
        return;
    }
    let host = config.host_name();
    let (tx, rx) = mpsc::channel::<Wake>();
    // The stop token wakes the blocked receive itself, so the loop sleeps
    // until an event, a stop or its next timed duty, and nothing else.
    let woken_by_stop = match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let (tx, stop) = (tx.clone(), stop.clone());
            runtime.spawn(async move {
                stop.cancelled().await;
                let _ = tx.send(Wake::Stop);
            });
            true
        }
        Err(_) => false,
    };
    let watcher = match notify::RecommendedWatcher::new(
        move |event| {
            let _ = tx.send(Wake::Event(event));
        },
        notify::Config::default().with_follow_symlinks(false),
    ) {
        Ok(w) => w,
        Err(e) => {
            error!("watch-perms: cannot start inotify: {e}; only the scheduled rescans will run");
            return;
        }
    };
    let watches = Watches {
        watcher: Mutex::new(watcher),
        watched: Mutex::new(HashSet::new()),
        blind: Mutex::new(BTreeSet::new()),
        limit_reported: AtomicBool::new(false),
    };
    let mut session = Session {
        database,
        config,
        policy,
        host,
        conn: None,
        watches,
        dirty: true,
    };
    info!(
        roots = %session.policy.roots().iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "),
        "watch-perms: watching {} root(s)",
        session.policy.roots().len()
    );
    session.full_rescan("start");
    let mut duties = Duties {
        last_digest: Instant::now() - DIGEST_EVERY,
        last_fallback: Instant::now(),
        last_recovery: Instant::now(),
        fallback_every: session.config.permissions.fallback_rescan.as_duration(),
        // The start scan may have recorded drift: its digest is looked for at once.
        recorded_since_digest: true,
    };
    while !stop.is_cancelled() {
        let mut wait = duties.next_wait(&session);
        if !woken_by_stop {
            wait = wait.min(STOP_POLL);
        }
        match rx.recv_timeout(wait) {
            Ok(Wake::Event(first)) => {
                let mut batch = vec![first];
                let until = Instant::now() + SETTLE;
                while batch.len() < 50_000 {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(Wake::Event(e)) => batch.push(e),
                        Ok(Wake::Stop) | Err(_) => break,
                    }
                }
                session.handle(batch);
                duties.recorded_since_digest = true;
            }
            Ok(Wake::Stop) => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        duties.run_due(&mut session);
    }
    info!("watch-perms: stopped");
}

/// The watcher's timed work between events, and when each is next due.
struct Duties {
    last_digest: Instant,
    last_fallback: Instant,
    last_recovery: Instant,
    fallback_every: Duration,
    recorded_since_digest: bool,
}

impl Duties {
    fn digest_every(&self) -> Duration {
        if self.recorded_since_digest {
            DIGEST_EVERY
        } else {
            DIGEST_IDLE
        }
    }

    /// How long the watcher may sleep before one of its duties is due.
    fn next_wait(&self, session: &Session) -> Duration {
        let mut next = self.last_digest + self.digest_every();
        if session.dirty {
            next = next.min(self.last_recovery + RECOVERY_EVERY);
        }
        if !session
            .watches
            .blind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            next = next.min(self.last_fallback + self.fallback_every);
        }
        next.saturating_duration_since(Instant::now())
    }

    fn run_due(&mut self, session: &mut Session) {
        if session.dirty && self.last_recovery.elapsed() >= RECOVERY_EVERY {
            // A database outage left events unrecorded: once the database
            // answers again, reconcile from scratch (not a rescan per loop
            // turn while it is down).
            self.last_recovery = Instant::now();
            if session.conn().is_some() {
                session.full_rescan("recovery");
            }
        }
        let blind: Vec<PathBuf> = session
            .watches
            .blind
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if !blind.is_empty() && self.last_fallback.elapsed() >= self.fallback_every {
            self.last_fallback = Instant::now();
            session.partial_scan(&blind, "fallback rescan of unwatched directories");
        }
        if self.last_digest.elapsed() >= self.digest_every() {
            self.last_digest = Instant::now();
            self.recorded_since_digest = false;
            session.digest();
        }
    }
}

struct Session {
    database: Database,
    config: Arc<Config>,
    policy: Arc<Policy>,
    host: String,
    conn: Option<DbConnection>,
    watches: Watches,
    /// Set when something could not be recorded; a full rescan clears it.
    dirty: bool,
}

impl Session {
    fn conn(&mut self) -> Option<&mut DbConnection> {
        if self.conn.is_none() {
            match self.database.connect() {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    warn!("watch-perms: database unavailable: {e}; drift is recorded once it is back");
                    self.dirty = true;
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    fn full_rescan(&mut self, why: &str) {
        let roots = self.policy.roots().to_vec();
        self.partial_scan(&roots, why);
    }

    /// Scans `starts` (adding watches as it goes), fixes what the policy
    /// says to fix, and records the result for those subtrees.
    fn partial_scan(&mut self, starts: &[PathBuf], why: &str) {
        let began = Instant::now();
        let watches = &self.watches;
        // Whole roots get the parallel walk; a new directory is small.
        let threads = if starts == self.policy.roots() {
            scan::default_threads()
        } else {
            1
        };
        let (report, remedies) = scan_and_fix(&self.policy, starts, threads, Fix::AsPolicySays, &|dir| {
            watches.add(dir)
        });
        let host = self.host.clone();
        let Some(conn) = self.conn() else { return };
        match store::reconcile(conn, &host, starts, &report, &remedies, crate::db::now()) {
            Ok(tally) => {
                if starts == self.policy.roots() {
                    self.dirty = false;
                }
                log_scan(why, &report, &tally, began.elapsed());
            }
            Err(e) => self.lost_connection(&e),
        }
    }

    fn lost_connection(&mut self, e: &diesel::result::Error) {
        let e = crate::telemetry::one_line(&e.to_string());
        warn!("watch-perms: could not record drift: {e}; will reconcile with a full rescan");
        self.conn = None;
        self.dirty = true;
    }

    fn digest(&mut self) {
        let config = self.config.clone();
        let host = self.host.clone();
        let Some(conn) = self.conn() else { return };
        match digest::enqueue_if_due(conn, &config, &host, crate::db::now()) {
            Ok(0) => {}
            Ok(n) => info!("watch-perms: drift digest of {n} event(s) enqueued for the admins"),
            Err(e) => self.lost_connection(&e),
        }
    }

    fn handle(&mut self, batch: Vec<notify::Result<notify::Event>>) {
        let (rescan, paths, departed) = self.triage(batch);
        for d in &departed {
            if self.watches.is_watched(d) {
                self.watches.forget_under(d);
            }
        }
        if rescan {
            self.full_rescan("after overflow");
            return;
        }
        let (observations, new_dirs, vanished_dirs) = self.examine(paths, &departed);
        self.record_observations(observations, &vanished_dirs);
        if !new_dirs.is_empty() {
            // A parent and its child both new: scanning the parent covers
            // both (the set is sorted, so parents come first).
            let mut kept: Vec<PathBuf> = Vec::new();
            for d in new_dirs {
                if !kept.iter().any(|k| d.starts_with(k)) {
                    kept.push(d);
                }
            }
            self.partial_scan(&kept, "of a new directory");
        }
    }

    /// What a batch of events asks for: a full rescan (events were lost),
    /// the paths to look at, and the directories that went away.
    fn triage(&mut self, batch: Vec<notify::Result<notify::Event>>) -> (bool, BTreeSet<PathBuf>, Vec<PathBuf>) {
        let mut rescan = false;
        let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
        let mut departed: Vec<PathBuf> = Vec::new();
        for item in batch {
            let event = match item {
                Ok(e) => e,
                Err(e) => {
                    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                        let n = self.watches.watched.lock().map(|w| w.len()).unwrap_or(0);
                        self.watches.report_limit(n);
                        rescan = true;
                    } else {
                        warn!("watch-perms: watcher error: {e}");
                    }
                    continue;
                }
            };
            if event.need_rescan() {
                warn!(
                    message_id = message_ids::WATCH_OVERFLOW,
                    "watch-perms: the inotify queue overflowed; events were lost, rescanning everything now"
                );
                rescan = true;
                continue;
            }
            match event.kind {
                // Contents changing or being read say nothing about modes.
                EventKind::Access(_) | EventKind::Modify(ModifyKind::Data(_)) => continue,
                EventKind::Remove(RemoveKind::Folder) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    departed.extend(event.paths.iter().cloned());
                }
                _ => {}
            }
            for p in event.paths {
                if self.policy.root_of(&p).is_some() && !self.policy.is_skipped(&p) {
                    paths.insert(p);
                }
            }
        }
        (rescan, paths, departed)
    }

    /// Each path looked at beneath its root: what it is against the policy
    /// (remediated where the policy says), directories new to the watch,
    /// and watched directories that went away.
    fn examine(
        &mut self,
        paths: BTreeSet<PathBuf>,
        departed: &[PathBuf],
    ) -> (Vec<Observation>, Vec<PathBuf>, Vec<PathBuf>) {
        let mut observations = Vec::new();
        let mut new_dirs = Vec::new();
        let mut scratch = Vec::new();
        let mut vanished_dirs = Vec::new();
        for path in paths {
            // Relative to the root's handle, never through a symlink: a
            // watched directory swapped for a link to elsewhere yields
            // nothing from elsewhere.
            let Some(root) = self.policy.root_of(&path).map(Path::to_path_buf) else {
                continue;
            };
            let looked = crate::sys::safe_fs::lstat_beneath(&root, &path);
            let looked = match looked {
                Err(e) if crate::sys::safe_fs::is_outside(&e) => {
                    debug!(
                        "watch-perms: {} is reached through a symlink now; not followed",
                        path.display()
                    );
                    Err(std::io::Error::from(std::io::ErrorKind::NotFound))
                }
                other => other,
            };
            match looked {
                Ok(found) => {
                    if found.kind() == InodeKind::Directory && !self.watches.is_watched(&path) {
                        // New (or moved in): watch it, then read it, so that
                        // nothing created inside meanwhile is missed.
                        new_dirs.push(path);
                        continue;
                    }
                    match self.policy.evaluate(&path, &found, &mut scratch) {
                        Some(verdict) => {
                            let remedy = verdict
                                .remediate
                                .then(|| super::remediate::remediate(&self.policy, &path));
                            observations.push(Observation::Drift {
                                path,
                                found,
                                verdict,
                                remedy,
                            });
                        }
                        None => observations.push(Observation::Clean {
                            path,
                            found: Some(found),
                        }),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if departed.contains(&path) {
                        vanished_dirs.push(path.clone());
                    }
                    observations.push(Observation::Clean { path, found: None });
                }
                Err(e) => warn!("watch-perms: cannot examine {}: {e}", path.display()),
            }
        }
        (observations, new_dirs, vanished_dirs)
    }

    /// Records the observations, and closes drift recorded below a
    /// directory that went away.
    fn record_observations(&mut self, mut observations: Vec<Observation>, vanished_dirs: &[PathBuf]) {
        let host = self.host.clone();
        if !observations.is_empty() || !vanished_dirs.is_empty() {
            let Some(conn) = self.conn() else { return };
            let result = (|| {
                // Drift recorded below a directory that went away is over.
                if !vanished_dirs.is_empty() {
                    for d in store::open_drift(conn, &host)? {
                        let p = PathBuf::from(&d.path);
                        if vanished_dirs.iter().any(|v| p.starts_with(v) && &p != v) {
                            observations.push(Observation::Clean { path: p, found: None });
                        }
                    }
                }
                store::record(conn, &host, &observations, crate::db::now())
            })();
            if let Err(e) = result {
                self.lost_connection(&e);
            }
        }
    }
}
