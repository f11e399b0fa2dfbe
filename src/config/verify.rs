//! `[verify]`: the local verification service (`keywarden run` serves it
//! when the section is present). Applications in any language ask it over
//! a Unix socket, optionally a loopback address, whether a presented key is
//! valid, instead of re-implementing the rules.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::HumanDuration;

/// Where the socket goes when `socket` is not given and systemd did not
/// set `RUNTIME_DIRECTORY` (the unit's `RuntimeDirectory=keywarden`).
pub const FALLBACK_SOCKET: &str = "/run/keywarden/verify.sock";

/// `[verify]`; absent, the service is off.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// The Unix socket (mode 0660). Defaults to `verify.sock` in the unit's
    /// runtime directory.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The group given the socket, so that applications running as its
    /// members can connect; the daemon's own group otherwise.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// A loopback address to serve the same API on (`127.0.0.1:8731`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Recorded as the actor of the audit rows the service writes.
    #[serde(default = "default_actor")]
    pub actor: String,
    /// How long a successful verification is remembered (`0s`: never, every
    /// request runs Argon2).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: HumanDuration,
    /// How many verified keys are remembered at most.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// Connections served at once; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The time a client has to send a request, and the service to answer
    /// it; an idle kept-alive connection is closed after it too.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Argon2 verifications run at once (each holds its memory cost);
    /// defaults to the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
}

fn default_actor() -> String {
    "verify-service".into()
}
fn default_cache_ttl() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_max_body() -> usize {
    8192
}
fn default_max_connections() -> usize {
    256
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl VerifyConfig {
    /// The socket path, after the default.
    pub fn socket_path(&self) -> PathBuf {
        if let Some(p) = &self.socket {
            return p.clone();
        }
        match std::env::var_os("RUNTIME_DIRECTORY") {
            // systemd may list several directories, separated by colons.
            Some(dirs) => {
                let dirs = dirs.to_string_lossy().into_owned();
                let first = dirs.split(':').next().unwrap_or_default().to_string();
                if first.starts_with('/') {
                    PathBuf::from(first).join("verify.sock")
                } else {
                    PathBuf::from(FALLBACK_SOCKET)
                }
            }
            None => PathBuf::from(FALLBACK_SOCKET),
        }
    }

    /// The number of Argon2 verifications run at once.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
            .max(1)
    }
}

impl super::Section for VerifyConfig {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() {
                out.push(format!(
                    "verify.listen must be a loopback address (127.0.0.1 or ::1), found {addr}; applications on other hosts should share the database or run their own keywarden"
                ));
            }
        }
        if self.socket.as_ref().is_some_and(|p| !p.is_absolute()) {
            out.push("verify.socket must be an absolute path".into());
        }
        if let Some(group) = &self.socket_group {
            if group.is_empty() || group.contains(|c: char| c.is_whitespace() || c == ':' || c.is_control()) {
                out.push(format!("verify.socket_group {group:?} is not a group name"));
            }
        }
        let actor_ok = !self.actor.is_empty()
            && self.actor.len() <= 64
            && self
                .actor
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
        if !actor_ok {
            out.push("verify.actor must be 1-64 characters of letters, digits and - _ . : @".into());
        }
        if self.cache_ttl.as_duration() > std::time::Duration::from_secs(3600) {
            out.push("verify.cache_ttl must be at most 1h".into());
        }
        if !(1..=10_000_000).contains(&self.cache_entries) {
            out.push("verify.cache_entries must be between 1 and 10000000".into());
        }
        if !(256..=1_048_576).contains(&self.max_body) {
            out.push("verify.max_body must be between 256 and 1048576 bytes".into());
        }
        if !(1..=65_536).contains(&self.max_connections) {
            out.push("verify.max_connections must be between 1 and 65536".into());
        }
        let timeout = self.request_timeout.as_duration();
        if timeout < std::time::Duration::from_millis(100) || timeout > std::time::Duration::from_secs(300) {
            out.push("verify.request_timeout must be between 100ms and 5m".into());
        }
        if self.workers.is_some_and(|w| !(1..=256).contains(&w)) {
            out.push("verify.workers must be between 1 and 256".into());
        }
        out
    }
}
