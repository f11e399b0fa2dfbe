//! `[notifications]`: windows, transport (SMTP or files), retries, what
//! owners read.

use std::path::PathBuf;

use serde::Deserialize;

use super::{HumanDuration, SecretSource};

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
}

impl super::Section for NotificationsConfig {
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
