//! `[daemon]`: logging, shutdown, the host name.

use serde::Deserialize;

use super::HumanDuration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_filter(self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match self {
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// Where log lines go. `auto` picks journald when systemd connected stderr to
/// the journal (it sets `JOURNAL_STREAM`), and stderr otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Auto,
    Journald,
    Stderr,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Recorded with every job run; defaults to the machine's host name.
    #[serde(default)]
    pub host_name: Option<String>,
    #[serde(default = "default_log_level")]
    pub log_level: LogLevel,
    #[serde(default = "default_log_target")]
    pub log_target: LogTarget,
    /// How long a stop waits for running jobs before exiting anyway.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
}

fn default_log_level() -> LogLevel {
    LogLevel::Info
}
fn default_log_target() -> LogTarget {
    LogTarget::Auto
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            host_name: None,
            log_level: default_log_level(),
            log_target: default_log_target(),
            shutdown_timeout: default_shutdown_timeout(),
        }
    }
}

/// The system's fully qualified name: the canonical name the resolver
/// gives for the host name (`/etc/hosts` or DNS), when it has a dot.
pub fn system_fqdn() -> Option<String> {
    let host = std::ffi::CString::new(system_host_name()).ok()?;
    // SAFETY: `hints` is zeroed then filled; `res` is written by
    // getaddrinfo and freed below; ai_canonname is a C string or null.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_flags = libc::AI_CANONNAME;
        hints.ai_socktype = libc::SOCK_STREAM;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        if libc::getaddrinfo(host.as_ptr(), std::ptr::null(), &hints, &mut res) != 0 || res.is_null() {
            return None;
        }
        let canon = (*res).ai_canonname;
        let name = (!canon.is_null()).then(|| std::ffi::CStr::from_ptr(canon).to_string_lossy().into_owned());
        libc::freeaddrinfo(res);
        name.filter(|n| n.contains('.') && !n.ends_with(".localdomain"))
    }
}

/// The kernel's host name (what `uname -n` prints), through `gethostname`
/// so it works where /proc/sys is hidden (`ProcSubset=pid` in the unit).
pub fn system_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable and its length is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_string();
    if rc != 0 || name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

impl super::Section for DaemonConfig {
    fn problems(&self) -> Vec<String> {
        match &self.host_name {
            Some(h) if h.trim().is_empty() || h.len() > 253 || h.chars().any(char::is_control) => {
                vec!["daemon.host_name must be a non-empty name of at most 253 printable characters".into()]
            }
            _ => Vec::new(),
        }
    }
}
