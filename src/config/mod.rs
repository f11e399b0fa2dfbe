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
pub mod daemon;
pub mod database;
pub mod duration;
mod errors;
pub mod jobs;
pub mod keys;
pub mod leaks;
pub mod metrics;
pub mod notifications;
pub mod permissions;
pub mod schedule;
pub mod secret;
pub mod verify;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use daemon::{system_fqdn, system_host_name, DaemonConfig, LogLevel, LogTarget};
pub use database::{is_password_parameter, DatabaseConfig, DatabaseUrl};
pub use duration::HumanDuration;
use errors::{line_col, locate_problem, Collector};
pub use errors::{ConfigError, ConfigErrors};
use jobs::JobSection;
pub use jobs::{JobDefaults, JobSettings, MAX_BATCH_SIZE};
pub use keys::{
    Argon2Config, KeysConfig, ARGON2_MAX_ITERATIONS, ARGON2_MAX_MEMORY_KIB, ARGON2_MAX_PARALLELISM,
    ARGON2_MIN_ITERATIONS, ARGON2_MIN_MEMORY_KIB, MIN_AUDIT_RETENTION_DAYS,
};
pub use notifications::{is_loopback_host, MailTransport, NotificationsConfig, SmtpConfig, SmtpSecurity};
pub use permissions::{CompiledPolicy, PermissionsConfig, RuleProblem};
pub use schedule::Schedule;
pub use secret::{Secret, SecretError, SecretSource};

/// Where the configuration is looked for when neither `--config` nor
/// `KEYWARDEN_CONFIG` names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/keywarden/keywarden.toml";

/// The largest configuration file accepted; anything bigger is a mistake.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A section of the file, checked on its own once read: each problem is a
/// sentence naming its key (`keys.max_keys_per_owner must …`), which is how
/// the collector finds the line it points at. One file per section
/// implements it.
pub(crate) trait Section: Sized + for<'de> serde::Deserialize<'de> {
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What loading checks with knowledge that lives above config: the jobs
/// that exist (the job registry's) and whether the permission rules compile
/// (the policy's). Handed in by the caller, so config imports neither.
pub struct LoadChecks<'a> {
    pub jobs: &'a [JobDefaults],
    /// Compiles the permission rules, or says what is wrong with them.
    pub permission_rules: fn(&PermissionsConfig) -> Result<CompiledPolicy, Vec<RuleProblem>>,
}

impl LoadChecks<'static> {
    /// No jobs (a `[jobs.*]` section is refused) and no check of the
    /// permission rules: for code that needs only the other sections, such
    /// as unit tests of a lower floor.
    pub const SECTIONS_ONLY: LoadChecks<'static> = LoadChecks {
        jobs: &[],
        permission_rules: |_| Ok(CompiledPolicy::default()),
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
    pub metrics: Option<metrics::MetricsConfig>,
    pub verify: Option<verify::VerifyConfig>,
    pub leaks: Option<leaks::LeaksConfig>,
}

/// The sections of one file as they are read, defaults where absent.
#[derive(Default)]
struct Sections {
    daemon: DaemonConfig,
    database: DatabaseConfig,
    keys: KeysConfig,
    notifications: NotificationsConfig,
    permissions: PermissionsConfig,
    acme: Option<acme::AcmeConfig>,
    certificates: Vec<acme::CertificateConfig>,
    monitors: Vec<acme::MonitorConfig>,
    metrics: Option<metrics::MetricsConfig>,
    verify: Option<verify::VerifyConfig>,
    leaks: Option<leaks::LeaksConfig>,
    /// Where the certificate sections are, for problems across them.
    certificates_at: std::ops::Range<usize>,
    jobs: BTreeMap<&'static str, JobSection>,
}

impl Sections {
    /// Reads one top-level section, collecting its problems.
    fn read(
        &mut self,
        errors: &mut Collector<'_>,
        key: Spanned<Cow<'_, str>>,
        value: Spanned<DeValue<'_>>,
        checks: &LoadChecks<'_>,
    ) {
        match key.get_ref().as_ref() {
            "daemon" => errors.checked_into(value, &mut self.daemon),
            "database" => errors.checked_into(value, &mut self.database),
            "keys" => errors.checked_into(value, &mut self.keys),
            "notifications" => errors.checked_into(value, &mut self.notifications),
            "permissions" => self.read_permissions(errors, value, checks),
            "acme" => {
                self.certificates_at = value.span();
                self.acme = errors.section(value);
            }
            "certificates" => {
                self.certificates_at = value.span();
                self.certificates = errors.section(value).unwrap_or_default();
            }
            "monitor" => {
                self.certificates_at = value.span();
                self.monitors = errors.section(value).unwrap_or_default();
            }
            "jobs" => self.read_jobs(errors, value, checks),
            "metrics" => self.metrics = errors.checked(value),
            "verify" => self.verify = errors.checked(value),
            "leaks" => self.leaks = errors.checked(value),
            other => errors.at(
                key.span(),
                format!("unknown section {other:?}; expected one of: daemon, database, keys, notifications, permissions, acme, certificates, monitor, metrics, verify, leaks, jobs"),
            ),
        }
    }

    fn read_permissions(&mut self, errors: &mut Collector<'_>, value: Spanned<DeValue<'_>>, checks: &LoadChecks<'_>) {
        let span = value.span();
        let Some(mut permissions) = errors.checked::<PermissionsConfig>(value) else {
            return;
        };
        // Relative roots are relative to the file's directory.
        let base = errors.file.parent().unwrap_or(Path::new("."));
        for root in &mut permissions.roots {
            if root.is_relative() {
                if let Ok(abs) = std::path::absolute(base.join(&*root)) {
                    *root = abs;
                }
            }
        }
        match (checks.permission_rules)(&permissions) {
            Ok(compiled) => permissions.compiled = compiled,
            Err(problems) => {
                for p in problems {
                    let at = p
                        .rule
                        .and_then(|i| permissions.rules.get(i))
                        .map(|r| r.span())
                        .unwrap_or(span.clone());
                    errors.at(at, p.message);
                }
            }
        }
        self.permissions = permissions;
    }

    fn read_jobs(&mut self, errors: &mut Collector<'_>, value: Spanned<DeValue<'_>>, checks: &LoadChecks<'_>) {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            errors.at(
                span,
                "`jobs` must be a table of job sections, as in [jobs.expire-keys]".into(),
            );
            return;
        };
        for (job_key, job_value) in table {
            let job_name: &str = job_key.get_ref();
            let Some(job) = checks.jobs.iter().find(|j| j.name == job_name) else {
                let names: Vec<&str> = checks.jobs.iter().map(|j| j.name).collect();
                errors.at(
                    job_key.span(),
                    format!("unknown job {job_name:?}; known jobs: {}", names.join(", ")),
                );
                continue;
            };
            if let Some(section) = errors.section::<JobSection>(job_value.clone()) {
                for problem in section.problems(job) {
                    errors.problem(job_value.span(), problem);
                }
                self.jobs.insert(job.name, section);
            }
        }
    }

    /// Rules that span sections: the certificates against `[acme]`, and
    /// the owners of installed files on this machine.
    fn cross_section_problems(&self, errors: &mut Collector<'_>) {
        let at = self.certificates_at.clone();
        for problem in acme::problems(self.acme.as_ref(), &self.certificates, &self.monitors) {
            errors.problem(at.clone(), problem);
        }
        for c in &self.certificates {
            use crate::sys::ids::IdKind;
            for (spec, kind) in [(&c.owner, IdKind::User), (&c.group, IdKind::Group)] {
                if let Some(Err(e)) = spec.as_ref().map(|s| s.resolve(kind)) {
                    errors.problem(at.clone(), format!("certificate {:?}: {e}", c.name));
                }
            }
        }
    }

    /// The configuration, every job given its settings.
    fn into_config(mut self, path: &Path, checks: &LoadChecks<'_>) -> Result<Config, ConfigErrors> {
        let mut jobs = BTreeMap::new();
        for job in checks.jobs {
            let settings = job.settings(self.jobs.remove(job.name)).map_err(|message| {
                ConfigErrors(vec![ConfigError {
                    file: path.to_path_buf(),
                    position: None,
                    message,
                }])
            })?;
            jobs.insert(job.name, settings);
        }
        Ok(Config {
            source: path.to_path_buf(),
            daemon: self.daemon,
            database: self.database,
            jobs,
            keys: self.keys,
            notifications: self.notifications,
            permissions: self.permissions,
            acme: self.acme,
            certificates: self.certificates,
            monitors: self.monitors,
            metrics: self.metrics,
            verify: self.verify,
            leaks: self.leaks,
        })
    }
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
            let instead = r#"`database.password = { credential = "db-password" }` (or `file`/`env`)"#;
            return Err(whole(format!(
                "database.url contains a password but this file is readable by everyone (mode {:04o}); move the password to {instead}",
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
        let mut sections = Sections::default();
        for (key, value) in doc.into_inner() {
            sections.read(&mut errors, key, value, checks);
        }
        sections.cross_section_problems(&mut errors);
        if !errors.errors.is_empty() {
            return Err(ConfigErrors(errors.errors));
        }
        sections.into_config(path, checks)
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
        if let Some(group) = self.verify.as_ref().and_then(|v| v.socket_group.as_deref()) {
            match crate::sys::ids::group_id(group) {
                Ok(Some(_)) => {}
                Ok(None) => out.push(format!("verify.socket_group: no group named {group:?} on this system")),
                Err(e) => out.push(format!("verify.socket_group: cannot look up {group:?}: {e}")),
            }
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
            permission_rules: |_| Ok(CompiledPolicy::default()),
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
