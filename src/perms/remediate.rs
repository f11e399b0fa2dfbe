//! Putting drift back, in a way a local user cannot turn into an attack.
//!
//! The path is opened beneath its root with no symlink allowed in any
//! component ([`safe_fs::open_beneath`]) as an `O_PATH` handle; the handle is
//! checked (no symlink, the expected type, a single hard link for files) and
//! the policy is evaluated again on what the *handle* holds, so a file
//! swapped after the scan is judged as it is now. The mode is narrowed before
//! the owner changes (a new owner never gets a wider file), then widened if
//! the policy asks for bits that were missing. Every refusal is reported.

use std::path::Path;

use super::policy::Policy;
use crate::sys::inode::{Inode, InodeKind};
use crate::sys::safe_fs;

/// What an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// The path now complies; `Inode` is what it looks like afterwards.
    Fixed(Inode),
    /// The path complied already when opened (someone fixed it meanwhile).
    AlreadyCompliant(Inode),
    /// Nothing was changed, for this reason.
    Refused(String),
}

/// Brings `path` (under one of the policy's roots) in line with the policy.
pub fn remediate(policy: &Policy, path: &Path) -> Remedy {
    let Some(root) = policy.root_of(path) else {
        return Remedy::Refused("not under any permissions root".into());
    };
    let rel = path.strip_prefix(root).unwrap_or(Path::new(""));
    let root_fd = match safe_fs::open_root(root) {
        Ok(fd) => fd,
        Err(e) => return Remedy::Refused(format!("cannot open root {}: {e}", root.display())),
    };
    let handle = match safe_fs::open_beneath(&root_fd, rel, libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) => {
            return Remedy::Refused(match e.raw_os_error() {
                Some(libc::ELOOP) => "a component of the path is a symlink; symlinks are never followed".into(),
                Some(libc::EXDEV) => "the path leads outside its root".into(),
                Some(libc::ENOSYS) => "this kernel has no openat2 (Linux 5.6+), which safe remediation needs".into(),
                _ => format!("cannot open without following symlinks: {e}"),
            })
        }
    };
    let found = match safe_fs::fstat(&handle) {
        Ok(i) => i,
        Err(e) => return Remedy::Refused(format!("fstat failed: {e}")),
    };
    match found.kind() {
        InodeKind::Symlink => return Remedy::Refused("the path is a symlink; it is never followed".into()),
        InodeKind::Other => return Remedy::Refused(format!("the path is a {}, not a file or directory", found.kind())),
        InodeKind::File if found.nlink > 1 => {
            return Remedy::Refused(format!(
                "the file has {} hard links; changing it would change the other names too",
                found.nlink
            ))
        }
        _ => {}
    }
    let mut scratch = Vec::new();
    let Some(verdict) = policy.evaluate(path, &found, &mut scratch) else {
        return Remedy::AlreadyCompliant(found);
    };
    if !verdict.fixable {
        return Remedy::Refused(format!("{}: only a person can fix that", verdict.expected()));
    }
    let current = found.perm();
    let narrowed = current & verdict.target_mode;
    if narrowed != current {
        if let Err(e) = safe_fs::chmod_handle(&handle, narrowed) {
            return Remedy::Refused(format!("chmod {narrowed:04o} failed: {e}"));
        }
    }
    if verdict.target_uid.is_some() || verdict.target_gid.is_some() {
        if let Err(e) = safe_fs::chown_handle(&handle, verdict.target_uid, verdict.target_gid) {
            return Remedy::Refused(format!("chown failed: {e}"));
        }
    }
    // chown clears setuid/setgid, and an exact mode may add bits: set the
    // final mode last.
    let after = match safe_fs::fstat(&handle) {
        Ok(i) => i,
        Err(e) => return Remedy::Refused(format!("fstat failed: {e}")),
    };
    if after.perm() != verdict.target_mode {
        if let Err(e) = safe_fs::chmod_handle(&handle, verdict.target_mode) {
            return Remedy::Refused(format!("chmod {:04o} failed: {e}", verdict.target_mode));
        }
    }
    match safe_fs::fstat(&handle) {
        Ok(now) if policy.evaluate(path, &now, &mut scratch).is_none() => Remedy::Fixed(now),
        Ok(now) => Remedy::Refused(format!(
            "the change did not take (mode {:04o}, uid {}, gid {})",
            now.perm(),
            now.uid,
            now.gid
        )),
        Err(e) => Remedy::Refused(format!("fstat failed: {e}")),
    }
}
