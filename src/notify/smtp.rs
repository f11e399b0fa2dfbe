//! SMTP connections keywarden opens itself, and the few it keeps open.
//!
//! lettre speaks SMTP, but its own connections leave Nagle's algorithm on:
//! each message's short `\r\n.\r\n` terminator then waits for the server's
//! delayed ACK, some 40 ms a message. So keywarden connects the TCP socket
//! itself with `TCP_NODELAY`, wraps it in TLS itself for implicit TLS, and
//! hands the stream to lettre's `AsyncSmtpConnection` (which does EHLO,
//! STARTTLS, AUTH and the mail transaction). The connections run on one
//! runtime thread of their own; outcomes go back to the caller's thread,
//! the only one that touches the database (see [`SmtpPool::session`]).
//! lettre writes a message body and its final `.` separately; the stream it
//! is handed (`super::wire`) holds the body back so both leave in one
//! write, which spares the server a second read per message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use super::send_error::{SendError, TransportError};
use super::wire::{WireIo, WireStream};
use crate::config::{SmtpConfig, SmtpSecurity};

/// A connection idle longer than this is checked with NOOP before reuse:
/// servers drop idle clients, and a message must not be sent into a
/// connection that is already gone.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Where and how to connect.
struct Target {
    host: String,
    port: u16,
    security: SmtpSecurity,
    /// For STARTTLS (lettre upgrades the stream).
    starttls: TlsParameters,
    /// For implicit TLS (keywarden wraps the stream before the banner).
    implicit: tokio_rustls::TlsConnector,
    hello: ClientId,
    credentials: Option<Credentials>,
    timeout: Duration,
}

/// Up to `size` connections to one server, opened on demand, reused while
/// the run lasts, and closed with QUIT by [`SmtpPool::close`].
pub struct SmtpPool {
    runtime: Option<tokio::runtime::Runtime>,
    target: Arc<Target>,
    idle: Arc<Mutex<Vec<(Connection, Instant)>>>,
    size: usize,
}

/// A message ready for the wire.
pub struct WireMessage {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

impl SmtpPool {
    pub fn new(cfg: &SmtpConfig, hello_name: &str, password: Option<String>) -> Result<SmtpPool, TransportError> {
        let ca = match &cfg.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| TransportError::Ca {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let mut starttls = TlsParameters::builder(cfg.host.clone());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &ca {
            let cert = Certificate::from_pem(pem).map_err(|e| TransportError::Tls(e.to_string()))?;
            starttls = starttls.add_root_certificate(cert);
            for der in CertificateDer::pem_slice_iter(pem) {
                let der = der.map_err(|e| TransportError::Tls(format!("the SMTP CA file: {e}")))?;
                roots.add(der).map_err(|e| TransportError::Tls(e.to_string()))?;
            }
        }
        let starttls = starttls
            .build_rustls()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let implicit = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let credentials = cfg
            .username
            .as_ref()
            .map(|user| Credentials::new(user.clone(), password.unwrap_or_default()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keywarden-smtp")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| TransportError::Tls(format!("cannot start the SMTP thread: {e}")))?;
        Ok(SmtpPool {
            runtime: Some(runtime),
            target: Arc::new(Target {
                host: cfg.host.clone(),
                port: cfg.port(),
                security: cfg.security,
                starttls,
                implicit: tokio_rustls::TlsConnector::from(Arc::new(implicit)),
                hello: ClientId::Domain(hello_name.to_string()),
                credentials,
                timeout: cfg.timeout.as_duration(),
            }),
            idle: Arc::new(Mutex::new(Vec::new())),
            size: (cfg.pool_size as usize).max(1),
        })
    }

    /// How many connections may be open at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Starts sending: messages submitted to the session go out over up to
    /// [`Self::size`] connections, each taking the next waiting message.
    /// A connection starts its next message only after the outcome of its
    /// previous one was recorded ([`SmtpSession::recorded`]), so at most one
    /// accepted message per connection is ever unrecorded.
    pub fn session(&self) -> Option<SmtpSession> {
        let runtime = self.runtime.as_ref()?;
        let (queue_tx, queue_rx) = tokio::sync::mpsc::unbounded_channel();
        let queue_rx = Arc::new(tokio::sync::Mutex::new(queue_rx));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(Mutex::new(None));
        for _ in 0..self.size {
            runtime.spawn(connection_worker(Worker {
                target: self.target.clone(),
                idle: self.idle.clone(),
                queue: queue_rx.clone(),
                stop: stop.clone(),
                done: done_tx.clone(),
                down: down.clone(),
            }));
        }
        Some(SmtpSession {
            queue: Some(queue_tx),
            done: done_rx,
            stop,
            submitted: 0,
            handed_out: 0,
            acks: Vec::new(),
            early: Vec::new(),
        })
    }
    /// Says QUIT on every open connection (bounded by the timeout).
    pub fn close(&self) {
        let Some(runtime) = &self.runtime else { return };
        let idle: Vec<_> = match self.idle.lock() {
            Ok(mut idle) => idle.drain(..).collect(),
            Err(_) => return,
        };
        let timeout = self.target.timeout;
        // Waited for on a plain channel, not with block_on: this may run on
        // a thread that is inside another runtime (a job under the daemon).
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let quits = idle.into_iter().map(|(mut conn, _)| async move {
                let _ = tokio::time::timeout(timeout, conn.quit()).await;
            });
            futures_util::future::join_all(quits).await;
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv_timeout(timeout + Duration::from_secs(1));
    }
}

impl Drop for SmtpPool {
    /// Waits (briefly) for the SMTP thread to end: a thread still tearing
    /// itself down while the process exits corrupted the heap at exit. A
    /// pool lives in a job, which runs on a blocking thread (never inside
    /// async code, where this wait would panic).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

type Done = (usize, Result<(), SendError>, tokio::sync::oneshot::Sender<()>);

/// Messages on their way; see [`SmtpPool::session`].
pub struct SmtpSession {
    queue: Option<tokio::sync::mpsc::UnboundedSender<(usize, WireMessage)>>,
    done: std::sync::mpsc::Receiver<Done>,
    stop: Arc<AtomicBool>,
    submitted: usize,
    handed_out: usize,
    acks: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Outcomes taken off the channel by [`SmtpSession::has_outcome`] and
    /// not handed out yet.
    early: Vec<Done>,
}

impl SmtpSession {
    /// Queues a message; `index` comes back with its outcome.
    pub fn submit(&mut self, index: usize, message: WireMessage) {
        if let Some(queue) = &self.queue {
            if queue.send((index, message)).is_ok() {
                self.submitted += 1;
            }
        }
    }

    /// Submitted messages whose outcome has not been handed out yet.
    pub fn outstanding(&self) -> usize {
        self.submitted - self.handed_out
    }

    /// Whether an outcome is ready (without waiting): a connection is then
    /// waiting for its record, which should come before anything else.
    pub fn has_outcome(&mut self) -> bool {
        if self.early.is_empty() {
            if let Ok(d) = self.done.try_recv() {
                self.early.push(d);
            }
        }
        !self.early.is_empty()
    }

    /// Waits for at least one outcome and returns every one ready. The
    /// connections that produced them wait until [`Self::recorded`].
    pub fn outcomes(&mut self) -> Vec<(usize, Result<(), SendError>)> {
        if self.outstanding() == 0 {
            return Vec::new();
        }
        let mut ready = std::mem::take(&mut self.early);
        if ready.is_empty() {
            let Ok(first) = self.done.recv() else {
                // Every connection ended (stopped): nothing more comes.
                self.handed_out = self.submitted;
                return Vec::new();
            };
            ready.push(first);
        }
        ready.extend(self.done.try_iter());
        self.handed_out += ready.len();
        ready
            .into_iter()
            .map(|(i, outcome, ack)| {
                self.acks.push(ack);
                (i, outcome)
            })
            .collect()
    }

    /// The outcomes handed out are written: their connections go on.
    pub fn recorded(&mut self) {
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }

    /// No new message is started; messages being sent finish.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wind_down();
    }

    /// Closes the queue (idle connections end and go back to the pool) and
    /// lets every connection finish what it holds.
    fn wind_down(&mut self) {
        self.queue = None;
        self.recorded();
        for (_, _, ack) in self.early.drain(..) {
            let _ = ack.send(());
        }
        while self.done.recv().map(|(_, _, ack)| ack.send(())).is_ok() {}
    }
}

impl Drop for SmtpSession {
    fn drop(&mut self) {
        self.wind_down();
    }
}

/// What one connection's loop holds.
struct Worker {
    target: Arc<Target>,
    idle: Arc<Mutex<Vec<(Connection, Instant)>>>,
    queue: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(usize, WireMessage)>>>,
    stop: Arc<AtomicBool>,
    done: std::sync::mpsc::Sender<Done>,
    /// Why the server could not be reached, once a connection failed to
    /// open: the other messages of the session fail at once with it.
    down: Arc<Mutex<Option<SendError>>>,
}

/// One connection's loop: take the next message; send MAIL, RCPT and DATA
/// while the previous message's outcome is being recorded; wait for that
/// record; send the body (the server accepts the message on its final
/// `.`); report. So at most one accepted message per connection is ever
/// unrecorded, and recording costs no time on the wire.
async fn connection_worker(w: Worker) {
    let mut conn: Option<Connection> = None;
    let mut from_pool = true;
    let mut previous: Option<tokio::sync::oneshot::Receiver<()>> = None;
    loop {
        if w.stop.load(Ordering::SeqCst) {
            break;
        }
        let next = w.queue.lock().await.recv().await;
        let Some((i, message)) = next else { break };
        if conn.is_none() && from_pool {
            conn = take_idle(&w.idle, w.target.timeout).await;
            from_pool = false;
        }
        let down = w.down.lock().ok().and_then(|d| d.clone());
        let opened = match down {
            Some(e) if conn.is_none() => Err(e),
            _ => {
                let opened = open_transaction(&w.target, &mut conn, &message.envelope, &message.bytes).await;
                if let Err(e) = &opened {
                    if e.unreachable {
                        if let Ok(mut d) = w.down.lock() {
                            d.get_or_insert_with(|| e.clone());
                        }
                    }
                }
                opened
            }
        };
        let recorded = match previous.take() {
            Some(rx) => rx.await.is_ok(),
            None => true,
        };
        if !recorded || w.stop.load(Ordering::SeqCst) {
            // The body must not go out: its acceptance could not be
            // recorded. The server waits for data, so a QUIT would be read
            // as part of the message: close the connection instead, which
            // makes the server drop the transaction.
            drop(conn.take());
            break;
        }
        let outcome = match opened {
            Ok(()) => finish_transaction(&w.target, &mut conn, &message.bytes).await,
            Err(e) => Err(e),
        };
        let (recorded_tx, recorded_rx) = tokio::sync::oneshot::channel();
        if w.done.send((i, outcome, recorded_tx)).is_err() {
            break;
        }
        previous = Some(recorded_rx);
    }
    if let Some(rx) = previous {
        let _ = rx.await;
    }
    if let (Some(c), Ok(mut idle)) = (conn, w.idle.lock()) {
        idle.push((c, Instant::now()));
    }
}

/// An open connection from the pool, checked with NOOP when it sat idle.
async fn take_idle(idle: &Mutex<Vec<(Connection, Instant)>>, timeout: Duration) -> Option<Connection> {
    loop {
        let (mut conn, since) = idle.lock().ok()?.pop()?;
        if since.elapsed() < CHECK_AFTER_IDLE {
            return Some(conn);
        }
        if let Ok(true) = tokio::time::timeout(timeout, conn.test_connected()).await {
            return Some(conn);
        }
    }
}

/// MAIL, RCPT and DATA, connecting first when needed. Any error drops the
/// connection (lettre aborts it), so the next message opens a fresh one.
async fn open_transaction(
    target: &Target,
    conn: &mut Option<Connection>,
    envelope: &Envelope,
    body: &[u8],
) -> Result<(), SendError> {
    if conn.is_none() {
        *conn = Some(connect(target).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(SendError::transient("no connection"));
    };
    let opened = tokio::time::timeout(target.timeout, async {
        let mut options = Vec::new();
        let non_ascii_addresses = envelope.from().is_some_and(|a| !AsRef::<str>::as_ref(a).is_ascii())
            || envelope.to().iter().any(|a| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii_addresses {
            if !c.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(SendError::transient(
                    "an address is not ASCII and the server does not offer SMTPUTF8",
                ));
            }
            options.push(MailParameter::SmtpUtfEight);
        }
        if !body.is_ascii() {
            if !c.server_info().supports_feature(Extension::EightBitMime) {
                return Err(SendError::transient(
                    "the message is not ASCII and the server does not offer 8BITMIME",
                ));
            }
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        c.command(Mail::new(envelope.from().cloned(), options))
            .await
            .map_err(|e| SendError::from_smtp(&e))?;
        for to in envelope.to() {
            c.command(Rcpt::new(to.clone(), Vec::new()))
                .await
                .map_err(|e| SendError::from_smtp(&e))?;
        }
        c.command(Data).await.map_err(|e| SendError::from_smtp(&e))?;
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(no_answer(target)));
    if opened.is_err() {
        // A refused recipient leaves a half-open transaction: start afresh.
        if let Some(mut c) = conn.take() {
            let _ = tokio::time::timeout(target.timeout, c.abort()).await;
        }
    }
    opened
}

/// The body and the final `.`: the server's answer accepts or refuses the
/// message.
async fn finish_transaction(target: &Target, conn: &mut Option<Connection>, body: &[u8]) -> Result<(), SendError> {
    let Some(c) = conn.as_mut() else {
        return Err(SendError::transient("no connection"));
    };
    // lettre writes the body and the terminator separately: held and sent
    // as one write, the server reads the message in one go.
    if let Some(hold) = &c.hold_body {
        hold.store(true, Ordering::SeqCst);
    }
    let sent = tokio::time::timeout(target.timeout, c.smtp.message(body)).await;
    let outcome = match sent {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => SendError::from_smtp(&e),
        Err(_) => no_answer(target),
    };
    *conn = None;
    Err(outcome)
}

fn no_answer(target: &Target) -> SendError {
    SendError::transient(format!("the SMTP server did not answer within {:?}", target.timeout))
}

/// Opens, greets, secures and authenticates one connection.
async fn connect(target: &Target) -> Result<Connection, SendError> {
    let address = format!("{}:{}", target.host, target.port);
    let opened = tokio::time::timeout(target.timeout, async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| SendError::unreachable(format!("cannot connect to {address}: {e}")))?;
        // The point of connecting ourselves: no 40 ms wait for a delayed ACK.
        tcp.set_nodelay(true)
            .map_err(|e| SendError::transient(format!("{address}: TCP_NODELAY: {e}")))?;
        let io = match target.security {
            SmtpSecurity::Tls => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| SendError::transient(format!("{}: {e}", target.host)))?;
                let tls = target
                    .implicit
                    .connect(name, tcp)
                    .await
                    .map_err(|e| SendError::unreachable(format!("TLS with {address}: {e}")))?;
                WireIo::Tls(Box::new(tls))
            }
            SmtpSecurity::Starttls | SmtpSecurity::None => WireIo::Plain(tcp),
        };
        // Under STARTTLS lettre's own TLS sits above this stream, which then
        // sees only ciphertext and cannot tell where a body ends.
        let hold_body = (target.security != SmtpSecurity::Starttls).then(|| Arc::new(AtomicBool::new(false)));
        let stream = WireStream {
            io,
            held: Vec::new(),
            hold: hold_body.clone().unwrap_or_default(),
        };
        let smtp = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &target.hello)
            .await
            .map_err(|e| SendError::from_smtp(&e))?;
        let mut conn = Connection { smtp, hold_body };
        if target.security == SmtpSecurity::Starttls {
            if !conn.can_starttls() {
                let _ = tokio::time::timeout(target.timeout, conn.abort()).await;
                return Err(SendError::transient(format!(
                    "{address} does not offer STARTTLS, which notifications.smtp.security requires"
                )));
            }
            conn.starttls(target.starttls.clone(), &target.hello)
                .await
                .map_err(|e| SendError::from_smtp(&e))?;
        }
        if let Some(credentials) = &target.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| SendError::from_smtp(&e))?;
        }
        Ok(conn)
    })
    .await;
    opened.unwrap_or_else(|_| {
        Err(SendError::unreachable(format!(
            "connecting to {address} took longer than {:?}",
            target.timeout
        )))
    })
}

/// One open SMTP connection, and the switch of its stream that holds a
/// message body back until its terminator follows.
struct Connection {
    smtp: AsyncSmtpConnection,
    hold_body: Option<Arc<AtomicBool>>,
}

impl std::ops::Deref for Connection {
    type Target = AsyncSmtpConnection;
    fn deref(&self) -> &AsyncSmtpConnection {
        &self.smtp
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut AsyncSmtpConnection {
        &mut self.smtp
    }
}
