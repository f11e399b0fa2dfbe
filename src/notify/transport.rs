//! Where messages go: a directory of `.eml` files, or an SMTP server over
//! implicit TLS, STARTTLS (required, the default) or, for a loopback server
//! only, plain text.

use std::os::unix::fs::DirBuilderExt;

use lettre::Message;

pub use super::send_error::{SendError, TransportError};
use super::smtp::{SmtpPool, WireMessage};
use crate::config::{MailTransport, NotificationsConfig};

/// Messages the file transport writes before one flush to disk makes them
/// all durable; what a crash can leave written but unrecorded.
pub const FILE_BATCH: usize = 64;

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
    /// SMTP pool size, or [`FILE_BATCH`] for the file transport.
    pub fn in_flight(&self) -> usize {
        match &self.kind {
            MailerKind::File(_) => FILE_BATCH,
            MailerKind::Smtp(pool) => pool.size(),
        }
    }

    /// Recipients claimed at once: [`CLAIM_PER_CONNECTION`] per SMTP
    /// connection (so a claim's round trips and the stall they cause are
    /// shared by many messages), one batch for
    /// the file transport. Rows claimed and never started are claimed again
    /// at once by the next run on this host.
    pub fn claim_size(&self) -> usize {
        match &self.kind {
            MailerKind::File(_) => FILE_BATCH,
            MailerKind::Smtp(pool) => pool.size() * CLAIM_PER_CONNECTION,
        }
    }

    /// Starts a delivery: see [`Session`].
    pub fn session(&self) -> Session<'_> {
        let kind = match &self.kind {
            MailerKind::File(dir) => SessionKind::File { dir, batch: Vec::new() },
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
/// unrecorded. The file transport writes a batch when its outcomes are
/// asked for.
pub struct Session<'m> {
    kind: SessionKind<'m>,
    in_flight: usize,
    claim_size: usize,
    /// Messages that could not be built: failed without being sent.
    immediate: Vec<Outcome>,
}

enum SessionKind<'m> {
    File {
        dir: &'m std::path::Path,
        batch: Vec<(usize, Message)>,
    },
    Smtp(super::smtp::SmtpSession),
    /// The SMTP thread is gone: every message fails.
    Closed,
}

impl Session<'_> {
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
            SessionKind::File { batch, .. } => batch.push((index, message)),
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
            SessionKind::File { batch, .. } => batch.len() + self.immediate.len() < self.in_flight,
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
                SessionKind::File { .. } | SessionKind::Closed => false,
            }
    }

    /// Messages submitted whose outcome has not been handed out.
    pub fn outstanding(&self) -> usize {
        self.immediate.len()
            + match &self.kind {
                SessionKind::File { batch, .. } => batch.len(),
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
            SessionKind::File { dir, batch } => {
                let (indices, messages): (Vec<usize>, Vec<Message>) = std::mem::take(batch).into_iter().unzip();
                indices.into_iter().zip(write_eml_batch(dir, &messages)).collect()
            }
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
            SessionKind::File { batch, .. } => batch.clear(),
            SessionKind::Smtp(s) => s.stop(),
            SessionKind::Closed => {}
        }
    }
}

/// Writes each message as `<uuid>.eml` in `dir`: a hidden temporary file
/// created with mode 0600 (set on the handle, so no umask widens or
/// narrows it), then, once one `syncfs` made the whole batch durable,
/// renamed into place (and the directory synced), so a reader never sees
/// half a message and a recorded message is on disk.
fn write_eml_batch(dir: &std::path::Path, batch: &[Message]) -> Vec<Result<(), SendError>> {
    let failed = |e: std::io::Error| SendError::transient(format!("cannot write to {}: {e}", dir.display()));
    let mut written: Vec<Result<(std::path::PathBuf, String), SendError>> =
        batch.iter().map(|m| write_hidden(dir, m).map_err(failed)).collect();
    let synced = sync_dir_fs(dir).map_err(failed);
    for w in written.iter_mut() {
        let Ok((tmp, name)) = w else { continue };
        let placed = synced
            .clone()
            .and_then(|()| std::fs::rename(&*tmp, dir.join(&*name)).map_err(failed));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&*tmp);
            *w = Err(e);
        }
    }
    // The renames themselves must survive a crash before they are recorded.
    let renamed = std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed);
    written
        .into_iter()
        .map(|w| match (w, &renamed) {
            (Ok(_), Ok(())) => Ok(()),
            (Ok(_), Err(e)) => Err(e.clone()),
            (Err(e), _) => Err(e),
        })
        .collect()
}

/// Writes one message to a hidden temporary file; returns it and the
/// final name.
fn write_hidden(dir: &std::path::Path, message: &Message) -> std::io::Result<(std::path::PathBuf, String)> {
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
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(&message.formatted()));
    match written {
        Ok(()) => Ok((tmp, name)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Flushes the file system holding `dir` (one call for a whole batch,
/// instead of one `fsync` per message).
fn sync_dir_fs(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: syncfs takes an open descriptor, which `d` keeps open.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
