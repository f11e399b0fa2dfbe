//! The daemon's leak watcher: a full scan of the roots when it starts and
//! on the `watch-perms` schedule, and between them every file written
//! (`IN_MODIFY`, `IN_CLOSE_WRITE`) read from where it was last read, so a
//! growing log costs what was appended, never a rescan from its start.
//!
//! Per file it remembers its identity, size, mtime and line count (no
//! content): a file replaced, truncated or rewritten in place is read
//! again from the start.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::act::{self, Finding, Mode, Outcome};
use super::find::{Candidate, Position, TAIL};
use super::scan::{self, Tally};
use super::{deliver_now, log_finding, Settings};
use crate::config::Config;
use crate::db::{Database, DbConnection};
use crate::keys::KeyService;

/// How long events keep collecting after the first of a batch.
const SETTLE: Duration = Duration::from_millis(20);
enum Wake {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// What is remembered of a file read.
#[derive(Debug, Clone, Copy)]
struct Seen {
    dev: u64,
    ino: u64,
    mtime: i64,
    offset: u64,
    lines: u64,
}

struct Watch {
    settings: Settings,
    config: Arc<Config>,
    database: Database,
    service: KeyService,
    conn: Option<DbConnection>,
    seen: HashMap<PathBuf, Seen>,
}

/// Runs until `stop`. Blocking: run it on a thread of its own.
pub fn run(database: Database, config: Arc<Config>, stop: CancellationToken) {
    let Some(settings) = Settings::of(&config) else { return };
    if settings.roots.is_empty() {
        info!("leaks: no roots to watch (leaks.roots, or permissions.roots)");
        return;
    }
    let service = match super::key_service(&config) {
        Ok(s) => s,
        Err(e) => {
            warn!("leaks: cannot start: {e}");
            return;
        }
    };
    let (tx, rx) = mpsc::channel::<Wake>();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let (tx, stop) = (tx.clone(), stop.clone());
        runtime.spawn(async move {
            stop.cancelled().await;
            let _ = tx.send(Wake::Stop);
        });
    }
    let mut watcher = match notify::RecommendedWatcher::new(
        move |event| {
            let _ = tx.send(Wake::Event(event));
        },
        notify::Config::default().with_follow_symlinks(false),
    ) {
        Ok(w) => w,
        Err(e) => {
            warn!("leaks: cannot watch files: {e}; only the scheduled scans run");
            return;
        }
    };
    for root in &settings.roots {
        if let Err(e) = watcher.watch(root, RecursiveMode::Recursive) {
            warn!("leaks: cannot watch {}: {e}", root.display());
        }
    }
    let mut watch = Watch {
        settings,
        config: config.clone(),
        database,
        service,
        conn: None,
        seen: HashMap::new(),
    };
    watch.full_scan("initial scan");
    info!(
        "leaks: watching {} for keys written to files",
        watch
            .settings
            .roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let schedule = config.job("watch-perms").map(|j| j.schedule.clone());
    loop {
        if stop.is_cancelled() {
            return;
        }
        let next = schedule.as_ref().and_then(|s| s.next_after(chrono::Utc::now()));
        let wait = next
            .map(|at| (at - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600));
        let first = match rx.recv_timeout(wait) {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Event(e)) => e,
            Err(RecvTimeoutError::Timeout) => {
                watch.full_scan("scheduled scan");
                continue;
            }
        };
        let mut paths = BTreeSet::new();
        collect(first, &mut paths);
        let until = Instant::now() + SETTLE;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(Wake::Event(e)) => collect(e, &mut paths),
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        watch.written(&paths);
    }
}

/// The paths of an event that may have new content.
fn collect(event: notify::Result<notify::Event>, paths: &mut BTreeSet<PathBuf>) {
    let Ok(event) = event else { return };
    let wanted = matches!(
        event.kind,
        EventKind::Modify(ModifyKind::Data(_))
            | EventKind::Modify(ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(CreateKind::File)
            | EventKind::Create(CreateKind::Any)
            | EventKind::Modify(ModifyKind::Name(RenameMode::To))
            | EventKind::Modify(ModifyKind::Name(RenameMode::Both))
    );
    if wanted {
        if let Some(p) = event.paths.last() {
            paths.insert(p.clone());
        }
    }
}

impl Watch {
    /// Every file under the roots; unchanged files are not read again.
    fn full_scan(&mut self, why: &str) {
        let began = Instant::now();
        let mut tally = Tally::default();
        let found: std::sync::Mutex<Vec<(PathBuf, Vec<Candidate>)>> = std::sync::Mutex::new(Vec::new());
        let updates: std::sync::Mutex<Vec<(PathBuf, Seen)>> = std::sync::Mutex::new(Vec::new());
        let (roots, exclude, max) = (
            self.settings.roots.clone(),
            self.settings.exclude.clone(),
            self.settings.max_file_size,
        );
        let seen = &self.seen;
        let (bytes, binary) = (AtomicU64::new(0), AtomicU64::new(0));
        scan::walk_parallel(
            &roots,
            &exclude,
            max,
            scan::default_threads(),
            &mut tally,
            &|path, file, dev, ino| {
                let previous = seen.get(path).copied();
                let mut is_binary = 0;
                if let Some((s, candidates, read)) = read_changed(file, dev, ino, previous, &mut is_binary) {
                    bytes.fetch_add(read, Ordering::Relaxed);
                    if let Ok(mut u) = updates.lock() {
                        u.push((path.to_path_buf(), s));
                    }
                    if !candidates.is_empty() {
                        if let Ok(mut f) = found.lock() {
                            f.push((path.to_path_buf(), candidates));
                        }
                    }
                }
                binary.fetch_add(is_binary, Ordering::Relaxed);
            },
        );
        tally.bytes = bytes.into_inner();
        tally.skipped_binary = binary.into_inner();
        let updates = updates.into_inner().unwrap_or_default();
        let mut found = found.into_inner().unwrap_or_default();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, s) in updates {
            self.seen.insert(path, s);
        }
        let findings = self.respond_all(found);
        info!(
            files = tally.files,
            bytes = tally.bytes,
            "leaks: {why}: {} files ({} read, {} bytes), {} binary and {} over leaks.max_file_size skipped, {} excluded, {} unreadable, {} keys found, in {:.1}s",
            tally.files,
            self.seen.len(),
            tally.bytes,
            tally.skipped_binary,
            tally.skipped_large,
            tally.excluded,
            tally.unreadable,
            findings,
            began.elapsed().as_secs_f64()
        );
    }

    /// Files written since the last look.
    fn written(&mut self, paths: &BTreeSet<PathBuf>) {
        let mut found = Vec::new();
        for path in paths {
            if self.settings.exclude.is_match(path) {
                continue;
            }
            let Ok((file, size, dev, ino)) = scan::open_beneath_roots(&self.settings.roots, path) else {
                continue;
            };
            let previous = self.seen.get(path).copied();
            let continues = previous.is_some_and(|p| p.dev == dev && p.ino == ino && size >= p.offset);
            if !continues && size > self.settings.max_file_size {
                continue;
            }
            if let Some((s, candidates, _)) = read_changed(&file, dev, ino, previous, &mut 0) {
                self.seen.insert(path.clone(), s);
                if !candidates.is_empty() {
                    found.push((path.clone(), candidates));
                }
            }
        }
        self.respond_all(found);
    }

    /// Confirms and acts on what was found; returns the keys found.
    fn respond_all(&mut self, found: Vec<(PathBuf, Vec<Candidate>)>) -> usize {
        if found.is_empty() {
            return 0;
        }
        let config = self.config.clone();
        let mode = Mode::Act(self.settings.action);
        let mut findings: Vec<Finding> = Vec::new();
        let Some(conn) = connected(&self.database, &mut self.conn) else {
            return 0;
        };
        let mut failed = false;
        for (path, candidates) in &found {
            if let Err(e) = act::respond_file(conn, &self.service, &config, path, candidates, mode, &mut findings) {
                warn!("leaks: cannot record a key found in {}: {e}", act::shown_path(path));
                failed = true;
            }
        }
        for f in &findings {
            log_finding(f);
        }
        if findings
            .iter()
            .any(|f| matches!(f.outcome, Outcome::Revoked | Outcome::Alerted))
        {
            deliver_now(conn, &config);
        }
        if failed {
            self.conn = None;
            // Read these files again next time.
            for (path, _) in &found {
                self.seen.remove(path);
            }
        }
        findings.iter().filter(|f| f.outcome != Outcome::AlreadyKnown).count()
    }
}

/// The watcher's connection, opened when there is none.
fn connected<'a>(database: &Database, slot: &'a mut Option<DbConnection>) -> Option<&'a mut DbConnection> {
    if slot.is_none() {
        match database.connect() {
            Ok(c) => *slot = Some(c),
            Err(e) => {
                warn!("leaks: cannot reach the database: {e}");
                return None;
            }
        }
    }
    slot.as_mut()
}

/// Reads what changed in `file` since `previous`: `None` when nothing did
/// (or it is binary, counted in `binary`); else where it now stands, the
/// candidates and the bytes read.
fn read_changed(
    file: &File,
    dev: u64,
    ino: u64,
    previous: Option<Seen>,
    binary: &mut u64,
) -> Option<(Seen, Vec<Candidate>, u64)> {
    let meta = file.metadata().ok()?;
    let (size, mtime) = (meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
    let resume = match previous {
        Some(p) if p.dev == dev && p.ino == ino && size > p.offset => Some(p),
        Some(p) if p.dev == dev && p.ino == ino && size == p.offset && p.mtime == mtime => return None,
        _ => None,
    };
    let mut pos = match resume {
        Some(p) => {
            // The tail is read again from the file, not kept per file.
            let keep = (p.offset as usize).min(TAIL);
            let mut tail = vec![0u8; keep];
            file.read_exact_at(&mut tail, p.offset - keep as u64).ok()?;
            Position {
                offset: p.offset,
                lines: p.lines,
                tail,
            }
        }
        None => Position::default(),
    };
    let from_start = pos.offset == 0;
    let mut candidates = Vec::new();
    match scan::read_from(file, &mut pos, from_start, &mut candidates) {
        Ok(Some(read)) => Some((
            Seen {
                dev,
                ino,
                mtime,
                offset: pos.offset,
                lines: pos.lines,
            },
            candidates,
            read,
        )),
        Ok(None) => {
            *binary += 1;
            // Remember it at its size: not sniffed again until it changes.
            Some((
                Seen {
                    dev,
                    ino,
                    mtime,
                    offset: size,
                    lines: 0,
                },
                Vec::new(),
                0,
            ))
        }
        Err(_) => None,
    }
}
