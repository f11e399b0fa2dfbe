//! Who runs an admin command, for the audit trail: `cli:<user>`, with the
//! invoking user when run through sudo.

use std::os::unix::fs::MetadataExt;

/// The name of a uid from /etc/passwd, or the number.
fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?;
                let _ = f.next();
                (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

pub fn actor(command: &str) -> String {
    // The owner of /proc/self is this process's effective uid.
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    let me = user_name(uid);
    let sudo = std::env::var("SUDO_USER")
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 64 && *s != me);
    match sudo {
        Some(by) => format!("cli:{command} by {by} (as {me})"),
        None => format!("cli:{command} by {me}"),
    }
}
