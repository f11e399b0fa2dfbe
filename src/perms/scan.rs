//! The full scan: every path under the roots, metadata only, checked
//! against the policy. Directories are worked off a shared queue by a few
//! threads; each is opened beneath its root without following symlinks and
//! its entries are `fstatat`ed relative to it.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use super::policy::{Policy, Verdict};
use crate::sys::inode::{Inode, InodeKind};
use crate::sys::safe_fs;

/// A path that does not comply, as found.
#[derive(Debug, Clone)]
pub struct Violation {
    pub path: PathBuf,
    pub found: Inode,
    pub verdict: Verdict,
}

/// What a scan saw.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub files: u64,
    pub directories: u64,
    pub violations: Vec<Violation>,
    /// Paths that could not be examined, with the reason.
    pub errors: Vec<(PathBuf, String)>,
    /// Directories that could not be read: nothing below them was seen, so
    /// drift recorded below them is neither confirmed nor resolved.
    pub unreadable: Vec<PathBuf>,
}

impl ScanReport {
    fn merge(&mut self, other: ScanReport) {
        self.files += other.files;
        self.directories += other.directories;
        self.violations.extend(other.violations);
        self.errors.extend(other.errors);
        self.unreadable.extend(other.unreadable);
    }

    /// True when `path` lies in a directory that could not be read.
    pub fn was_unreadable(&self, path: &Path) -> bool {
        self.unreadable.iter().any(|u| path.starts_with(u) && path != u)
    }
}

struct Queue {
    pending: Vec<(usize, PathBuf)>,
    busy: usize,
}

/// How many threads a full scan uses: metadata reads overlap well up to a
/// few threads; more only contend on the directory inodes.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Scans `starts` (each a path under one of the policy's roots). `on_dir`
/// is called for each directory just before it is read, which is where the
/// watcher adds its inotify watch, so nothing created after the read began
/// goes unseen.
pub fn scan(policy: &Policy, starts: &[PathBuf], threads: usize, on_dir: &(dyn Fn(&Path) + Sync)) -> ScanReport {
    let mut report = ScanReport::default();
    let mut roots: Vec<(PathBuf, OwnedFd)> = Vec::new();
    let mut queue = Vec::new();
    let mut scratch = Vec::new();
    for start in starts {
        let Some(root) = policy.root_of(start) else {
            report
                .errors
                .push((start.clone(), "not under any permissions root".into()));
            continue;
        };
        let ri = match roots.iter().position(|(r, _)| r == root) {
            Some(i) => i,
            None => match safe_fs::open_root(root) {
                Ok(fd) => {
                    roots.push((root.to_path_buf(), fd));
                    roots.len() - 1
                }
                Err(e) => {
                    report.errors.push((root.to_path_buf(), e.to_string()));
                    report.unreadable.push(root.to_path_buf());
                    continue;
                }
            },
        };
        // The start itself is checked too (a root directory has a mode).
        match Inode::lstat(start) {
            Ok(found) => {
                if let Some(verdict) = policy.evaluate(start, &found, &mut scratch) {
                    report.violations.push(Violation {
                        path: start.clone(),
                        found,
                        verdict,
                    });
                }
                if found.kind() == InodeKind::Directory {
                    let rel = start.strip_prefix(root).unwrap_or(Path::new("")).to_path_buf();
                    queue.push((ri, rel));
                } else {
                    report.files += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report.errors.push((start.clone(), e.to_string())),
        }
    }
    let shared = (
        Mutex::new(Queue {
            pending: queue,
            busy: 0,
        }),
        Condvar::new(),
    );
    let threads = threads.max(1);
    let work = || worker(policy, &roots, &shared, on_dir);
    if threads == 1 {
        report.merge(work());
    } else {
        let parts: Vec<ScanReport> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for part in parts {
            report.merge(part);
        }
    }
    report
}

fn worker(
    policy: &Policy,
    roots: &[(PathBuf, OwnedFd)],
    shared: &(Mutex<Queue>, Condvar),
    on_dir: &(dyn Fn(&Path) + Sync),
) -> ScanReport {
    let (lock, wake) = shared;
    let mut report = ScanReport::default();
    let mut scratch = Vec::new();
    let mut children = Vec::new();
    loop {
        let (ri, rel) = {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(item) = q.pending.pop() {
                    q.busy += 1;
                    break item;
                }
                if q.busy == 0 {
                    wake.notify_all();
                    return report;
                }
                q = wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let (root, root_fd) = &roots[ri];
        let dir_path = if rel.as_os_str().is_empty() {
            root.clone()
        } else {
            root.join(&rel)
        };
        report.directories += 1;
        on_dir(&dir_path);
        let opened = safe_fs::open_beneath(root_fd, &rel, libc::O_RDONLY | libc::O_DIRECTORY);
        let read = opened.and_then(|fd| {
            safe_fs::read_dir(fd, |entry| {
                let name = OsStr::from_bytes(&entry.name);
                let path = dir_path.join(name);
                if policy.is_skipped(&path) {
                    return;
                }
                match entry.inode {
                    Ok(found) => {
                        if let Some(verdict) = policy.evaluate(&path, &found, &mut scratch) {
                            report.violations.push(Violation {
                                path: path.clone(),
                                found,
                                verdict,
                            });
                        }
                        if found.kind() == InodeKind::Directory {
                            children.push((ri, rel.join(name)));
                        } else {
                            report.files += 1;
                        }
                    }
                    // Gone between readdir and stat: nothing to check.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => report.errors.push((path, e.to_string())),
                }
            })
        });
        if let Err(e) = read {
            // ELOOP: the directory was swapped for a symlink after its
            // parent was read. It is not followed; its entry was checked.
            if e.raw_os_error() != Some(libc::ELOOP) && e.kind() != std::io::ErrorKind::NotFound {
                report.errors.push((dir_path.clone(), e.to_string()));
                report.unreadable.push(dir_path);
            }
        }
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        q.pending.append(&mut children);
        q.busy -= 1;
        if !q.pending.is_empty() || q.busy == 0 {
            wake.notify_all();
        }
    }
}
