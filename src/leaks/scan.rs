//! Reading files for [`super::find`]: whole files under the roots (a walk
//! that opens every directory relative to its parent and never follows a
//! symlink, as the permission scanner does), and the part of a file past
//! where it was last read. Memory per file is one read buffer.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use globset::GlobSet;

use super::find::{scan_window, Candidate, Position, TAIL};
use crate::sys::inode::InodeKind;
use crate::sys::safe_fs;

/// Bytes read at a time.
const READ: usize = 1 << 20;
/// A file whose first bytes hold a NUL is binary and not scanned.
const BINARY_SNIFF: usize = 8192;

/// Counts of a scan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
    pub skipped_binary: u64,
    pub skipped_large: u64,
    pub excluded: u64,
    pub unreadable: u64,
}

/// What is known of a file once read: where its next read starts.
#[derive(Debug, Clone)]
pub struct Seen {
    pub dev: u64,
    pub ino: u64,
    pub pos: Position,
}

/// Reads `file` from `pos` to its current end, returning the candidates;
/// `pos` moves to the end. With `sniff`, a file starting with binary
/// content (read from offset 0) is left unread and `Ok(None)` returned.
pub fn read_from(file: &File, pos: &mut Position, sniff: bool, out: &mut Vec<Candidate>) -> io::Result<Option<u64>> {
    let size = file.metadata()?.len();
    if size < pos.offset {
        // Truncated (or replaced in place): read again from the start.
        *pos = Position::default();
    }
    thread_local! {
        // One read buffer a thread, not an allocation (and zeroing) a file.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < TAIL + READ {
            buf.resize(TAIL + READ, 0);
        }
        read_into(file, pos, sniff, size, &mut buf, out)
    })
}

fn read_into(
    file: &File,
    pos: &mut Position,
    sniff: bool,
    size: u64,
    buf: &mut [u8],
    out: &mut Vec<Candidate>,
) -> io::Result<Option<u64>> {
    let mut read = 0u64;
    let mut first = pos.offset == 0;
    while pos.offset < size {
        let seen = pos.tail.len();
        buf[..seen].copy_from_slice(&pos.tail);
        let want = READ.min((size - pos.offset) as usize);
        let n = file.read_at(&mut buf[seen..seen + want], pos.offset)?;
        if n == 0 {
            break;
        }
        if first && sniff && buf[seen..seen + n.min(BINARY_SNIFF)].contains(&0) {
            return Ok(None);
        }
        first = false;
        let at_end = pos.offset + n as u64 >= size;
        scan_window(&buf[..seen + n], seen, at_end, pos, out);
        read += n as u64;
    }
    Ok(Some(read))
}

/// Walks `roots` and calls `each` with every regular file's path, its
/// open handle and identity; excluded paths, and files over `max_size`,
/// are counted instead. Nothing is followed through a symlink.
pub fn walk(
    roots: &[PathBuf],
    exclude: &GlobSet,
    max_size: u64,
    tally: &mut Tally,
    each: &mut dyn FnMut(&Path, &File, u64, u64),
) {
    for root in roots {
        let Ok(fd) = safe_fs::open_root(root) else {
            tally.unreadable += 1;
            continue;
        };
        // An O_PATH handle cannot be read: open the root for reading.
        let Ok(dir) = safe_fs::open_beneath(&fd, Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY) else {
            tally.unreadable += 1;
            continue;
        };
        let mut path = root.clone();
        walk_dir(&dir, &mut path, exclude, max_size, tally, each);
    }
}

fn walk_dir(
    dir: &OwnedFd,
    path: &mut PathBuf,
    exclude: &GlobSet,
    max_size: u64,
    tally: &mut Tally,
    each: &mut dyn FnMut(&Path, &File, u64, u64),
) {
    let mut entries: Vec<(Vec<u8>, InodeKind)> = Vec::new();
    let listed = safe_fs::read_dir(dir, |name, inode| {
        if let Ok(inode) = inode {
            entries.push((name.to_vec(), inode.kind()));
        }
    });
    if listed.is_err() {
        tally.unreadable += 1;
        return;
    }
    for (name, kind) in entries {
        path.push(std::ffi::OsStr::from_bytes(&name));
        if exclude.is_match(&*path) {
            tally.excluded += 1;
        } else {
            match kind {
                InodeKind::Directory => match safe_fs::open_child(dir, &name) {
                    Ok(child) => walk_dir(&child, path, exclude, max_size, tally, each),
                    Err(_) => tally.unreadable += 1,
                },
                InodeKind::File => match open_regular(dir, &name) {
                    Ok((file, size, dev, ino)) if size <= max_size => {
                        tally.files += 1;
                        each(path, &file, dev, ino);
                    }
                    Ok(_) => tally.skipped_large += 1,
                    Err(_) => tally.unreadable += 1,
                },
                _ => {}
            }
        }
        path.pop();
    }
}

/// [`walk`] with the files read by `threads` threads at once: the walk
/// hands each open file to a bounded queue (at most 64 files open waiting),
/// so the disk and the search overlap and both cores search.
pub fn walk_parallel(
    roots: &[PathBuf],
    exclude: &GlobSet,
    max_size: u64,
    threads: usize,
    tally: &mut Tally,
    each: &(dyn Fn(&Path, &File, u64, u64) + Sync),
) {
    if threads <= 1 {
        return walk(roots, exclude, max_size, tally, &mut |p, f, d, i| each(p, f, d, i));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<(PathBuf, File, u64, u64)>(64);
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = &rx;
            s.spawn(move || loop {
                let next = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                match next {
                    Ok((path, file, dev, ino)) => each(&path, &file, dev, ino),
                    Err(_) => return,
                }
            });
        }
        walk(roots, exclude, max_size, tally, &mut |path, file, dev, ino| {
            if let Ok(file) = file.try_clone() {
                let _ = tx.send((path.to_path_buf(), file, dev, ino));
            }
        });
        drop(tx);
    });
}

/// The threads a scan reads with: the CPUs, at most four.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// Opens a regular file in `dir`: its handle, size and identity.
fn open_regular(dir: &OwnedFd, name: &[u8]) -> io::Result<(File, u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = safe_fs::open_file_child(dir, name)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((file, meta.len(), meta.dev(), meta.ino()))
}

/// Opens `path`, which must lie beneath one of `roots`, for reading,
/// without following a symlink in any component below the root.
pub fn open_beneath_roots(roots: &[PathBuf], path: &Path) -> io::Result<(File, u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let root = roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.as_os_str().len())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EXDEV))?;
    let relative = path
        .strip_prefix(root)
        .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
    let rootfd = safe_fs::open_root(root)?;
    let fd = safe_fs::open_beneath(&rootfd, relative, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok((file, meta.len(), meta.dev(), meta.ino()))
}
