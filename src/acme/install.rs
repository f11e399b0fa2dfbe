//! Writing credential files so that nobody ever sees a half-written file or
//! a file with a wider mode than it will end with.
//!
//! Each file goes to a temporary name in the same directory, created with
//! `O_EXCL | O_NOFOLLOW` (the process umask can only narrow it), given its
//! final mode and owner through the descriptor *before* any byte is
//! written, filled, fsynced, and renamed over the target; then the
//! directory is fsynced so the rename survives a crash. The previous file is
//! kept beside the new one as `NAME.prev` (by a hard link renamed into
//! place, so the live name never disappears).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where a file goes and how it must look.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub path: &'a Path,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

fn tmp_name(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(path.with_file_name(format!(".{}.{suffix}.tmp", name.to_string_lossy())))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to a temporary file next to the target with its final
/// mode and owner; returns the temporary path (not yet renamed).
pub fn stage(target: &Target<'_>, bytes: &[u8]) -> io::Result<PathBuf> {
    let dir = target
        .path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    let tmp = tmp_name(target.path)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(target.mode & 0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let result = (|| {
        let fd = file.as_raw_fd();
        if target.uid.is_some() || target.gid.is_some() {
            // SAFETY: fd is a live descriptor owned by `file`.
            let rc = unsafe { libc::fchown(fd, target.uid.unwrap_or(u32::MAX), target.gid.unwrap_or(u32::MAX)) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: as above; the mode is applied after the owner, as chown
        // may clear bits.
        if unsafe { libc::fchmod(fd, target.mode as libc::mode_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Moves a staged file into place, keeping the current one as `.prev`.
pub fn commit(staged: &Path, target: &Path) -> io::Result<()> {
    if target.exists() {
        let prev = PathBuf::from(format!("{}.prev", target.display()));
        let prev_tmp = tmp_name(&prev)?;
        std::fs::hard_link(target, &prev_tmp)?;
        std::fs::rename(&prev_tmp, &prev)?;
    }
    std::fs::rename(staged, target)?;
    if let Some(dir) = target.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Stages and commits one file.
pub fn write_atomically(target: &Target<'_>, bytes: &[u8]) -> io::Result<()> {
    let staged = stage(target, bytes)?;
    commit(&staged, target.path).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })
}

/// Installs a key and its chain: both staged first, so a failure leaves
/// the installed pair untouched; then the key, then the chain.
pub fn install_pair(key: &Target<'_>, key_pem: &[u8], chain: &Target<'_>, chain_pem: &[u8]) -> io::Result<()> {
    let staged_key = stage(key, key_pem)?;
    let staged_chain = match stage(chain, chain_pem) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&staged_key);
            return Err(e);
        }
    };
    if let Err(e) = commit(&staged_key, key.path) {
        let _ = std::fs::remove_file(&staged_key);
        let _ = std::fs::remove_file(&staged_chain);
        return Err(e);
    }
    commit(&staged_chain, chain.path).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged_chain);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_land_with_their_mode_and_the_previous_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        let t = Target {
            path: &path,
            mode: 0o640,
            uid: None,
            gid: None,
        };
        write_atomically(&t, b"one").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        write_atomically(&t, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read(dir.path().join("sub/key.pem.prev")).unwrap(), b"one");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
