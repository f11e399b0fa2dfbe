//! The full scan: every path under the roots, metadata only, checked
//! against the policy. Directories are worked off a shared queue by a few
//! threads; each is opened relative to its parent's descriptor (a start
//! directory beneath its root) without following symlinks, and its entries
//! are `fstatat`ed relative to it. An entry's path is built in one buffer
//! per thread (push the name, check, pop): nothing is allocated per entry
//! but what a violation keeps.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

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

/// A directory waiting to be read.
struct Pending {
    /// Its root, by index.
    root: usize,
    /// Its parent's open handle and its name there; none for a start
    /// directory, opened beneath its root.
    parent: Option<(Arc<OwnedFd>, Vec<u8>)>,
    path: PathBuf,
}

struct Queue {
    pending: Vec<Pending>,
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
                    queue.push(Pending {
                        root: ri,
                        parent: None,
                        path: start.clone(),
                    });
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
        let item = {
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
        report.directories += 1;
        on_dir(&item.path);
        let read = open_pending(roots, &item).and_then(|fd| {
            let fd = Arc::new(fd);
            // One buffer for every entry's path: push the name, pop it after.
            let mut path = item.path.clone();
            safe_fs::read_dir(&fd, |name, inode| {
                path.push(OsStr::from_bytes(name));
                check_entry(
                    policy,
                    &path,
                    inode,
                    &mut scratch,
                    &mut report,
                    || Pending {
                        root: item.root,
                        parent: Some((fd.clone(), name.to_vec())),
                        path: path.clone(),
                    },
                    &mut children,
                );
                path.pop();
            })
        });
        if let Err(e) = read {
            // ELOOP: the directory was swapped for a symlink after its
            // parent was read. It is not followed; its entry was checked.
            if e.raw_os_error() != Some(libc::ELOOP) && e.kind() != std::io::ErrorKind::NotFound {
                report.errors.push((item.path.clone(), e.to_string()));
                report.unreadable.push(item.path);
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

/// Opens a directory to read: relative to its parent's handle, or beneath
/// its root for a start (and when the process is out of descriptors, say).
fn open_pending(roots: &[(PathBuf, OwnedFd)], item: &Pending) -> std::io::Result<OwnedFd> {
    let (root, root_fd) = &roots[item.root];
    let beneath = || {
        let rel = item.path.strip_prefix(root).unwrap_or(Path::new(""));
        safe_fs::open_beneath(root_fd, rel, libc::O_RDONLY | libc::O_DIRECTORY)
    };
    match &item.parent {
        Some((parent, name)) => match safe_fs::open_child(parent, name) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => beneath(),
            other => other,
        },
        None => beneath(),
    }
}

/// Checks one entry against the policy; a directory is queued (built by
/// `child` only then).
fn check_entry(
    policy: &Policy,
    path: &Path,
    inode: std::io::Result<Inode>,
    scratch: &mut Vec<usize>,
    report: &mut ScanReport,
    child: impl FnOnce() -> Pending,
    children: &mut Vec<Pending>,
) {
    if policy.is_skipped(path) {
        return;
    }
    match inode {
        Ok(found) => {
            if let Some(verdict) = policy.evaluate(path, &found, scratch) {
                report.violations.push(Violation {
                    path: path.to_path_buf(),
                    found,
                    verdict,
                });
            }
            if found.kind() == InodeKind::Directory {
                children.push(child());
            } else {
                report.files += 1;
            }
        }
        // Gone between readdir and stat: nothing to check.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.errors.push((path.to_path_buf(), e.to_string())),
    }
}
