//! The few system calls the scanner and remediation need, wrapped so that
//! nothing here ever follows a symlink below a root.
//!
//! - Directories below a root are opened with `openat2` relative to the
//!   root's descriptor, with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH`: a
//!   symlink planted in any component makes the open fail instead of leading
//!   elsewhere.
//! - Entries are read with `readdir` and `fstatat(AT_SYMLINK_NOFOLLOW)`
//!   relative to the directory's descriptor: one path lookup step each; a
//!   subdirectory is opened relative to its parent's descriptor
//!   ([`open_child`], `O_NOFOLLOW`, one component).
//! - Remediation acts on an `O_PATH | O_NOFOLLOW` handle: `fchmodat2` with
//!   `AT_EMPTY_PATH` (Linux 6.6+; `/proc/self/fd/N` before that) and
//!   `fchownat` with `AT_EMPTY_PATH`. This is how systemd-tmpfiles fixed
//!   CVE-2018-6954; `std::fs::set_permissions` would follow a planted link.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys::inode::Inode;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a root directory (the admin named it; a symlink *to* a root is
/// accepted, nothing below it is).
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = cstring(root.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = check(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dirfd, relative, flags, RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)`.
/// An empty `relative` reopens `dirfd` itself.
pub fn open_beneath(dirfd: &OwnedFd, relative: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let rel = if relative.as_os_str().is_empty() {
        OsStr::new(".")
    } else {
        relative.as_os_str()
    };
    let c = cstring(rel.as_bytes())?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `how` is a correctly sized open_how; `c` is NUL-terminated.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// What is at `path`, found beneath `root` without following a symlink in
/// any component (a symlink at the end is described, not followed), as
/// `lstat` would say were nothing swapped. A path reached only through a
/// symlink, or outside the root, is an error (`ELOOP`, `EXDEV`): nothing
/// outside a root is ever described.
pub fn lstat_beneath(root: &Path, path: &Path) -> io::Result<Inode> {
    let relative = path
        .strip_prefix(root)
        .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
    let rootfd = open_root(root)?;
    let fd = open_beneath(&rootfd, relative, libc::O_PATH)?;
    fstat(&fd)
}

/// True for the errors [`lstat_beneath`] gives for a path that leaves its
/// root or crosses a symlink.
pub fn is_outside(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV))
}

/// `fstat` on a handle (works on `O_PATH` descriptors).
pub fn fstat(fd: &OwnedFd) -> io::Result<Inode> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable storage of the right size.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Inode::from_stat(&st))
}

/// Sets the permission bits through a handle, never through a path.
pub fn chmod_handle(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    let empty = c"";
    // SAFETY: plain syscall with a valid descriptor and an empty C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            empty.as_ptr(),
            mode as libc::mode_t,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Kernels before 6.6 (ENOSYS, EINVAL), and seccomp filters older
        // than the call (systemd 252 answers unknown calls with EPERM): the
        // magic link of our own handle resolves to the very inode the handle
        // holds, whatever the path now names.
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::EPERM) => {
            let proc_path = cstring(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
            // SAFETY: valid NUL-terminated path.
            check(unsafe { libc::chmod(proc_path.as_ptr(), mode as libc::mode_t) }).map(|_| ())
        }
        _ => Err(err),
    }
}

/// Sets owner and group through a handle (`u32::MAX` leaves one as is).
pub fn chown_handle(fd: &OwnedFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let empty = c"";
    // SAFETY: valid descriptor, empty C string, AT_EMPTY_PATH.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

/// One entry of a directory, with its `lstat`.
/// Opens the directory `name` (one component, as `readdir` gave it) in the
/// open directory `parent`, without following a symlink: a directory
/// swapped for a symlink since it was read fails with `ELOOP`. Walking down
/// from the root one handle at a time stays beneath the root (no `..`, no
/// symlink) and costs one lookup step per directory, not a walk of its
/// whole path.
pub fn open_child(parent: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    open_component(parent, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
}

/// `openat(parent, name, flags | O_CLOEXEC)` for one path component.
fn open_component(parent: &OwnedFd, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single path component",
        ));
    }
    let c = cstring(name)?;
    // SAFETY: `parent` is an open directory; `c` is NUL-terminated.
    let fd = check(unsafe { libc::openat(parent.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the directory `dir` (opened for reading), handing `each` every
/// entry's name and metadata, symlinks not followed. The name is borrowed
/// from the stream: nothing is allocated per entry. `dir` stays open (a
/// duplicate is read), so entries can be opened relative to it afterwards.
pub fn read_dir(dir: &OwnedFd, mut each: impl FnMut(&[u8], io::Result<Inode>)) -> io::Result<()> {
    // SAFETY: dup of a descriptor we hold; the copy is owned by the stream.
    let raw = check(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: fdopendir takes ownership of the descriptor on success.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the duplicate is still ours to close.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    struct Closer(*mut libc::DIR);
    impl Drop for Closer {
        fn drop(&mut self) {
            // SAFETY: the DIR was opened by fdopendir and is closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let closer = Closer(dirp);
    loop {
        // SAFETY: errno is reset so that a NULL return can be told apart.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: dirp is a live DIR stream.
        let ent = unsafe { libc::readdir64(closer.0) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(err),
            };
        }
        // SAFETY: d_name is a NUL-terminated array inside the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: dirfd of a live stream; name is NUL-terminated.
        let rc = unsafe { libc::fstatat(libc::dirfd(closer.0), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        let inode = if rc == 0 {
            Ok(Inode::from_stat(&st))
        } else {
            Err(io::Error::last_os_error())
        };
        each(bytes, inode);
    }
}

/// Opens the entry `name` of the open directory `parent` for reading,
/// without following a symlink and without blocking on a FIFO or a device
/// (the caller checks it is a regular file with `fstat`).
pub fn open_file_child(parent: &OwnedFd, name: &[u8]) -> io::Result<std::fs::File> {
    open_component(
        parent,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map(std::fs::File::from)
}
