//! The file transport: each message an `<uuid>.eml` file in a directory.
//!
//! Messages are written a batch at a time by a thread of their own, so the
//! disk's work (creating, flushing and naming the files) overlaps the
//! delivery loop's (recording the previous batch, claiming and rendering the
//! next). At most two batches are ever written and unrecorded: the one being
//! recorded and the one being written; that is what a crash can send twice.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use lettre::Message;

use super::send_error::SendError;

/// Messages written before one flush to disk makes them all durable.
pub const BATCH: usize = 64;

/// What became of one message: the index it was submitted with, and the
/// outcome.
type Outcome = (usize, Result<(), SendError>);

/// A session's writer: fills a batch, hands it to the writing thread, and
/// gives back each batch's outcomes in order.
pub struct EmlWriter {
    /// The batch being filled.
    filling: Vec<(usize, Message)>,
    /// Messages of the batch handed to the thread whose outcomes have not
    /// been taken (0: none). One batch at most is there: the next is
    /// handed over only once this one's outcomes are taken.
    writing: usize,
    /// A finished batch's outcomes, seen by [`EmlWriter::has_outcome`].
    ready: Option<Vec<Outcome>>,
    jobs: Option<mpsc::Sender<Vec<(usize, Message)>>>,
    done: mpsc::Receiver<Vec<Outcome>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl EmlWriter {
    pub fn new(dir: &Path) -> EmlWriter {
        let (jobs, queued) = mpsc::channel::<Vec<(usize, Message)>>();
        let (finished, done) = mpsc::channel();
        let written_in = dir.to_path_buf();
        let thread = std::thread::Builder::new().name("eml-writer".into()).spawn(move || {
            for batch in queued {
                let (indices, messages): (Vec<usize>, Vec<Message>) = batch.into_iter().unzip();
                let outcomes = indices.into_iter().zip(write_batch(&written_in, &messages)).collect();
                if finished.send(outcomes).is_err() {
                    break;
                }
            }
        });
        // Without a thread (none could be started), batches are written by
        // the caller: the same files, only without the overlap.
        let (jobs, thread) = match thread {
            Ok(t) => (Some(jobs), Some(t)),
            Err(_) => (None, None),
        };
        EmlWriter {
            filling: Vec::new(),
            writing: 0,
            ready: None,
            jobs,
            done,
            thread,
            dir: dir.to_path_buf(),
        }
    }

    /// Queues a message; a full batch goes to the thread when it is free.
    pub fn submit(&mut self, index: usize, message: Message) {
        self.filling.push((index, message));
        if self.filling.len() >= BATCH && self.writing == 0 {
            self.dispatch();
        }
    }

    /// Whether another message fits in the batch being filled.
    pub fn wants_more(&self) -> bool {
        self.filling.len() < BATCH
    }

    /// Whether a written batch waits to be recorded (without waiting).
    pub fn has_outcome(&mut self) -> bool {
        if self.ready.is_none() && self.writing > 0 {
            if let Ok(outcomes) = self.done.try_recv() {
                self.writing = 0;
                self.ready = Some(outcomes);
            }
        }
        self.ready.is_some()
    }

    /// Messages submitted whose outcome has not been handed out.
    pub fn outstanding(&self) -> usize {
        self.filling.len() + self.writing + self.ready.as_ref().map_or(0, Vec::len)
    }

    /// The next batch's outcomes, waiting for them; a partial batch is
    /// written when nothing else is on its way. The batch filled meanwhile
    /// goes to the thread before these are handed out, so it is written
    /// while they are recorded.
    pub fn outcomes(&mut self) -> Vec<Outcome> {
        if self.ready.is_none() && self.writing == 0 && !self.filling.is_empty() {
            self.dispatch();
        }
        let outcomes = match self.ready.take() {
            Some(o) => o,
            None if self.writing > 0 => match self.done.recv() {
                Ok(o) => {
                    self.writing = 0;
                    o
                }
                Err(_) => {
                    // The thread is gone (it panicked): what it had is not
                    // known written, and is claimed again by the next run.
                    self.writing = 0;
                    self.jobs = None;
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        if self.filling.len() >= BATCH && self.writing == 0 {
            self.dispatch();
        }
        outcomes
    }

    /// Starts nothing more; waits for the batch being written.
    pub fn stop(&mut self) {
        self.filling.clear();
        self.ready = None;
        if self.writing > 0 {
            self.writing = 0;
            let _ = self.done.recv();
        }
    }

    fn dispatch(&mut self) {
        let batch = std::mem::take(&mut self.filling);
        let size = batch.len();
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(batch).map_err(|e| e.0),
            None => Err(batch),
        };
        match sent {
            Ok(()) => self.writing = size,
            Err(batch) => {
                // No thread: written here, the same files without the overlap.
                let (indices, messages): (Vec<usize>, Vec<Message>) = batch.into_iter().unzip();
                let outcomes = indices.into_iter().zip(write_batch(&self.dir, &messages)).collect();
                match &mut self.ready {
                    Some(ready) => ready.extend(outcomes),
                    None => self.ready = Some(outcomes),
                }
            }
        }
    }
}

impl Drop for EmlWriter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes each message as `<uuid>.eml` in `dir`: a hidden temporary file
/// created with mode 0600 (set on the handle, so no umask widens or
/// narrows it), then, once one `syncfs` made the whole batch durable,
/// renamed into place (and the directory synced), so a reader never sees
/// half a message and a recorded message is on disk.
fn write_batch(dir: &Path, batch: &[Message]) -> Vec<Result<(), SendError>> {
    let failed = |e: std::io::Error| SendError::transient(format!("cannot write to {}: {e}", dir.display()));
    let mut written: Vec<Result<(PathBuf, String), SendError>> =
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
fn write_hidden(dir: &Path, message: &Message) -> std::io::Result<(PathBuf, String)> {
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
fn sync_dir_fs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: syncfs takes an open descriptor, which `d` keeps open.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
