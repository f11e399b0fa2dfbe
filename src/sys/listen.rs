//! The listening sockets the daemon's local HTTP services share (metrics,
//! verification): a Unix socket bound at its final mode, and one accept
//! interface over Unix and TCP listeners.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};

/// Binds a Unix socket at `path`, mode 0660 (and group `gid` when given):
/// bound under a temporary name in the same directory, given its mode and
/// group, then renamed into place, so the socket never exists at `path`
/// with a wider mode. A socket left by an earlier run is replaced; any
/// other kind of file is not.
pub fn bind_unix(path: &Path, gid: Option<u32>) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Removes the socket at `path`, if a socket is what is there.
pub fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// A listener a service accepts connections from.
pub trait Accept: Send + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = io::Result<Self::Conn>> + Send;
}

pub struct UnixAccept(pub tokio::net::UnixListener);
pub struct TcpAccept(pub tokio::net::TcpListener);

impl Accept for UnixAccept {
    type Conn = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Conn> {
        self.0.accept().await.map(|(c, _)| c)
    }
}

impl Accept for TcpAccept {
    type Conn = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Conn> {
        let (c, _) = self.0.accept().await?;
        // Answers leave in one write; no reason to wait for an ACK.
        let _ = c.set_nodelay(true);
        Ok(c)
    }
}
