//! Where messages go: a directory of `.eml` files, or an SMTP server over
//! implicit TLS, STARTTLS (required, the default) or, for a loopback server
//! only, plain text.

use std::os::unix::fs::DirBuilderExt;

use lettre::Message;

use super::eml::EmlWriter;
pub use super::send_error::{SendError, TransportError};
use super::smtp::{SmtpPool, WireMessage};
use crate::config::{MailTransport, NotificationsConfig};

pub use super::eml::BATCH as FILE_BATCH;

/// Recipients the file transport claims at once: several batches, so a
/// claim's round trips are shared by many messages (rows claimed and never
/// written are claimed again at once by the next run on this host).
pub const FILE_CLAIM: usize = 4 * FILE_BATCH;

/// Recipients claimed per SMTP connection at once. A claim holds the
/// delivery loop for three round trips and the rendering, during which
/// finished messages wait for their record; sixteen messages share that.
pub const CLAIM_PER_CONNECTION: usize = 16;

pub struct Mailer {
    kind: MailerKind,
    /// The fully qualified name given in EHLO and in Message-IDs.
    hello_name: String,
}

enum MailerKind {
    /// A directory of `.eml` files, each created 0600 (they name owners and
    /// keys) and renamed into place whole.
    File(std::path::PathBuf),
    Smtp(SmtpPool),
}

/// What became of one message: the index it was submitted with, and the
/// outcome.
pub type Outcome = (usize, Result<(), SendError>);

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
                let password = match (&smtp.username, &smtp.password) {
                    (Some(_), Some(src)) => Some(src.load()?.expose().to_string()),
                    _ => None,
                };
                Ok(MailerKind::Smtp(SmtpPool::new(smtp, hello_name, password)?))
            }
        }
    }

    /// How many messages may be sent and not yet recorded at once: the
    /// SMTP pool size, or two batches for the file transport (one being
    /// recorded, one being written; see [`super::eml`]).
    pub fn in_flight(&self) -> usize {
        match &self.kind {
            MailerKind::File(_) => 2 * FILE_BATCH,
            MailerKind::Smtp(pool) => pool.size(),
        }
    }

    /// Recipients claimed at once: [`CLAIM_PER_CONNECTION`] per SMTP
    /// connection (so a claim's round trips and the stall they cause are
    /// shared by many messages), [`FILE_CLAIM`] for the file transport.
    /// Rows claimed and never started are claimed again at once by the next
    /// run on this host.
    pub fn claim_size(&self) -> usize {
        match &self.kind {
            MailerKind::File(_) => FILE_CLAIM,
            MailerKind::Smtp(pool) => pool.size() * CLAIM_PER_CONNECTION,
        }
    }

    /// Starts a delivery: see [`Session`].
    pub fn session(&self) -> Session {
        let kind = match &self.kind {
            MailerKind::File(dir) => SessionKind::File(EmlWriter::new(dir)),
            MailerKind::Smtp(pool) => match pool.session() {
                Some(s) => SessionKind::Smtp(s),
                None => SessionKind::Closed,
            },
        };
        Session {
            kind,
            in_flight: self.in_flight(),
            claim_size: self.claim_size(),
            immediate: Vec::new(),
        }
    }

    /// Closes open connections politely (QUIT).
    pub fn close(&self) {
        if let MailerKind::Smtp(pool) = &self.kind {
            pool.close();
        }
    }
}

/// Messages on their way out. The caller submits messages, takes the
/// outcomes ([`Session::outcomes`], several at once when several are
/// ready, so they can share a transaction), records them, then says so
/// ([`Session::recorded`]): a connection starts its next message only
/// then, so no more than [`Mailer::in_flight`] accepted messages are ever
/// unrecorded. The file transport writes batches on a thread of its own
/// ([`EmlWriter`]).
pub struct Session {
    kind: SessionKind,
    in_flight: usize,
    claim_size: usize,
    /// Messages that could not be built: failed without being sent.
    immediate: Vec<Outcome>,
}

enum SessionKind {
    File(EmlWriter),
    Smtp(super::smtp::SmtpSession),
    /// The SMTP thread is gone: every message fails.
    Closed,
}

impl Session {
    /// Queues a message (or why it could not be built); `index` comes back
    /// with its outcome.
    pub fn submit(&mut self, index: usize, message: Result<Message, String>) {
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                self.immediate.push((index, Err(SendError::transient(e))));
                return;
            }
        };
        match &mut self.kind {
            SessionKind::File(w) => w.submit(index, message),
            SessionKind::Smtp(s) => s.submit(
                index,
                WireMessage {
                    envelope: message.envelope().clone(),
                    bytes: message.formatted(),
                },
            ),
            SessionKind::Closed => self
                .immediate
                .push((index, Err(SendError::transient("the SMTP client has stopped")))),
        }
    }

    /// Whether more messages are welcome now. Over SMTP: while less than a
    /// claim's worth is outstanding, so the next chunk is claimed and
    /// rendered while the current one is sent. The file transport writes a
    /// batch of [`FILE_BATCH`] at a time.
    pub fn wants_more(&self) -> bool {
        match &self.kind {
            SessionKind::File(w) => w.wants_more() && self.immediate.len() < self.in_flight,
            SessionKind::Smtp(s) => s.outstanding() + self.immediate.len() < self.claim_size,
            SessionKind::Closed => self.immediate.len() < self.in_flight,
        }
    }

    /// Whether an outcome waits to be recorded now (without waiting for
    /// one): over SMTP a connection is then held until it is recorded, so
    /// recording goes before claiming more.
    pub fn has_outcome(&mut self) -> bool {
        !self.immediate.is_empty()
            || match &mut self.kind {
                SessionKind::Smtp(s) => s.has_outcome(),
                SessionKind::File(w) => w.has_outcome(),
                SessionKind::Closed => false,
            }
    }

    /// Messages submitted whose outcome has not been handed out.
    pub fn outstanding(&self) -> usize {
        self.immediate.len()
            + match &self.kind {
                SessionKind::File(w) => w.outstanding(),
                SessionKind::Smtp(s) => s.outstanding(),
                SessionKind::Closed => 0,
            }
    }

    /// Outcomes: at least one when any is outstanding (waiting for it).
    pub fn outcomes(&mut self) -> Vec<Outcome> {
        if !self.immediate.is_empty() {
            return std::mem::take(&mut self.immediate);
        }
        match &mut self.kind {
            SessionKind::File(w) => w.outcomes(),
            SessionKind::Smtp(s) => s.outcomes(),
            SessionKind::Closed => Vec::new(),
        }
    }

    /// The outcomes handed out are recorded: connections go on.
    pub fn recorded(&mut self) {
        if let SessionKind::Smtp(s) = &mut self.kind {
            s.recorded();
        }
    }

    /// Starts nothing more; waits for messages being sent to finish (their
    /// outcomes are not recorded: they are what a stop can duplicate).
    pub fn stop(&mut self) {
        self.immediate.clear();
        match &mut self.kind {
            SessionKind::File(w) => w.stop(),
            SessionKind::Smtp(s) => s.stop(),
            SessionKind::Closed => {}
        }
    }
}
