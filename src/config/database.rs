//! `[database]`: the URL (PostgreSQL or SQLite), its password, timeouts.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::{HumanDuration, SecretSource};

/// A database location, chosen by the URL scheme.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://user@host:port/dbname?sslmode=...`
    Postgres(url::Url),
    /// `sqlite:///absolute/path.db` or `sqlite://relative/path.db` (relative to
    /// the working directory).
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("a sqlite URL needs a path, as in \"sqlite:///var/lib/keywarden/keywarden.db\"".into());
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        let url = url::Url::parse(text)
            .map_err(|e| format!("not a database URL ({e}); expected \"postgres://…\" or \"sqlite://…\""))?;
        match url.scheme() {
            "postgres" | "postgresql" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(
                        "a postgres URL needs a host, as in \"postgres://keywarden@localhost/keywarden\"".into(),
                    );
                }
                Ok(DatabaseUrl::Postgres(url))
            }
            other => Err(format!(
                "unsupported database scheme {other:?}; expected \"postgres://…\" or \"sqlite://…\""
            )),
        }
    }

    /// True when a password is written into the URL itself, as
    /// `user:password@` or as a `password=` (or `sslpassword=`) parameter.
    pub fn has_inline_password(&self) -> bool {
        matches!(self, DatabaseUrl::Postgres(u)
            if u.password().is_some() || u.query_pairs().any(|(k, _)| is_password_parameter(&k)))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgres",
            DatabaseUrl::Sqlite(_) => "sqlite",
        }
    }
}

/// Query parameters of a PostgreSQL URL that carry a password.
pub fn is_password_parameter(key: &str) -> bool {
    matches!(key, "password" | "sslpassword")
}

/// Shows the URL without any password, so it is safe in logs.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Postgres(u) => {
                let mut shown = u.clone();
                if shown.password().is_some() {
                    let _ = shown.set_password(Some("redacted"));
                }
                if u.query_pairs().any(|(k, _)| is_password_parameter(&k)) {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if is_password_parameter(&k) {
                                "redacted".into()
                            } else {
                                v.into_owned()
                            };
                            (k.into_owned(), v)
                        })
                        .collect();
                    shown.query_pairs_mut().clear().extend_pairs(pairs);
                }
                write!(f, "{shown}")
            }
            DatabaseUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DatabaseUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_database_url")]
    pub url: DatabaseUrl,
    /// The PostgreSQL password, from a file, credential or environment variable.
    #[serde(default)]
    pub password: Option<SecretSource>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How long SQLite waits for another writer before giving up.
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout: HumanDuration,
}

fn default_database_url() -> DatabaseUrl {
    DatabaseUrl::Sqlite(PathBuf::from("/var/lib/keywarden/keywarden.db"))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_busy_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            password: None,
            connect_timeout: default_connect_timeout(),
            busy_timeout: default_busy_timeout(),
        }
    }
}

impl super::Section for DatabaseConfig {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(pw) = &self.password {
            if let Err(e) = pw.validate_shape() {
                out.push(format!("database.password: {e}"));
            }
            if self.url.has_inline_password() {
                out.push("database.password is set and database.url also carries a password; keep one".into());
            }
        }
        out
    }
}
