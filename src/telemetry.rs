//! Logging: natively to journald when running under systemd (or when the
//! configuration says so), human-readable lines on stderr otherwise.
//!
//! Journald receives every event with structured fields, upper-cased and
//! without prefix, so `journalctl -u keywarden JOB=expire-keys` works:
//!
//! | field | meaning |
//! |---|---|
//! | `JOB` | job name, on every line logged during a run |
//! | `RUN_ID` | the run's id, also in `job_runs.run_id` |
//! | `TRIGGER` | `schedule` or `manual` |
//! | `OUTCOME` | `ok`, `failed` or `skipped`, on the line that ends a run |
//! | `ROWS_AFFECTED` | rows changed by the run (or by one batch) |
//! | `DURATION_MS` | how long the run took |
//! | `ERROR` | the error, on failures |
//! | `EVENT` | daemon events: `started`, `reload-applied`, `reload-refused`, `stopping`, `stopped` |
//!
//! The log level can be changed by a reload.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

use crate::config::{LogLevel, LogTarget};

/// Where logging ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveTarget {
    Journald,
    Stderr,
}

/// Handle kept by the daemon to change the level on reload.
pub struct Telemetry {
    level: reload::Handle<LevelFilter, Registry>,
    pub target: ActiveTarget,
}

impl Telemetry {
    pub fn set_level(&self, level: LogLevel) {
        if let Err(e) = self.level.reload(level.as_filter()) {
            tracing::warn!("could not change the log level: {e}");
        }
    }
}

/// True when systemd connected our stderr to the journal: it sets
/// `JOURNAL_STREAM=<device>:<inode>` of that stream.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(value) = value.to_str() else { return false };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let file = std::fs::File::from(fd);
    match file.metadata() {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber. Call once per process.
pub fn init(target: LogTarget, level: LogLevel) -> Telemetry {
    let want_journald = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    let (filter, handle) = reload::Layer::new(level.as_filter());
    let mut fallback_reason = None;
    let journald = if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("keywarden".to_string()),
            ),
            Err(e) => {
                fallback_reason = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    let active = if journald.is_some() {
        ActiveTarget::Journald
    } else {
        ActiveTarget::Stderr
    };
    // No colours: every byte of a line is the event's, escaped (see
    // `SafeStderr`), so a file name cannot draw on the admin's terminal.
    let fmt = (active == ActiveTarget::Stderr).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(|| SafeStderr)
            .with_target(false)
            .with_ansi(false)
    });
    // Err means a subscriber is already installed (tests in one process).
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(fmt)
        .try_init();
    if let Some(reason) = fallback_reason {
        tracing::warn!("journald is not reachable ({reason}); logging to stderr instead");
    }
    Telemetry {
        level: handle,
        target: active,
    }
}

/// `MESSAGE_ID`s of the events an admin may want explained: `journalctl -x`
/// shows the text for each from `packaging/keywarden.catalog`, and
/// `journalctl MESSAGE_ID=…` finds every occurrence.
pub mod message_ids {
    pub const STARTED: &str = "e293b66551b342d2a4583b8fc87918c7";
    pub const STOPPED: &str = "bb7a829d9ba849ebb4fba4259d861cd8";
    pub const RELOAD_APPLIED: &str = "6d7df6d037844ad48a88c20a0c34a444";
    pub const RELOAD_REFUSED: &str = "b55c87145ea14c9bbf4843717896d12b";
    pub const JOB_FAILED: &str = "40284432ba1443c6b41c84e7e05a335c";
    pub const DATABASE_UNAVAILABLE: &str = "75c71b07458444b6b338ce43fdad4290";
    pub const NOTIFICATION_FAILED: &str = "8d06b44b610f411a86c69c9be1c802e3";
    pub const PERMISSION_DRIFT: &str = "24006ecc031c46df9279ae9cf1bcb2a4";
    pub const PERMISSION_REFUSED: &str = "61eded9928594c7a8df2886f2225bfe6";
    pub const PERMISSION_RESOLVED: &str = "b359150c1e5e43218b2d729c0c023fe0";
    pub const WATCH_LIMIT: &str = "b52527bd32634afe8509ab4434182466";
    pub const WATCH_OVERFLOW: &str = "9fc00af662794381b8e486bcc241a446";
    pub const CERT_RENEWED: &str = "3f1c2a7e9b8d4c61a0e5f7d2b4c6e8a1";
    pub const CERT_RENEWAL_FAILED: &str = "c7e2d9a14b3f4e8d9a6b5c1d2e3f4a5b";
    pub const CERT_DEPLOY_FAILED: &str = "99d221aae2d74c7d818725a28990d45d";
    pub const CERT_STALE: &str = "60de8873b2bc40acbf6726aaa853d36e";
    pub const LEAKED_KEY: &str = "5b1f0c3e8a7d4e29b6c2f4a9d8e1b370";

    /// Every id, for the catalog's test.
    pub const ALL: [&str; 17] = [
        STARTED,
        STOPPED,
        RELOAD_APPLIED,
        RELOAD_REFUSED,
        JOB_FAILED,
        DATABASE_UNAVAILABLE,
        NOTIFICATION_FAILED,
        PERMISSION_DRIFT,
        PERMISSION_REFUSED,
        PERMISSION_RESOLVED,
        WATCH_LIMIT,
        WATCH_OVERFLOW,
        CERT_RENEWED,
        CERT_RENEWAL_FAILED,
        CERT_DEPLOY_FAILED,
        CERT_STALE,
        LEAKED_KEY,
    ];
}

/// The stderr log's writer: each record (one `write` per event) is scrubbed
/// of loaded secrets and its control characters are escaped, so a file name
/// holding a newline or an escape sequence cannot forge or colour a line.
/// The journal gets the raw values in their own fields.
struct SafeStderr;

impl Write for SafeStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, newline) = match text.strip_suffix('\n') {
            Some(body) => (body, true),
            None => (&*text, false),
        };
        let scrubbed = crate::config::secret::scrub(body);
        let mut line = printable(&scrubbed).into_owned();
        if newline {
            line.push('\n');
        }
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `text` with control characters (and the bidirectional overrides that
/// reorder what a terminal shows) escaped as `\n`, `\t`, `\r` or `\u{..}`,
/// for text output and log lines. JSON output needs no such thing.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Library error text on one line: libpq ends lines with `\n\t`, which
/// would split a log record (and journald's MESSAGE) in several.
/// Loaded secrets are scrubbed from it too ([`crate::config::secret::scrub`]):
/// this is the text of errors from libraries, which may quote anything.
pub fn one_line(text: &str) -> String {
    let text = crate::config::secret::scrub(text);
    let mut out = String::with_capacity(text.len());
    for part in text.split(['\n', '\r']).map(str::trim).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod one_line_tests {
    #[test]
    fn joins_libpq_continuation_lines() {
        let libpq = "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.\n";
        assert_eq!(
            super::one_line(libpq),
            "server closed the connection unexpectedly This probably means the server terminated abnormally before or while processing the request."
        );
        assert_eq!(super::one_line("one\r\n\r\ntwo"), "one two");
    }

    #[test]
    fn printable_escapes_what_could_forge_a_line() {
        assert_eq!(super::printable("plain/path.txt"), "plain/path.txt");
        assert_eq!(
            super::printable("a\nFORGED 0644\x1b[31mred\u{202e}"),
            "a\\nFORGED 0644\\u{1b}[31mred\\u{202e}"
        );
    }
}
