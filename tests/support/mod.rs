//! Shared test support: a database of the test's own on each backend, config
//! files in a temporary directory, the real binary, a NOTIFY_SOCKET, signals.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;
use keywarden::config::Secrets;
use keywarden::db::schema::{api_keys, users};
use keywarden::db::{Database, DbConnection};

pub const BIN: &str = env!("CARGO_BIN_EXE_keywarden");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per backend from a function taking a [`Backend`].
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite)
                }
                #[test]
                fn postgres() {
                    super::$name($crate::support::Backend::Postgres)
                }
            }
        )*
    };
}

/// The PostgreSQL server the tests use.
pub fn postgres_admin_url() -> String {
    std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database owned by one test: an SQLite file in the test's directory, or
/// a PostgreSQL database created for it and dropped afterwards.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDb {
    /// An unreachable PostgreSQL fails the test: a skipped test must never
    /// pass for a run one.
    pub fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("keywarden.db").display());
                TestDb {
                    backend,
                    url,
                    dir,
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = PgConnection::establish(&admin).unwrap_or_else(|e| {
                    panic!("PostgreSQL at {admin} is not reachable (set KEYWARDEN_TEST_DATABASE_URL): {e}")
                });
                let name = format!("kw_test_{}", uuid::Uuid::new_v4().simple());
                // The name is generated here from hex digits only.
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .expect("create database");
                let mut url = url::Url::parse(&admin).expect("admin url");
                url.set_path(&format!("/{name}"));
                TestDb {
                    backend,
                    url: url.to_string(),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a configuration file pointing at this database, with `extra`
    /// TOML appended, and returns its path.
    pub fn write_config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        // Mail from any test goes into the test's own directory.
        let extra = if extra.contains("[notifications]") {
            extra.to_string()
        } else {
            format!(
                "[notifications]\nfile_dir = \"{}\"\n\n{extra}",
                self.dir.path().join("outbox").display()
            )
        };
        let text = format!(
            "[daemon]\nlog_target = \"stderr\"\nshutdown_timeout = \"30s\"\n\n[database]\nurl = \"{}\"\nbusy_timeout = \"60s\"\n\n{extra}",
            self.url
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub fn database(&self) -> Database {
        let cfg =
            keywarden::jobs::config_from_toml(Path::new("test.toml"), &format!("[database]\nurl = \"{}\"\n", self.url))
                .expect("test config");
        Database::new(&cfg.database, &Secrets::default())
    }

    /// A migrated connection.
    pub fn conn(&self) -> DbConnection {
        let mut conn = self.database().connect().expect("connect");
        keywarden::db::migrate::run_pending(&mut conn).expect("migrate");
        conn
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            if let Ok(mut conn) = PgConnection::establish(&postgres_admin_url()) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn);
            }
        }
    }
}

pub fn ts(offset: TimeDelta) -> NaiveDateTime {
    keywarden::db::now() + offset
}

/// Inserts an owner and returns its id.
pub fn add_user(conn: &mut DbConnection, email: &str) -> i64 {
    let now = keywarden::db::now();
    diesel::insert_into(users::table)
        .values((
            users::email.eq(email),
            users::status.eq("active"),
            users::created_at.eq(now),
            users::updated_at.eq(now),
        ))
        .returning(users::id)
        .get_result(conn)
        .expect("insert user")
}

/// Inserts a key row directly (the hash is a well-formed placeholder: these
/// tests exercise the lifecycle jobs, not verification).
pub fn add_key(conn: &mut DbConnection, owner: i64, prefix: &str, status: &str, expires_at: NaiveDateTime) -> i64 {
    let now = keywarden::db::now();
    let revoked_at = (status == "revoked").then_some(now);
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::prefix.eq(prefix),
            api_keys::key_hash.eq("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
            api_keys::name.eq(format!("key {prefix}")),
            api_keys::status.eq(status),
            api_keys::owner_id.eq(owner),
            api_keys::expires_at.eq(expires_at),
            api_keys::revoked_at.eq(revoked_at),
            api_keys::created_at.eq(now),
            api_keys::updated_at.eq(now),
        ))
        .returning(api_keys::id)
        .get_result(conn)
        .expect("insert key")
}

pub fn key_status(conn: &mut DbConnection, prefix: &str) -> String {
    api_keys::table
        .filter(api_keys::prefix.eq(prefix))
        .select(api_keys::status)
        .first(conn)
        .expect("key status")
}

/// Runs the binary to completion.
pub fn keywarden(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run keywarden")
}

/// A NOTIFY_SOCKET the test binds, as systemd does.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket { path, sock }
    }

    /// Waits for a datagram containing `needle`; returns the whole datagram.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                if msg.lines().any(|l| l == needle || l.starts_with(needle)) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no notification {needle:?} within {timeout:?}; got {seen:#?}");
    }
}

/// The daemon as a child process, its stderr collected line by line.
pub struct Daemon {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(config: &Path, notify: Option<&NotifySocket>, envs: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config).arg("run");
        Self::spawn(cmd, notify, envs)
    }

    /// Starts `cmd` (which must end up running the daemon) the same way.
    pub fn spawn(mut cmd: Command, notify: Option<&NotifySocket>, envs: &[(&str, &str)]) -> Daemon {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC");
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", &n.path);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start daemon");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle` (after `skip` matches).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_nth_log(needle, 1, timeout)
    }

    pub fn wait_for_nth_log(&self, needle: &str, nth: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let found: Vec<String> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if found.len() >= nth {
                return found[nth - 1].clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no log line {needle:?} (#{nth}) within {timeout:?}; log:\n{}",
            self.log()
        );
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("daemon did not exit within {timeout:?}; log:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns true.
/// Polls `f` until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Debian's python3-aiosmtpd, as a real SMTP server owned by one test.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    password: Option<String>,
    /// `SMTP_SINK_REJECT`: recipients answered with a refusal.
    rejects: Option<String>,
}

/// The Python that has Debian's aiosmtpd.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl SmtpSink {
    /// A missing aiosmtpd fails the test.
    pub fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> SmtpSink {
        Self::start_with(dir, tls, false)
    }

    /// With `implicit`, TLS from the first byte instead of STARTTLS.
    pub fn start_with(dir: &Path, tls: Option<(&Path, &Path)>, implicit: bool) -> SmtpSink {
        Self::start_full(dir, tls, implicit, None)
    }

    /// `password`: the server requires a login as "keywarden" with it.
    pub fn start_full(dir: &Path, tls: Option<(&Path, &Path)>, implicit: bool, password: Option<&str>) -> SmtpSink {
        let has = Command::new(SYSTEM_PYTHON)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has,
            "Debian's python3-aiosmtpd is required (apt-get install python3-aiosmtpd)"
        );
        let out = dir.join(if implicit { "smtps-received" } else { "smtp-received" });
        std::fs::create_dir_all(&out).expect("mkdir");
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_sink.py");
        let mut args = vec![script.to_string(), port.to_string(), out.display().to_string()];
        if let Some((cert, key)) = tls {
            args.push(cert.display().to_string());
            args.push(key.display().to_string());
            if implicit {
                args.push("implicit".into());
            }
        }
        let mut sink = SmtpSink {
            port,
            dir: out,
            child: None,
            args,
            password: password.map(str::to_string),
            rejects: None,
        };
        sink.resume();
        sink
    }

    /// A plain server that answers RCPT TO for some recipients with a
    /// refusal: `rejects` is `"a@x=550 5.1.1 text;b@x=451 4.3.0 text"`.
    pub fn start_rejecting(dir: &Path, rejects: &str) -> SmtpSink {
        let mut sink = Self::start(dir, None);
        sink.stop();
        sink.rejects = Some(rejects.to_string());
        sink.resume();
        sink
    }

    /// Starts the server (again), waiting until it listens.
    pub fn resume(&mut self) {
        let mut cmd = Command::new(SYSTEM_PYTHON);
        if let Some(pw) = &self.password {
            cmd.env("SMTP_SINK_PASSWORD", pw);
        }
        if let Some(rejects) = &self.rejects {
            cmd.env("SMTP_SINK_REJECT", rejects);
        }
        let mut child = cmd
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp sink");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read ready");
        assert_eq!(line.trim(), "ready", "smtp sink did not start");
        self.child = Some(child);
    }

    /// Stops the server: an outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Received messages, oldest first: (envelope JSON, raw message).
    pub fn messages(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "msg"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).expect("read message");
                let nl = bytes.iter().position(|b| *b == b'\n').expect("meta line");
                (
                    serde_json::from_slice(&bytes[..nl]).expect("meta"),
                    bytes[nl + 1..].to_vec(),
                )
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private CA and a leaf for localhost/127.0.0.1, made with openssl.
pub fn make_test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=keywarden test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (dir.join("ca.pem"), dir.join("leaf.pem"), dir.join("leaf.key"))
}

/// Makes sure a journald is listening, starting one when none runs (as
/// root). A socket file left by a journald that died does not count: only a
/// socket that accepts a connection does.
pub fn ensure_journald() {
    static STARTED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::Path::new("/run/systemd/journal");
    let alive = || std::os::unix::net::UnixDatagram::unbound().is_ok_and(|s| s.connect(dir.join("socket")).is_ok());
    if alive() {
        return;
    }
    for stale in ["socket", "stdout", "dev-log"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    std::fs::create_dir_all(dir).expect("create /run/systemd/journal (run the tests as root, or run journald)");
    // Detached through sh: journald outlives this test process.
    let started = std::process::Command::new("sh")
        .args(["-c", "/lib/systemd/systemd-journald >/dev/null 2>&1 &"])
        .status()
        .expect("start /lib/systemd/systemd-journald");
    assert!(started.success(), "could not start /lib/systemd/systemd-journald");
    for _ in 0..50 {
        if alive() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("journald did not start listening on /run/systemd/journal/socket");
}

/// The journal entries of process `pid` matching `filter`, written since
/// this test process started: a PID used by a daemon of an earlier run is
/// not mistaken for this one.
pub fn journal_entries(pid: u32, filter: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("journalctl")
        .args([
            "-o",
            "json",
            "--no-pager",
            &format!("--since=@{}", this_process_started()),
            &format!("_PID={pid}"),
            filter,
        ])
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// When this test process started, in seconds since the epoch (the boot
/// time from /proc/stat plus the start time in /proc/self/stat).
fn this_process_started() -> u64 {
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0);
    let ticks: u64 = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().nth(19).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    (boot + ticks / hz).saturating_sub(1)
}

pub mod pebble;
pub mod postfix;
pub mod proxy;
