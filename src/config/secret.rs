//! Secrets: typed so they cannot be printed, and loaded only from places an
//! admin controls (a file that is not world-readable, a systemd credential,
//! or an environment variable). A secret is never taken from the command line
//! or from the main configuration file, which is world-readable by design.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A secret value. `Debug` and `Display` print a placeholder, so a secret that
/// ends up in a log line, an error or a panic message shows nothing.
/// The memory is overwritten when the value is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call sites are few and easy to audit with grep.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from, as written in the configuration:
/// `{ file = "/etc/keywarden/db-password" }`, `{ credential = "db-password" }`
/// (read from `$CREDENTIALS_DIRECTORY`, as systemd's `LoadCredential=` sets it up)
/// or `{ env = "KEYWARDEN_DB_PASSWORD" }`. Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
}

/// Why a secret could not be loaded. The message names the source (a path,
/// credential or variable name), never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a secret needs exactly one of `file`, `credential` or `env`")]
    Ambiguous,
    #[error("secret file {path} is readable by everyone (mode {mode:04o}); run `chmod o-rwx {path}` (0600 or 0640 are fine)")]
    WorldReadable { path: String, mode: u32 },
    #[error("secret file {path} is not a regular file")]
    NotAFile { path: String },
    #[error("cannot read secret file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("credential {name:?} was asked for but $CREDENTIALS_DIRECTORY is not set (add `LoadCredential={name}:/path` to the unit, or use `file` or `env`)")]
    NoCredentialsDirectory { name: String },
    #[error("credential name {name:?} must be a plain file name")]
    BadCredentialName { name: String },
    #[error("environment variable {name} is not set or not valid UTF-8")]
    MissingEnv { name: String },
    #[error("secret from {origin} is empty")]
    Empty { origin: String },
    #[error("secret from {origin} is larger than 64 KiB")]
    TooLarge { origin: String },
}

const MAX_SECRET_BYTES: u64 = 64 * 1024;

impl SecretSource {
    /// Checks the shape without reading anything (what `check-config` can do).
    pub fn validate_shape(&self) -> Result<(), SecretError> {
        let n = [self.file.is_some(), self.credential.is_some(), self.env.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if n != 1 {
            return Err(SecretError::Ambiguous);
        }
        if let Some(name) = &self.credential {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(SecretError::BadCredentialName { name: name.clone() });
            }
        }
        Ok(())
    }

    /// Reads the secret.
    pub fn load(&self) -> Result<Secret, SecretError> {
        self.validate_shape()?;
        if let Some(path) = &self.file {
            return read_secret_file(path);
        }
        if let Some(name) = &self.credential {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                .ok_or_else(|| SecretError::NoCredentialsDirectory { name: name.clone() })?;
            return read_secret_file(&Path::new(&dir).join(name));
        }
        if let Some(name) = &self.env {
            let value = std::env::var(name).map_err(|_| SecretError::MissingEnv { name: name.clone() })?;
            let value = value.trim_end_matches(['\n', '\r']).to_string();
            if value.is_empty() {
                return Err(SecretError::Empty {
                    origin: format!("environment variable {name}"),
                });
            }
            return Ok(Secret::new(value));
        }
        Err(SecretError::Ambiguous)
    }
}

/// Reads a secret file after checking, on the open handle (so a swapped path
/// cannot fool the check), that it is a regular file nobody else can read.
fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let shown = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|source| SecretError::Read {
        path: shown.clone(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| SecretError::Read {
        path: shown.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile { path: shown });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(SecretError::WorldReadable { path: shown, mode });
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge { origin: shown });
    }
    let mut buf = String::new();
    (&mut file)
        .take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut buf)
        .map_err(|source| SecretError::Read {
            path: shown.clone(),
            source,
        })?;
    // One trailing newline is an editor's, not the secret's.
    let trimmed = buf.trim_end_matches(['\n', '\r']).to_string();
    zeroize::Zeroize::zeroize(&mut buf);
    if trimmed.is_empty() {
        return Err(SecretError::Empty { origin: shown });
    }
    Ok(Secret::new(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
    }

    #[test]
    fn world_readable_file_is_refused_with_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let src = SecretSource {
            file: Some(path.clone()),
            credential: None,
            env: None,
        };
        let err = src.load().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("0644"), "{err}");
        assert!(!err.contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(src.load().unwrap().expose(), "s3cret");
    }

    #[test]
    fn exactly_one_source() {
        let src = SecretSource {
            file: None,
            credential: Some("a".into()),
            env: Some("B".into()),
        };
        assert!(matches!(src.validate_shape(), Err(SecretError::Ambiguous)));
        let src = SecretSource {
            file: None,
            credential: Some("../x".into()),
            env: None,
        };
        assert!(matches!(
            src.validate_shape(),
            Err(SecretError::BadCredentialName { .. })
        ));
    }
}
