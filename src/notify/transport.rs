//! Where messages go: a directory of `.eml` files, or an SMTP server over
//! implicit TLS, STARTTLS (required, the default) or, for a loopback server
//! only, plain text.

use std::os::unix::fs::DirBuilderExt;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{Message, SmtpTransport, Transport};

use crate::config::{MailTransport, NotificationsConfig, SmtpSecurity};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create the mail directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("cannot read the SMTP CA file {path}: {source}")]
    Ca { path: String, source: std::io::Error },
    #[error("SMTP TLS setup: {0}")]
    Tls(String),
    #[error("SMTP password: {0}")]
    Secret(#[from] crate::config::SecretError),
    #[error("notifications.transport is smtp but [notifications.smtp] is missing")]
    NoSmtp,
}

pub struct Mailer {
    kind: MailerKind,
    /// The fully qualified name given in EHLO and in Message-IDs.
    hello_name: String,
}

enum MailerKind {
    /// A directory of `.eml` files, each created 0600 (they name owners and
    /// keys) and renamed into place whole.
    File(std::path::PathBuf),
    Smtp {
        transport: Box<SmtpTransport>,
        connections: usize,
    },
}

impl Mailer {
    /// Builds the configured transport, greeting servers as `hello_name`
    /// (see [`crate::config::Config::mail_host_name`]); reads the SMTP
    /// password now, so a rotated password file is picked up at the next run.
    pub fn from_config(cfg: &NotificationsConfig, hello_name: &str) -> Result<Mailer, TransportError> {
        let kind = Self::kind(cfg, hello_name)?;
        Ok(Mailer {
            kind,
            hello_name: hello_name.to_string(),
        })
    }

    /// The name in EHLO and after the `@` of Message-IDs.
    pub fn hello_name(&self) -> &str {
        &self.hello_name
    }

    fn kind(cfg: &NotificationsConfig, hello_name: &str) -> Result<MailerKind, TransportError> {
        match cfg.transport {
            MailTransport::File => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(&cfg.file_dir)
                    .map_err(|source| TransportError::Dir {
                        path: cfg.file_dir.display().to_string(),
                        source,
                    })?;
                Ok(MailerKind::File(cfg.file_dir.clone()))
            }
            MailTransport::Smtp => {
                let smtp = cfg.smtp.as_ref().ok_or(TransportError::NoSmtp)?;
                let mut tls = TlsParameters::builder(smtp.host.clone());
                if let Some(ca) = &smtp.ca_file {
                    let pem = std::fs::read(ca).map_err(|source| TransportError::Ca {
                        path: ca.display().to_string(),
                        source,
                    })?;
                    let cert = Certificate::from_pem(&pem).map_err(|e| TransportError::Tls(e.to_string()))?;
                    tls = tls.add_root_certificate(cert);
                }
                let tls = tls.build_rustls().map_err(|e| TransportError::Tls(e.to_string()))?;
                let mut builder = SmtpTransport::builder_dangerous(smtp.host.clone())
                    .hello_name(ClientId::Domain(hello_name.to_string()))
                    .port(smtp.port())
                    .timeout(Some(smtp.timeout.as_duration()))
                    .pool_config(PoolConfig::new().max_size(smtp.pool_size))
                    .tls(match smtp.security {
                        SmtpSecurity::Starttls => Tls::Required(tls),
                        SmtpSecurity::Tls => Tls::Wrapper(tls),
                        SmtpSecurity::None => Tls::None,
                    });
                if let Some(user) = &smtp.username {
                    let password = match &smtp.password {
                        Some(src) => src.load()?.expose().to_string(),
                        None => String::new(),
                    };
                    builder = builder.credentials(Credentials::new(user.clone(), password));
                }
                Ok(MailerKind::Smtp {
                    transport: Box::new(builder.build()),
                    connections: smtp.pool_size as usize,
                })
            }
        }
    }

    /// How many messages may be in flight at once: the SMTP pool size.
    pub fn parallelism(&self) -> usize {
        match &self.kind {
            MailerKind::File(_) => 1,
            MailerKind::Smtp { connections, .. } => *connections,
        }
    }

    /// Sends one message. Errors are the transport's own words, which never
    /// include the password.
    pub fn send(&self, message: &Message) -> Result<(), SendError> {
        match &self.kind {
            MailerKind::File(dir) => write_eml(dir, message).map_err(|e| SendError {
                text: format!("cannot write to {}: {e}", dir.display()),
                permanent: false,
            }),
            MailerKind::Smtp { transport, .. } => transport.send(message).map(|_| ()).map_err(|e| {
                let text = e.to_string();
                SendError {
                    permanent: refuses_this_message(e.status().map(u16::from), &text),
                    text,
                }
            }),
        }
    }
}

/// Whether an SMTP answer refuses this message (its recipient, its
/// content) for good: 550-556. Other 5xx answers (530/535 authentication,
/// 500-504 commands, Postfix's delayed "Helo command rejected") say the
/// configuration is wrong; they are retried so that fixing it delivers the
/// mail.
fn refuses_this_message(code: Option<u16>, text: &str) -> bool {
    let about_helo = text.to_ascii_lowercase().contains("helo");
    matches!(code, Some(550..=556)) && !about_helo
}

/// Why a message was not sent.
#[derive(Debug, Clone)]
pub struct SendError {
    /// The transport's (or server's) own words.
    pub text: String,
    /// A 5xx answer: sending the same message again gets the same answer,
    /// so the notice fails at once instead of being retried.
    pub permanent: bool,
}

impl SendError {
    /// A failure worth retrying (connection refused, a 4xx answer, …).
    pub fn transient(text: impl Into<String>) -> SendError {
        SendError {
            text: text.into(),
            permanent: false,
        }
    }
}

/// Writes `message` as `<uuid>.eml` in `dir`: a hidden temporary file
/// created with mode 0600 (set on the handle, so no umask widens or
/// narrows it), then renamed, so a reader never sees half a message.
fn write_eml(dir: &std::path::Path, message: &Message) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = format!("{}.eml", uuid::Uuid::new_v4());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let written = file.write_all(&message.formatted()).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, dir.join(&name))) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_refusals_of_the_message_are_permanent() {
        use super::refuses_this_message as permanent;
        assert!(permanent(
            Some(550),
            "5.1.1 <a@example.com>: Recipient address rejected: User unknown"
        ));
        assert!(permanent(Some(554), "5.7.1 message content rejected"));
        assert!(!permanent(Some(535), "5.7.8 authentication failed"));
        assert!(!permanent(
            Some(504),
            "5.5.2 <vm>: Helo command rejected: need fully-qualified hostname"
        ));
        assert!(!permanent(
            Some(554),
            "5.7.1 <vm>: Helo command rejected: Host not found"
        ));
        assert!(!permanent(Some(451), "4.3.0 try again later"));
        assert!(!permanent(None, "connection refused"));
    }
}
