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

/// Every secret value this process has loaded, so that outgoing text can be
/// scrubbed of it whatever a library put into its error message (libpq
/// quoting a connection string, an SMTP server echoing a login).
static LOADED: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Values shorter than this are not scrubbed: replacing every "ab" in a log
/// line would destroy it and hide nothing worth hiding.
const MIN_SCRUBBED_LEN: usize = 4;

/// Remembers `value` (and its percent-encoded form, as it would appear in a
/// URL) for [`scrub`].
pub fn remember_loaded(value: &str) {
    if value.len() < MIN_SCRUBBED_LEN {
        return;
    }
    let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let percent = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect::<String>();
    let mut loaded = LOADED.write().unwrap_or_else(|p| p.into_inner());
    for v in [value.to_string(), encoded, percent] {
        if !loaded.contains(&v) {
            loaded.push(v);
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    loaded.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// `text` with every loaded secret replaced by `<redacted>`.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let loaded = LOADED.read().unwrap_or_else(|p| p.into_inner());
    if !loaded.iter().any(|v| text.contains(v.as_str())) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for v in loaded.iter() {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "<redacted>");
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Where a secret comes from, as written in the configuration:
/// `{ file = "/etc/keywarden/db-password" }`, `{ credential = "db-password" }`
/// (read from `$CREDENTIALS_DIRECTORY`, as systemd's `LoadCredential=` sets it up)
/// or `{ env = "KEYWARDEN_DB_PASSWORD" }`. Exactly one of the three.
///
/// Only that table form is accepted. Anything else (a plain string, an
/// array, a number) is refused with a message that names the accepted forms
/// and never repeats the value: a password typed in place of its source must
/// not be echoed by `check-config`, `run` or a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    pub file: Option<PathBuf>,
    pub credential: Option<String>,
    pub env: Option<String>,
}

/// What an error about a secret-typed key says instead of the value.
pub const SECRET_FORMS: &str = "expected a secret source: { file = \"/path\" }, { credential = \"name\" } or      { env = \"VARIABLE\" } (a secret is never written in the configuration itself; the value given is not shown)";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl SourceVisitor {
    fn refuse<E: serde::de::Error>() -> Result<SecretSource, E> {
        Err(E::custom(SECRET_FORMS))
    }
}

impl<'de> serde::de::Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_FORMS)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        use serde::de::Error;
        let mut out = SecretSource {
            file: None,
            credential: None,
            env: None,
        };
        while let Some(key) = map.next_key::<String>()? {
            if !matches!(key.as_str(), "file" | "credential" | "env") {
                // Not even the key is repeated: it may be the secret.
                return Err(A::Error::custom(format!(
                    "unknown key in a secret source; {SECRET_FORMS}"
                )));
            }
            // The values are names and paths, not secrets: plain strings only.
            let value: String = map
                .next_value()
                .map_err(|_| A::Error::custom(format!("`{key}` of a secret source must be a string")))?;
            let slot = match key.as_str() {
                "file" => {
                    if out.file.replace(PathBuf::from(value)).is_some() {
                        return Err(A::Error::custom("`file` given twice"));
                    }
                    continue;
                }
                "credential" => &mut out.credential,
                "env" => &mut out.env,
                _ => return Err(A::Error::custom(SECRET_FORMS)),
            };
            if slot.replace(value).is_some() {
                return Err(A::Error::custom(format!("`{key}` given twice")));
            }
        }
        Ok(out)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_string<E: serde::de::Error>(self, _: String) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, _: &'de str) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretSource, E> {
        Self::refuse()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<SecretSource, A::Error> {
        Self::refuse()
    }
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

    /// Checks what can be checked without reading the value: the shape, and
    /// for a file (or a credential, when `$CREDENTIALS_DIRECTORY` is set) that
    /// it exists, is a regular file and is not readable by everyone.
    pub fn check_without_reading(&self) -> Result<(), SecretError> {
        self.validate_shape()?;
        let path = match (&self.file, &self.credential) {
            (Some(path), _) => path.clone(),
            (None, Some(name)) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(dir) => Path::new(&dir).join(name),
                None => return Ok(()),
            },
            (None, None) => return Ok(()),
        };
        let shown = path.display().to_string();
        let meta = std::fs::metadata(&path).map_err(|source| SecretError::Read {
            path: shown.clone(),
            source,
        })?;
        check_secret_file(&meta, shown)
    }

    /// Reads the secret, and remembers it for [`scrub`].
    pub fn load(&self) -> Result<Secret, SecretError> {
        let secret = self.load_unremembered()?;
        remember_loaded(secret.expose());
        Ok(secret)
    }

    fn load_unremembered(&self) -> Result<Secret, SecretError> {
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

/// A secret file must be a regular file that is not readable by everyone.
fn check_secret_file(meta: &std::fs::Metadata, shown: String) -> Result<(), SecretError> {
    if !meta.is_file() {
        return Err(SecretError::NotAFile { path: shown });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(SecretError::WorldReadable { path: shown, mode });
    }
    Ok(())
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
    check_secret_file(&meta, shown.clone())?;
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
    fn only_the_table_forms_are_accepted_and_values_are_never_echoed() {
        #[derive(Debug, Deserialize)]
        struct T {
            #[allow(dead_code)]
            password: SecretSource,
        }
        for bad in [
            "password = \"hunter2\"",
            "password = [\"hunter2\"]",
            "password = 4242424242",
            "password = { file = \"/x\", hunter2 = 1 }",
            "password = { value = \"hunter2\" }",
            "password = { file = [\"hunter2\"] }",
        ] {
            let err = toml::from_str::<T>(bad).unwrap_err().message().to_string();
            assert!(!err.contains("hunter2") && !err.contains("4242424242"), "{bad}: {err}");
        }
        let ok: T = toml::from_str("password = { file = \"/etc/kw/pw\" }").unwrap();
        assert_eq!(ok.password.file.as_deref(), Some(Path::new("/etc/kw/pw")));
    }

    #[test]
    fn loaded_secrets_are_scrubbed_from_text() {
        remember_loaded("pa%ss w0rd!");
        assert_eq!(
            scrub("auth failed for 'pa%ss w0rd!' in postgres://u:pa%25ss%20w0rd%21@h/"),
            "auth failed for '<redacted>' in postgres://u:<redacted>@h/"
        );
        assert_eq!(scrub("nothing here"), "nothing here");
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
