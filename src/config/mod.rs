//! The configuration: a TOML file, read once at start and again on reload.
//!
//! Loading is validate-everything-then-return: every problem found is
//! reported with its file, line and column, so an admin fixes a broken config
//! in one pass. Sections are deserialized one by one so that a mistake in one
//! does not hide mistakes in another. Secrets are only *referenced* here (see
//! [`secret`]); they are read by [`Config::load_secrets`] when the daemon or a
//! command actually needs the database.
//!
//! Imports: sys (NSS lookups of configured owners) only: config is the ground
//! floor. What only the floors above know (the jobs that exist, whether the
//! permission rules compile) comes in as [`LoadChecks`], from
//! `jobs::load_config`.

pub mod acme;
pub mod duration;
pub mod jobs;
pub mod permissions;
pub mod schedule;
pub mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

pub use duration::HumanDuration;
use jobs::JobSection;
pub use jobs::{JobDefaults, JobSettings, MAX_BATCH_SIZE};
pub use permissions::{PermissionsConfig, RuleProblem};
pub use schedule::Schedule;
pub use secret::{Secret, SecretError, SecretSource};

/// Where the configuration is looked for when neither `--config` nor
/// `KEYWARDEN_CONFIG` names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keywarden/keywarden.toml";

/// The largest configuration file accepted; anything bigger is a mistake.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// One problem in a configuration file, with its place when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem is at a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

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

/// `[keys.argon2]`: the cost of hashing a key's secret. OWASP's minimum
/// (m=19456 KiB, t=2, p=1) is the floor; values can only go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Config {
    #[serde(default = "default_argon2_memory")]
    pub memory_kib: u32,
    #[serde(default = "default_argon2_iterations")]
    pub iterations: u32,
    #[serde(default = "default_argon2_parallelism")]
    pub parallelism: u32,
}

pub const ARGON2_MIN_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_MIN_ITERATIONS: u32 = 2;
/// A verify must stay affordable: 1 GiB and 16 passes are far beyond any
/// sensible setting.
pub const ARGON2_MAX_MEMORY_KIB: u32 = 1_048_576;
pub const ARGON2_MAX_ITERATIONS: u32 = 16;
pub const ARGON2_MAX_PARALLELISM: u32 = 16;

fn default_argon2_memory() -> u32 {
    ARGON2_MIN_MEMORY_KIB
}
fn default_argon2_iterations() -> u32 {
    ARGON2_MIN_ITERATIONS
}
fn default_argon2_parallelism() -> u32 {
    1
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: ARGON2_MIN_MEMORY_KIB,
            iterations: ARGON2_MIN_ITERATIONS,
            parallelism: 1,
        }
    }
}

/// `[keys]`: the API-key model's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// First part of every key's prefix (`sk` in `sk_live_v2_…`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Second part (`live` in `sk_live_v2_…`).
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Lifetime of a new key when none is asked for.
    #[serde(default = "default_lifetime")]
    pub default_lifetime: HumanDuration,
    /// Longest lifetime a key may be given.
    #[serde(default = "default_lifetime")]
    pub max_lifetime: HumanDuration,
    /// Active plus rotating keys one owner may hold.
    #[serde(default = "default_max_keys")]
    pub max_keys_per_owner: u32,
    /// How long a rotated key keeps working beside its successor.
    #[serde(default = "default_grace")]
    pub grace_default: HumanDuration,
    #[serde(default = "default_grace_min")]
    pub grace_min: HumanDuration,
    #[serde(default = "default_grace_max")]
    pub grace_max: HumanDuration,
    /// How long audit events and job runs are kept (90 days at least).
    #[serde(default = "default_retention")]
    pub audit_retention: HumanDuration,
    #[serde(default)]
    pub argon2: Argon2Config,
}

pub const MIN_AUDIT_RETENTION_DAYS: u64 = 90;

fn default_namespace() -> String {
    "sk".into()
}
fn default_environment() -> String {
    "live".into()
}
fn default_lifetime() -> HumanDuration {
    HumanDuration::from_secs(90 * 86_400)
}
fn default_max_keys() -> u32 {
    10
}
fn default_grace() -> HumanDuration {
    HumanDuration::from_secs(48 * 3_600)
}
fn default_grace_min() -> HumanDuration {
    HumanDuration::from_secs(3_600)
}
fn default_grace_max() -> HumanDuration {
    HumanDuration::from_secs(7 * 86_400)
}
fn default_retention() -> HumanDuration {
    HumanDuration::from_secs(365 * 86_400)
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            namespace: default_namespace(),
            environment: default_environment(),
            default_lifetime: default_lifetime(),
            max_lifetime: default_lifetime(),
            max_keys_per_owner: default_max_keys(),
            grace_default: default_grace(),
            grace_min: default_grace_min(),
            grace_max: default_grace_max(),
            audit_retention: default_retention(),
            argon2: Argon2Config::default(),
        }
    }
}

impl KeysConfig {
    /// Cross-field rules; each message names the keys involved.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let label_ok =
            |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !label_ok(&self.namespace) {
            out.push(format!(
                "keys.namespace must be 1 to 16 lowercase letters or digits, found {:?}",
                self.namespace
            ));
        }
        if !label_ok(&self.environment) {
            out.push(format!(
                "keys.environment must be 1 to 16 lowercase letters or digits, found {:?}",
                self.environment
            ));
        }
        if self.default_lifetime.as_duration().is_zero() || self.default_lifetime > self.max_lifetime {
            out.push(format!(
                "keys.default_lifetime ({}) must be above zero and at most keys.max_lifetime ({})",
                self.default_lifetime, self.max_lifetime
            ));
        }
        if self.max_keys_per_owner == 0 {
            out.push("keys.max_keys_per_owner must be at least 1".into());
        }
        if !(self.grace_min <= self.grace_default && self.grace_default <= self.grace_max) {
            out.push(format!(
                "keys.grace_min ({}) <= keys.grace_default ({}) <= keys.grace_max ({}) does not hold",
                self.grace_min, self.grace_default, self.grace_max
            ));
        }
        if self.audit_retention.as_duration().as_secs() < MIN_AUDIT_RETENTION_DAYS * 86_400 {
            out.push(format!(
                "keys.audit_retention must be at least {MIN_AUDIT_RETENTION_DAYS}d (audit trails are kept 90 days or more), found {}",
                self.audit_retention
            ));
        }
        let a = self.argon2;
        if !(ARGON2_MIN_MEMORY_KIB..=ARGON2_MAX_MEMORY_KIB).contains(&a.memory_kib) {
            out.push(format!(
                "keys.argon2.memory_kib must be between {ARGON2_MIN_MEMORY_KIB} and {ARGON2_MAX_MEMORY_KIB}, found {}",
                a.memory_kib
            ));
        }
        if !(ARGON2_MIN_ITERATIONS..=ARGON2_MAX_ITERATIONS).contains(&a.iterations) {
            out.push(format!(
                "keys.argon2.iterations must be between {ARGON2_MIN_ITERATIONS} and {ARGON2_MAX_ITERATIONS}, found {}",
                a.iterations
            ));
        }
        if !(1..=ARGON2_MAX_PARALLELISM).contains(&a.parallelism) {
            out.push(format!(
                "keys.argon2.parallelism must be between 1 and {ARGON2_MAX_PARALLELISM}, found {}",
                a.parallelism
            ));
        }
        out
    }
}

/// How mail leaves: `file` writes each message as an `.eml` file into a
/// directory (the quickstart's default, no mail server needed); `smtp`
/// delivers to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    File,
    Smtp,
}

/// How the SMTP connection is protected. `none` is accepted only for a
/// server on a loopback address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    None,
}

/// `[notifications.smtp]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_smtp_security")]
    pub security: SmtpSecurity,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// An extra CA certificate (PEM) trusted for this server, for private CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_smtp_timeout")]
    pub timeout: HumanDuration,
    /// Connections kept open while a run delivers.
    #[serde(default = "default_smtp_pool")]
    pub pool_size: u32,
}

fn default_smtp_security() -> SmtpSecurity {
    SmtpSecurity::Starttls
}
fn default_smtp_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_smtp_pool() -> u32 {
    4
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.security {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        })
    }
}

/// True for `localhost` and loopback addresses.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `[notifications]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// The fully qualified name keywarden gives in EHLO and in Message-IDs
    /// (mail servers refuse a bare `vm`); by default `daemon.host_name` when
    /// it is qualified, else the system's fully qualified name.
    #[serde(default)]
    pub hello_name: Option<String>,
    /// Warning windows before expiry; only the tightest due one is sent.
    #[serde(default = "default_windows")]
    pub windows: Vec<HumanDuration>,
    /// Send a notice once a key has expired.
    #[serde(default = "default_true")]
    pub notify_expired: bool,
    /// Who receives certificate, drift and job-failure alerts.
    #[serde(default)]
    pub admin_emails: Vec<String>,
    /// The sender, as in `keywarden <keywarden@example.com>`.
    #[serde(default = "default_from")]
    pub from: String,
    /// Where owners manage their keys, shown in the email when set.
    #[serde(default)]
    pub action_url: Option<String>,
    /// What owners should do about an expiring key, in the organisation's
    /// words ("Rotate it in the developer portal…"); shown in the email.
    #[serde(default)]
    pub instructions: Option<String>,
    /// The name owners know this installation by, in the footer ("You
    /// receive this because you own API keys on &lt;instance&gt;"); by default the
    /// host name keywarden greets mail servers with.
    #[serde(default)]
    pub instance_name: Option<String>,
    /// Who owners can write to about their keys (the sender's replies are
    /// not read), in the footer.
    #[serde(default)]
    pub contact: Option<String>,
    /// A directory whose `key_expiry.txt` / `key_expiry.html` override the
    /// built-in templates.
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
    /// Attempts before a message is marked failed.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; each further retry doubles it (with jitter), up to
    /// `retry_max`.
    #[serde(default = "default_retry_base")]
    pub retry_base: HumanDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: HumanDuration,
    #[serde(default = "default_transport")]
    pub transport: MailTransport,
    /// Where the `file` transport writes `.eml` files.
    #[serde(default = "default_file_dir")]
    pub file_dir: PathBuf,
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
}

fn default_true() -> bool {
    true
}
fn default_windows() -> Vec<HumanDuration> {
    vec![
        HumanDuration::from_secs(30 * 86_400),
        HumanDuration::from_secs(7 * 86_400),
        HumanDuration::from_secs(86_400),
    ]
}
fn default_from() -> String {
    "keywarden <keywarden@localhost>".into()
}
fn default_max_attempts() -> u32 {
    8
}
fn default_retry_base() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_retry_max() -> HumanDuration {
    HumanDuration::from_secs(6 * 3600)
}
fn default_transport() -> MailTransport {
    MailTransport::File
}
fn default_file_dir() -> PathBuf {
    PathBuf::from("/var/lib/keywarden/outbox")
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            hello_name: None,
            windows: default_windows(),
            notify_expired: true,
            admin_emails: Vec::new(),
            from: default_from(),
            action_url: None,
            instructions: None,
            instance_name: None,
            contact: None,
            templates_dir: None,
            max_attempts: default_max_attempts(),
            retry_base: default_retry_base(),
            retry_max: default_retry_max(),
            transport: default_transport(),
            file_dir: default_file_dir(),
            smtp: None,
        }
    }
}

impl NotificationsConfig {
    /// The windows, widest first, without duplicates.
    pub fn sorted_windows(&self) -> Vec<HumanDuration> {
        let mut w = self.windows.clone();
        w.sort_by(|a, b| b.cmp(a));
        w.dedup();
        w
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.windows.is_empty() && !self.notify_expired {
            out.push("notifications.windows is empty and notify_expired is false: nothing would ever be sent; disable the notify-expiry job instead".into());
        }
        for w in &self.windows {
            if w.as_duration().is_zero() || w.as_duration().as_secs() > 366 * 86_400 {
                out.push(format!(
                    "notifications.windows: {w} must be above zero and at most 366d"
                ));
            }
        }
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            out.push(format!(
                "notifications.from {:?} is not a mailbox such as \"keywarden <keywarden@example.com>\"",
                self.from
            ));
        }
        for a in &self.admin_emails {
            if a.parse::<lettre::Address>().is_err() {
                out.push(format!("notifications.admin_emails: {a:?} is not an email address"));
            }
        }
        if let Some(url) = &self.action_url {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                out.push(format!("notifications.action_url {url:?} must be an http(s) URL"));
            }
        }
        if let Some(text) = &self.instructions {
            if text.trim().is_empty() || text.chars().count() > 1000 {
                out.push("notifications.instructions must be between 1 and 1000 characters".into());
            } else if text.chars().any(|c| c.is_control() && c != '\n') {
                out.push("notifications.instructions may contain line breaks but no other control characters".into());
            }
        }
        if let Some(name) = &self.instance_name {
            if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
                out.push("notifications.instance_name must be 1 to 100 characters on one line".into());
            }
        }
        if let Some(a) = &self.contact {
            if a.parse::<lettre::Address>().is_err() {
                out.push(format!(
                    "notifications.contact {:?} is not an email address",
                    a.chars().take(80).collect::<String>()
                ));
            }
        }
        if let Some(name) = &self.hello_name {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|l| {
                    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                out.push(format!(
                    "notifications.hello_name {:?} is not a host name (letters, digits, '-' and dots)",
                    name.chars().take(80).collect::<String>()
                ));
            }
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            out.push("notifications.max_attempts must be between 1 and 100".into());
        }
        if self.retry_base.as_duration().is_zero() || self.retry_base > self.retry_max {
            out.push("notifications.retry_base must be above zero and at most notifications.retry_max".into());
        }
        match (self.transport, &self.smtp) {
            (MailTransport::Smtp, None) => {
                out.push("notifications.transport = \"smtp\" needs a [notifications.smtp] section".into())
            }
            (_, Some(smtp)) => {
                if smtp.host.trim().is_empty() {
                    out.push("notifications.smtp.host is empty".into());
                }
                if smtp.security == SmtpSecurity::None && !is_loopback_host(&smtp.host) {
                    out.push(format!(
                        "notifications.smtp.security = \"none\" is only allowed for a loopback server, not {:?}; use \"starttls\" or \"tls\"",
                        smtp.host
                    ));
                }
                if smtp.password.is_some() && smtp.username.is_none() {
                    out.push("notifications.smtp.password is set without notifications.smtp.username".into());
                }
                if let Some(pw) = &smtp.password {
                    if let Err(e) = pw.validate_shape() {
                        out.push(format!("notifications.smtp.password: {e}"));
                    }
                }
                if smtp.pool_size == 0 || smtp.pool_size > 64 {
                    out.push("notifications.smtp.pool_size must be between 1 and 64".into());
                }
            }
            _ => {}
        }
        out
    }
}

/// What loading checks with knowledge that lives above config: the jobs
/// that exist (the job registry's) and whether the permission rules compile
/// (the policy's). Handed in by the caller, so config imports neither.
pub struct LoadChecks<'a> {
    pub jobs: &'a [JobDefaults],
    pub permission_rules: fn(&PermissionsConfig) -> Result<(), Vec<RuleProblem>>,
}

impl LoadChecks<'static> {
    /// No jobs (a `[jobs.*]` section is refused) and no check of the
    /// permission rules: for code that needs only the other sections, such
    /// as unit tests of a lower floor.
    pub const SECTIONS_ONLY: LoadChecks<'static> = LoadChecks {
        jobs: &[],
        permission_rules: |_| Ok(()),
    };
}

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from (reloads read the same file again).
    pub source: PathBuf,
    pub daemon: DaemonConfig,
    pub database: DatabaseConfig,
    /// One entry for every job the loader was told of ([`LoadChecks::jobs`]).
    pub jobs: BTreeMap<&'static str, JobSettings>,
    pub keys: KeysConfig,
    pub notifications: NotificationsConfig,
    pub permissions: PermissionsConfig,
    pub acme: Option<acme::AcmeConfig>,
    pub certificates: Vec<acme::CertificateConfig>,
    pub monitors: Vec<acme::MonitorConfig>,
}

/// Secrets the configuration refers to, read at the moment they are needed.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub database_password: Option<Secret>,
    pub smtp_password: Option<Secret>,
}

impl Config {
    /// Finds the configuration file: `--config`, else `KEYWARDEN_CONFIG`,
    /// else [`DEFAULT_CONFIG_PATH`].
    pub fn locate(cli: Option<&Path>) -> PathBuf {
        if let Some(p) = cli {
            return p.to_path_buf();
        }
        match std::env::var_os("KEYWARDEN_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Reads and validates a configuration file (secrets are not read),
    /// with the checks that belong to the floors above (see [`LoadChecks`];
    /// `keywarden::jobs::load_config` hands in the registry's).
    pub fn load_with(path: &Path, checks: &LoadChecks<'_>) -> Result<Config, ConfigErrors> {
        let whole = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                position: None,
                message,
            }])
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read configuration: {e}")))?;
        if !meta.is_file() {
            return Err(whole("not a regular file".into()));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(whole(format!("configuration is larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let bytes = std::fs::read(path).map_err(|e| whole(format!("cannot read configuration: {e}")))?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let bytes = e.into_bytes();
                let prefix = String::from_utf8_lossy(&bytes[..valid]);
                return Err(ConfigErrors(vec![ConfigError {
                    file: path.to_path_buf(),
                    position: Some(line_col(&prefix, prefix.len())),
                    message: "the file is not valid UTF-8 here".into(),
                }]));
            }
        };
        let config = Self::from_toml(path, &text, checks)?;
        // A password written into a world-readable file is not a secret.
        if config.database.url.has_inline_password() && meta.mode() & 0o004 != 0 {
            return Err(whole(format!(
                "database.url contains a password but this file is readable by everyone (mode {:04o}); \
                 move the password to `database.password = {{ credential = \"db-password\" }}` (or `file`/`env`)",
                meta.mode() & 0o7777
            )));
        }
        Ok(config)
    }

    /// Validates configuration text; `path` is only used in messages.
    pub fn from_toml(path: &Path, text: &str, checks: &LoadChecks<'_>) -> Result<Config, ConfigErrors> {
        let mut errors = Collector {
            file: path,
            text,
            errors: Vec::new(),
        };
        let (doc, syntax_errors) = DeTable::parse_recoverable(text);
        if !syntax_errors.is_empty() {
            for e in syntax_errors {
                errors.toml(&e);
            }
            return Err(ConfigErrors(errors.errors));
        }

        let mut daemon = DaemonConfig::default();
        let mut database = DatabaseConfig::default();
        let mut keys = KeysConfig::default();
        let mut notifications = NotificationsConfig::default();
        let mut permissions = PermissionsConfig::default();
        let mut acme_section: Option<acme::AcmeConfig> = None;
        let mut certificates: Vec<acme::CertificateConfig> = Vec::new();
        let mut monitors: Vec<acme::MonitorConfig> = Vec::new();
        let mut cert_span = 0..0;
        let mut job_sections: BTreeMap<&'static str, JobSection> = BTreeMap::new();
        let known_job = |name: &str| checks.jobs.iter().find(|j| j.name == name);

        for (key, value) in doc.into_inner() {
            let name: &str = key.get_ref();
            match name {
                "daemon" => {
                    if let Some(v) = errors.section::<DaemonConfig>(value) {
                        daemon = v;
                    }
                }
                "database" => {
                    let span = value.span();
                    if let Some(v) = errors.section::<DatabaseConfig>(value) {
                        if let Some(pw) = &v.password {
                            if let Err(e) = pw.validate_shape() {
                                errors.problem(span.clone(), format!("database.password: {e}"));
                            }
                        }
                        if v.password.is_some() && v.url.has_inline_password() {
                            errors.problem(
                                span,
                                "database.password is set and database.url also carries a password; keep one".into(),
                            );
                        }
                        database = v;
                    }
                }
                "keys" => {
                    let span = value.span();
                    if let Some(v) = errors.section::<KeysConfig>(value) {
                        for problem in v.problems() {
                            errors.problem(span.clone(), problem);
                        }
                        keys = v;
                    }
                }
                "notifications" => {
                    let span = value.span();
                    if let Some(v) = errors.section::<NotificationsConfig>(value) {
                        for problem in v.problems() {
                            errors.problem(span.clone(), problem);
                        }
                        notifications = v;
                    }
                }
                "permissions" => {
                    let span = value.span();
                    if let Some(mut v) = errors.section::<PermissionsConfig>(value) {
                        // Relative roots are relative to this file's directory.
                        let base = path.parent().unwrap_or(Path::new("."));
                        for root in &mut v.roots {
                            if root.is_relative() {
                                if let Ok(abs) = std::path::absolute(base.join(&*root)) {
                                    *root = abs;
                                }
                            }
                        }
                        if v.alert_interval.as_duration().as_secs() < 60 {
                            errors.problem(span.clone(), "permissions.alert_interval must be at least 1m".into());
                        }
                        if v.fallback_rescan.as_duration().as_secs() < 10 {
                            errors.problem(span.clone(), "permissions.fallback_rescan must be at least 10s".into());
                        }
                        if let Err(problems) = (checks.permission_rules)(&v) {
                            for p in problems {
                                let at = p.rule.and_then(|i| v.rules.get(i)).map(|r| r.span()).unwrap_or(span.clone());
                                errors.at(at, p.message);
                            }
                        }
                        permissions = v;
                    }
                }
                "acme" => {
                    cert_span = value.span();
                    acme_section = errors.section::<acme::AcmeConfig>(value);
                }
                "certificates" => {
                    cert_span = value.span();
                    certificates = errors.section::<Vec<acme::CertificateConfig>>(value).unwrap_or_default();
                }
                "monitor" => {
                    cert_span = value.span();
                    monitors = errors.section::<Vec<acme::MonitorConfig>>(value).unwrap_or_default();
                }
                "jobs" => {
                    let span = value.span();
                    let DeValue::Table(table) = value.into_inner() else {
                        errors.at(
                            span,
                            "`jobs` must be a table of job sections, as in [jobs.expire-keys]".into(),
                        );
                        continue;
                    };
                    for (job_key, job_value) in table {
                        let job_name: &str = job_key.get_ref();
                        match known_job(job_name) {
                            Some(job) => {
                                if let Some(section) = errors.section::<JobSection>(job_value.clone()) {
                                    for problem in section.problems(job) {
                                        errors.problem(job_value.span(), problem);
                                    }
                                    job_sections.insert(job.name, section);
                                }
                            }
                            None => {
                                let names: Vec<&str> = checks.jobs.iter().map(|j| j.name).collect();
                                errors.at(
                                    job_key.span(),
                                    format!("unknown job {job_name:?}; known jobs: {}", names.join(", ")),
                                )
                            }
                        }
                    }
                }
                other => errors.at(
                    key.span(),
                    format!("unknown section {other:?}; expected one of: daemon, database, keys, notifications, permissions, acme, certificates, monitor, jobs"),
                ),
            }
        }

        for problem in acme::problems(acme_section.as_ref(), &certificates, &monitors) {
            errors.problem(cert_span.clone(), problem);
        }
        for c in &certificates {
            use crate::sys::ids::IdKind;
            for (spec, kind) in [(&c.owner, IdKind::User), (&c.group, IdKind::Group)] {
                if let Some(Err(e)) = spec.as_ref().map(|s| s.resolve(kind)) {
                    errors.problem(cert_span.clone(), format!("certificate {:?}: {e}", c.name));
                }
            }
        }

        if let Some(h) = &daemon.host_name {
            if h.trim().is_empty() || h.len() > 253 || h.chars().any(char::is_control) {
                let message =
                    "daemon.host_name must be a non-empty name of at most 253 printable characters".to_string();
                match locate_problem(text, &message) {
                    Some(at) => errors.at(at, message),
                    None => errors.errors.push(ConfigError {
                        file: path.to_path_buf(),
                        position: None,
                        message,
                    }),
                }
            }
        }

        if !errors.errors.is_empty() {
            return Err(ConfigErrors(errors.errors));
        }

        let mut jobs = BTreeMap::new();
        for job in checks.jobs {
            match job.settings(job_sections.remove(job.name)) {
                Ok(settings) => {
                    jobs.insert(job.name, settings);
                }
                Err(message) => {
                    return Err(ConfigErrors(vec![ConfigError {
                        file: path.to_path_buf(),
                        position: None,
                        message,
                    }]))
                }
            }
        }

        Ok(Config {
            source: path.to_path_buf(),
            daemon,
            database,
            jobs,
            keys,
            notifications,
            permissions,
            acme: acme_section,
            certificates,
            monitors,
        })
    }

    /// What can be checked on this machine without reading any secret:
    /// every secret file exists, is a regular file and is not readable by
    /// everyone, and an SQLite database's directory exists. `check-config`
    /// reports these, so it passes only what `run` accepts; `run` stops on
    /// the SQLite directory (exit 78) instead of retrying forever.
    pub fn check_local(&self) -> Vec<ConfigError> {
        let problems = self.local_problems();
        // The file is read again only to place what was found.
        let text = if problems.is_empty() {
            String::new()
        } else {
            std::fs::read_to_string(&self.source).unwrap_or_default()
        };
        problems
            .into_iter()
            .map(|message| ConfigError {
                file: self.source.clone(),
                position: locate_problem(&text, &message).map(|at| line_col(&text, at.start)),
                message,
            })
            .collect()
    }

    fn local_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut sources: Vec<(&str, &SecretSource)> = Vec::new();
        if let Some(pw) = &self.database.password {
            sources.push(("database.password", pw));
        }
        if let Some(pw) = self.notifications.smtp.as_ref().and_then(|s| s.password.as_ref()) {
            sources.push(("notifications.smtp.password", pw));
        }
        if let Some(eab) = self.acme.as_ref().and_then(|a| a.eab.as_ref()) {
            sources.push(("acme.eab.hmac_key", &eab.hmac_key));
        }
        for (key, src) in sources {
            if let Err(e) = src.check_without_reading() {
                out.push(format!("{key}: {e}"));
            }
        }
        if let Some(e) = self.sqlite_directory_problem() {
            out.push(e);
        }
        out
    }

    /// Why the SQLite file cannot be created or opened where configured.
    pub fn sqlite_directory_problem(&self) -> Option<String> {
        let DatabaseUrl::Sqlite(path) = &self.database.url else {
            return None;
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some(format!("database.url: {} is not a directory", dir.display())),
            Err(e) => Some(format!(
                "database.url: the directory {} of the SQLite database cannot be used: {e} (create it, or point database.url elsewhere)",
                dir.display()
            )),
        }
    }

    /// Reads the secrets this configuration refers to.
    pub fn load_secrets(&self) -> Result<Secrets, SecretError> {
        let database_password = match &self.database.password {
            Some(src) => Some(src.load()?),
            None => None,
        };
        let smtp_password = match self.notifications.smtp.as_ref().and_then(|s| s.password.as_ref()) {
            Some(src) => Some(src.load()?),
            None => None,
        };
        Ok(Secrets {
            database_password,
            smtp_password,
        })
    }

    /// The host name recorded with job runs.
    pub fn host_name(&self) -> String {
        self.daemon.host_name.clone().unwrap_or_else(system_host_name)
    }

    pub fn job(&self, name: &str) -> Option<&JobSettings> {
        self.jobs.get(name)
    }
}

/// The kernel's host name (what `uname -n` prints), through `gethostname`
/// so it works where /proc/sys is hidden (`ProcSubset=pid` in the unit).
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

impl Config {
    /// The name for EHLO and Message-IDs, and whether it is fully
    /// qualified: `notifications.hello_name`, else a qualified
    /// `daemon.host_name`, else the system's FQDN, else the short name.
    pub fn mail_host_name(&self) -> (String, bool) {
        if let Some(name) = &self.notifications.hello_name {
            return (name.clone(), name.contains('.'));
        }
        if let Some(name) = self.daemon.host_name.as_ref().filter(|n| n.contains('.')) {
            return (name.clone(), true);
        }
        match system_fqdn() {
            Some(fqdn) => (fqdn, true),
            None => (self.host_name(), false),
        }
    }
}

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

/// Gathers errors with their places while a file is checked.
struct Collector<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            message: cut(message),
        });
    }

    /// A cross-field problem: placed at the key its message starts with
    /// (`notifications.smtp.pool_size must be …`, or `certificate "name": …`
    /// for that certificate's entry), else at `fallback`.
    fn problem(&mut self, fallback: std::ops::Range<usize>, message: String) {
        let at = locate_problem(self.text, &message).unwrap_or(fallback);
        self.at(at, message);
    }

    fn toml(&mut self, e: &toml::de::Error) {
        let mut message = cut(e.message().trim().to_string());
        // Name the key a secret source was expected for (the message itself
        // never carries the value).
        if message.starts_with(secret::SECRET_FORMS) {
            if let Some(key) = e.span().and_then(|s| key_on_line(self.text, s.start)) {
                message = format!("{key}: {message}");
            }
        }
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: e.span().map(|s| line_col(self.text, s.start)),
            message,
        });
    }

    /// Deserializes one section, recording its error (with place) if any.
    fn section<T: for<'de> Deserialize<'de>>(&mut self, value: Spanned<DeValue<'_>>) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml(&e);
                None
            }
        }
    }
}

/// Longest message kept whole: a 900 KB value quoted by a parser error is
/// cut, and says so.
const MAX_MESSAGE_CHARS: usize = 300;

fn cut(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let kept: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    format!(
        "{kept}… ({} more characters cut)",
        message.chars().count() - MAX_MESSAGE_CHARS
    )
}

/// Where the key a problem message names is written.
fn locate_problem(text: &str, message: &str) -> Option<std::ops::Range<usize>> {
    for (prefix, array) in [("certificate \"", "certificates"), ("monitor \"", "monitor")] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (name, after) = rest.split_once("\": ").unwrap_or((rest.split('"').next()?, ""));
            // "certificate \"web\": deploy_hook must …" points at deploy_hook.
            let key = after
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches([':', ',']);
            return entry_name_span(text, array, name, key);
        }
    }
    let first = message.split_whitespace().next()?;
    let dotted = first.trim_end_matches([':', ',', ';']);
    let plausible = dotted.contains('.')
        && dotted
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !plausible {
        return None;
    }
    key_span(text, dotted)
}

/// The span of the value of `dotted` (`notifications.smtp.pool_size`), or
/// of the deepest table on that path that is written.
fn key_span(text: &str, dotted: &str) -> Option<std::ops::Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for part in dotted.split('.') {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref() == part)?;
        found = Some(if matches!(value.get_ref(), DeValue::Table(_)) {
            key.span()
        } else {
            value.span()
        });
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found
}

/// In the `[[array]]` entry named `name`: the span of `key`'s value when
/// the entry has that key, else of its `name = "…"`.
fn entry_name_span(text: &str, array: &str, name: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let (_, entries) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == array)?;
    let DeValue::Array(entries) = entries.get_ref() else {
        return None;
    };
    entries.iter().find_map(|entry| {
        let DeValue::Table(t) = entry.get_ref() else {
            return None;
        };
        let (_, v) = t.iter().find(|(k, _)| k.get_ref() == "name")?;
        if !matches!(v.get_ref(), DeValue::String(s) if s == name) {
            return None;
        }
        let named = t.iter().find(|(k, _)| !key.is_empty() && k.get_ref() == key);
        Some(named.map(|(_, value)| value.span()).unwrap_or_else(|| v.span()))
    })
}

/// The key written before `=` on the line holding `offset`.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let line_start = text.get(..offset)?.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text.get(line_start..offset)?;
    let key = line.split('=').next()?.trim().trim_start_matches('{').trim();
    let key = key.rsplit([',', '{']).next()?.trim();
    (!key.is_empty() && key.len() <= 80 && !key.contains(char::is_whitespace)).then(|| key.to_string())
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut cut = offset;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &text[..cut];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs as the registry describes them (config cannot see it).
    const JOBS: &[JobDefaults] = &[
        JobDefaults {
            name: "expire-keys",
            default_schedule: "*/5 * * * *",
            batched: true,
            default_batch_size: 1000,
        },
        JobDefaults {
            name: "notify-expiry",
            default_schedule: "*/15 * * * *",
            batched: false,
            default_batch_size: 500,
        },
        JobDefaults {
            name: "watch-perms",
            default_schedule: "*/10 * * * *",
            batched: false,
            default_batch_size: 1000,
        },
    ];

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let checks = LoadChecks {
            jobs: JOBS,
            permission_rules: |_| Ok(()),
        };
        Config::from_toml(Path::new("/etc/keywarden/keywarden.toml"), text, &checks)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.database.url.backend_name(), "sqlite");
        assert_eq!(c.daemon.shutdown_timeout.as_duration().as_secs(), 30);
        let expire = c.job("expire-keys").unwrap();
        assert!(expire.enabled);
        assert_eq!(expire.schedule.six_fields(), "0 */5 * * * *");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse("[daemon]\nlog_level = \"info\"\nshutdown_timeout = \"30 parsecs\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/keywarden/keywarden.toml:3:20: "), "{text}");
        assert!(text.contains("parsecs"), "{text}");
    }

    #[test]
    fn every_section_reports_its_error() {
        let err = parse(
            "[daemon]\nlog_levle = \"info\"\n\n[database]\nurl = \"mysql://x\"\n\n[jobs.expire-keys]\nschedule = \"every day\"\n\n[jobs.nope]\n\n[extra]\n",
        )
        .unwrap_err();
        let lines: Vec<String> = err.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(
            lines[0].contains(":2:1:") && lines[0].contains("log_levle"),
            "{lines:#?}"
        );
        assert!(lines[1].contains(":5:7:") && lines[1].contains("mysql"), "{lines:#?}");
        assert!(
            lines.iter().any(|l| l.contains(":8:12:") && l.contains("cron")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains(":10:7:") && l.contains("unknown job")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(":12:2:") && l.contains("unknown section")),
            "{lines:#?}"
        );
    }

    #[test]
    fn syntax_errors_have_places() {
        let err = parse("[daemon]\nlog_level = info\n").unwrap_err();
        assert!(err.to_string().contains(":2:13:"), "{err}");
    }

    #[test]
    fn database_url_is_redacted_in_display() {
        let url = DatabaseUrl::parse("postgres://kw:hunter2@db.example/kw").unwrap();
        assert!(!url.to_string().contains("hunter2"));
        assert!(url.has_inline_password());
        // A password in the query is a password too.
        let url = DatabaseUrl::parse("postgres://kw@db.example/kw?sslmode=require&password=hunter2").unwrap();
        assert!(!url.to_string().contains("hunter2"), "{url}");
        assert!(url.to_string().contains("sslmode=require"), "{url}");
        assert!(url.has_inline_password());
        let twice =
            parse("[database]\nurl = \"postgres://kw@db/kw?password=x\"\npassword = { env = \"P\" }\n").unwrap_err();
        assert!(twice.to_string().contains("keep one"), "{twice}");
    }

    #[test]
    fn cross_field_errors_point_at_their_key_and_long_values_are_cut() {
        let err = parse("[notifications]\nfrom = \"a@example.com\"\nmax_attempts = 0\n").unwrap_err();
        assert!(err.to_string().contains(":3:16: notifications.max_attempts"), "{err}");
        let huge = format!("[daemon]\nlog_level = \"{}\"\n", "x".repeat(100_000));
        let err = parse(&huge).unwrap_err().to_string();
        assert!(
            err.len() < 1000 && err.contains("characters cut"),
            "{}",
            &err[..200.min(err.len())]
        );
    }

    #[test]
    fn batch_size_bounds() {
        let err = parse("[jobs.expire-keys]\nbatch_size = 0\n").unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }
}
