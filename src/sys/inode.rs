//! What `lstat` says about a path: type, mode, owner, group, links.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The metadata the policy looks at, from `lstat`/`fstatat` (never
/// following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
}

/// The file types the policy tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InodeKind {
    File,
    Directory,
    Symlink,
    Other,
}

impl fmt::Display for InodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InodeKind::File => "file",
            InodeKind::Directory => "directory",
            InodeKind::Symlink => "symlink",
            InodeKind::Other => "special file",
        })
    }
}

impl Inode {
    pub fn kind(&self) -> InodeKind {
        match self.mode & libc::S_IFMT {
            libc::S_IFREG => InodeKind::File,
            libc::S_IFDIR => InodeKind::Directory,
            libc::S_IFLNK => InodeKind::Symlink,
            _ => InodeKind::Other,
        }
    }

    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// `lstat(path)`.
    pub fn lstat(path: &Path) -> std::io::Result<Inode> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(Inode {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    pub fn from_stat(st: &libc::stat) -> Inode {
        Inode {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}
