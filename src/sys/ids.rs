//! User and group names to ids, through the system's NSS (`getpwnam_r`,
//! `getgrnam_r`), so names from LDAP or systemd-userdb resolve too.

use std::ffi::CString;
use std::io;

/// Whether an id names a user or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    User,
    Group,
}

impl IdKind {
    pub fn noun(self) -> &'static str {
        match self {
            IdKind::User => "user",
            IdKind::Group => "group",
        }
    }

    /// The id of a name of this kind; `None` when there is none.
    pub fn lookup(self, name: &str) -> io::Result<Option<u32>> {
        match self {
            IdKind::User => user_id(name),
            IdKind::Group => group_id(name),
        }
    }
}

/// One reentrant NSS lookup (`getpwnam_r` or `getgrnam_r`), growing the
/// buffer while the libc asks for more room.
fn lookup<T>(
    name: &str,
    call: unsafe extern "C" fn(
        *const libc::c_char,
        *mut T,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut T,
    ) -> libc::c_int,
    id_of: impl Fn(&T) -> u32,
) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd and group are plain C structs; all-zero is valid.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        // SAFETY: every pointer refers to live, correctly sized storage.
        let rc = unsafe {
            call(
                cname.as_ptr(),
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        return Ok((!result.is_null()).then(|| id_of(&entry)));
    }
}

/// The uid of a user name; `None` when there is no such user.
pub fn user_id(name: &str) -> io::Result<Option<u32>> {
    lookup(name, libc::getpwnam_r, |p: &libc::passwd| p.pw_uid)
}

/// The gid of a group name; `None` when there is no such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    lookup(name, libc::getgrnam_r, |g: &libc::group| g.gr_gid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_resolves_and_nonsense_does_not() {
        assert_eq!(super::user_id("root").unwrap(), Some(0));
        assert_eq!(super::group_id("root").unwrap(), Some(0));
        assert_eq!(super::user_id("no-such-user-kw").unwrap(), None);
    }
}
