//! `[leaks]`: scanning files for live keywarden keys (a key in a log file
//! or a world-readable config is the commonest leak) and revoking them.

use std::path::PathBuf;

use serde::Deserialize;

/// What happens to a live key found in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Revoke it at once (the default), then tell its owner and the admins.
    #[default]
    Revoke,
    /// Only tell them.
    Alert,
}

/// `[leaks]`; absent, no file is scanned.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaksConfig {
    /// Directories scanned; the permission roots when empty.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// Glob patterns of paths never scanned (`/srv/app/test/**`, `**/*.gz`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Files larger than this (bytes) are skipped whole and counted; what
    /// is appended to a file already seen is scanned whatever its size.
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    #[serde(default)]
    pub action: LeakAction,
}

fn default_max_file_size() -> u64 {
    2 * 1024 * 1024 * 1024
}

impl Default for LeaksConfig {
    fn default() -> Self {
        LeaksConfig {
            roots: Vec::new(),
            exclude: Vec::new(),
            max_file_size: default_max_file_size(),
            action: LeakAction::Revoke,
        }
    }
}

impl super::Section for LeaksConfig {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for root in &self.roots {
            if !root.is_absolute() {
                out.push(format!("leaks.roots: {} must be an absolute path", root.display()));
            }
        }
        for pattern in &self.exclude {
            if let Err(e) = globset::Glob::new(pattern) {
                out.push(format!("leaks.exclude: {pattern:?} is not a glob pattern: {e}"));
            }
        }
        if self.max_file_size == 0 {
            out.push("leaks.max_file_size must be above zero".into());
        }
        out
    }
}
