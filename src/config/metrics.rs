//! `[metrics]`: where the daemon publishes its OpenMetrics text. A textfile
//! for node_exporter's textfile collector (no port opened, the default),
//! and optionally a Unix socket or a loopback address answering
//! `GET /metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::HumanDuration;

/// Where Debian's prometheus-node-exporter reads textfiles from.
pub const DEFAULT_TEXTFILE: &str = "/var/lib/prometheus/node-exporter/keywarden.prom";

/// `[metrics]`; absent, no metrics are published.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Written atomically (0644) every `interval`. Defaults to
    /// [`DEFAULT_TEXTFILE`] unless `listen` or `socket` is given.
    #[serde(default)]
    pub textfile: Option<PathBuf>,
    /// A loopback address to serve `GET /metrics` on (`127.0.0.1:9464`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A Unix socket to serve `GET /metrics` on (mode 0660).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// How often the figures are read from the database.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl MetricsConfig {
    /// The textfile written, after the default.
    pub fn textfile(&self) -> Option<PathBuf> {
        match (&self.textfile, &self.listen, &self.socket) {
            (Some(p), _, _) => Some(p.clone()),
            (None, None, None) => Some(PathBuf::from(DEFAULT_TEXTFILE)),
            _ => None,
        }
    }
}

impl super::Section for MetricsConfig {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(addr) = self.listen {
            if !addr.ip().is_loopback() {
                out.push(format!(
                    "metrics.listen must be a loopback address (127.0.0.1 or ::1), found {addr}; put a reverse proxy with authentication in front for anything else"
                ));
            }
        }
        for (key, path) in [("metrics.textfile", &self.textfile), ("metrics.socket", &self.socket)] {
            if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                out.push(format!("{key} must be an absolute path"));
            }
        }
        if self.interval.as_duration() < std::time::Duration::from_secs(1) {
            out.push("metrics.interval must be at least 1s".into());
        }
        out
    }
}
