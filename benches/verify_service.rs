//! The verification service over its Unix socket, on PostgreSQL, in one run:
//!
//! 1. cold verification (a daemon with `cache_ttl = "0s"`: Argon2 every
//!    time) beside raw Argon2 verifying the same stored hash at the same
//!    parameters in this process, alternating, one caller and then two at
//!    once (two cores);
//! 2. hot verification (the cache on): callers on kept-alive connections
//!    for a few seconds; p50/p99/max latency and throughput;
//! 3. revocation: two daemons (replicas) on the database; `keywarden keys
//!    revoke` run as a process, and a caller of the other replica polling
//!    until the key is refused; the time from the command's exit (and from
//!    its start) to the first refusal.
//!
//! Run: `cargo bench --bench verify_service` (KEYWARDEN_TEST_DATABASE_URL or
//! postgres://postgres@127.0.0.1:5432/postgres; KEYWARDEN_BENCH_ROUNDS,
//! default 3; KEYWARDEN_BENCH_HOT_SECS, default 5; KEYWARDEN_BENCH_CALLERS,
//! default 4; KEYWARDEN_BENCH_REVOKES, default 20).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark may fail loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn admin_url() -> String {
    std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A kept-alive connection to the service.
struct Caller {
    stream: BufReader<UnixStream>,
}

impl Caller {
    fn connect(socket: &Path) -> Caller {
        let s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Caller {
            stream: BufReader::new(s),
        }
    }

    /// One verification; the answer's body.
    fn verify(&mut self, body: &str) -> String {
        let req = format!(
            "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.exchange(&req)
    }

    fn get(&mut self, path: &str) -> String {
        self.exchange(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
    }

    fn exchange(&mut self, req: &str) -> String {
        self.stream.get_mut().write_all(req.as_bytes()).unwrap();
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut buf = vec![0u8; length];
        self.stream.read_exact(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }
}

fn start_daemon(config: &Path, socket: &Path) -> Child {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not serve {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop_daemon(mut child: Child) -> u64 {
    let hwm = peak_rss_kib(child.id());
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    hwm
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn keywarden(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write_config(dir: &Path, name: &str, url: &str, socket: &Path, ttl: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[daemon]\nlog_target = \"stderr\"\n[database]\nurl = \"{url}\"\n[notifications]\nfile_dir = \"{}\"\n\
             [verify]\nsocket = \"{}\"\ncache_ttl = \"{ttl}\"\n",
            dir.join("outbox").display(),
            socket.display()
        ),
    )
    .unwrap();
    path
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's busy and idle CPU seconds (all cores) from /proc/stat.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    ((total - idle) / 100.0, idle / 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `per_thread` calls of `f` on each of `threads` threads at once; the
/// calls per second.
fn rate(threads: usize, per_thread: usize, f: impl Fn(usize) + Sync) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                for _ in 0..per_thread {
                    f(t)
                }
            });
        }
    });
    (threads * per_thread) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rounds = env_or("KEYWARDEN_BENCH_ROUNDS", 3);
    let hot_secs = env_or("KEYWARDEN_BENCH_HOT_SECS", 5) as u64;
    let callers = env_or("KEYWARDEN_BENCH_CALLERS", 4);
    let revokes = env_or("KEYWARDEN_BENCH_REVOKES", 20);
    let dir = tempfile::tempdir().unwrap();
    let name = format!("kw_bench_verify_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::establish(&admin_url()).unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .unwrap();
    let mut url = url::Url::parse(&admin_url()).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();

    let (sock_cold, sock_a, sock_b) = (
        dir.path().join("cold.sock"),
        dir.path().join("a.sock"),
        dir.path().join("b.sock"),
    );
    let cfg_cold = write_config(dir.path(), "cold.toml", &url, &sock_cold, "0s");
    let cfg_a = write_config(dir.path(), "a.toml", &url, &sock_a, "30s");
    let cfg_b = write_config(dir.path(), "b.toml", &url, &sock_b, "30s");
    keywarden(&cfg_a, &["migrate"]);
    keywarden(&cfg_a, &["users", "add", "bench@example.com"]);
    let key = keywarden(
        &cfg_a,
        &[
            "keys",
            "create",
            "--owner",
            "bench@example.com",
            "--name",
            "hot",
            "--scopes",
            "read",
        ],
    );
    let (prefix, secret) = key.split_once('.').unwrap();
    let body =
        serde_json::json!({"key": key, "ip": "10.0.0.1", "scopes": ["read"], "endpoint": "GET /bench"}).to_string();

    // The raw reference: the same stored hash, the same parameters, the
    // same Argon2 implementation, in this process.
    let mut conn = PgConnection::establish(&url).unwrap();
    let phc: String = keywarden::db::schema::api_keys::table
        .filter(keywarden::db::schema::api_keys::prefix.eq(prefix))
        .select(keywarden::db::schema::api_keys::key_hash)
        .first(&mut conn)
        .unwrap();
    let hasher = keywarden::keys::hash::SecretHasher::new(&keywarden::config::KeysConfig::default().argon2).unwrap();
    assert!(hasher.verify(secret, &phc));
    println!("stored hash parameters: {}", phc.split('$').nth(3).unwrap_or("?"));

    // 1. Cold beside raw.
    let cold = start_daemon(&cfg_cold, &sock_cold);
    let n = 40;
    let (mut ratios_one, mut ratios_two, mut cold_rates) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let raw_one = rate(1, n, |_| assert!(hasher.verify(secret, &phc)));
        let mut c = Caller::connect(&sock_cold);
        let started = Instant::now();
        for _ in 0..n {
            let a = c.verify(&body);
            assert!(a.contains("\"valid\""), "{a}");
        }
        let cold_one = n as f64 / started.elapsed().as_secs_f64();
        let raw_two = rate(2, n, |_| assert!(hasher.verify(secret, &phc)));
        let (daemon_before, machine_before) = (cpu_secs(cold.id()), machine_cpu());
        let cold_two = rate(2, n, |_| {
            thread_local!(static C: std::cell::RefCell<Option<Caller>> = const { std::cell::RefCell::new(None) });
            C.with(|c| {
                let mut c = c.borrow_mut();
                let caller = c.get_or_insert_with(|| Caller::connect(&sock_cold));
                let a = caller.verify(&body);
                assert!(a.contains("\"valid\""), "{a}");
            })
        });
        let daemon_cpu = (cpu_secs(cold.id()) - daemon_before) / (2 * n) as f64 * 1e3;
        let machine_after = machine_cpu();
        println!(
            "round {round}: two at once: the daemon spent {daemon_cpu:.2} ms of CPU per verification; the machine {:.2} s busy, {:.2} s idle",
            machine_after.0 - machine_before.0,
            machine_after.1 - machine_before.1
        );
        println!(
            "round {round}: one caller: raw Argon2 {:.2} ms, cold over the socket {:.2} ms ({:.3}x); two at once: raw {:.1}/s, cold {:.1}/s ({:.3}x)",
            1000.0 / raw_one,
            1000.0 / cold_one,
            raw_one / cold_one,
            raw_two,
            cold_two,
            raw_two / cold_two
        );
        ratios_one.push(raw_one / cold_one);
        ratios_two.push(raw_two / cold_two);
        cold_rates.push(cold_two);
    }
    let cold_rss = stop_daemon(cold);
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let cold_rate = median(cold_rates);
    println!(
        "cold: time per verification / raw Argon2's: median {:.3}x (one caller), {:.3}x (two at once); cold rate {cold_rate:.1}/s; daemon peak RSS {} MiB",
        median(ratios_one),
        median(ratios_two),
        cold_rss / 1024
    );

    // 2. Hot.
    let a = start_daemon(&cfg_a, &sock_a);
    let mut warm = Caller::connect(&sock_a);
    warm.verify(&body);
    assert!(warm.verify(&body).contains("\"cached\":true"));
    let deadline = Instant::now() + Duration::from_secs(hot_secs);
    let started = Instant::now();
    let watched = std::sync::atomic::AtomicBool::new(true);
    let (max_pending, max_rss) = (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    );
    let per_caller: Vec<Vec<f64>> = std::thread::scope(|s| {
        // The daemon's pending uses and resident memory, twice a second.
        s.spawn(|| {
            let mut c = Caller::connect(&sock_a);
            while watched.load(std::sync::atomic::Ordering::Relaxed) {
                let h = c.get("/v1/health");
                let v: serde_json::Value = serde_json::from_str(&h).unwrap_or_default();
                max_pending.fetch_max(
                    v["pending_uses"].as_u64().unwrap_or(0),
                    std::sync::atomic::Ordering::Relaxed,
                );
                max_rss.fetch_max(rss_kib(a.id()), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let body = &body;
                let sock = &sock_a;
                s.spawn(move || {
                    let mut c = Caller::connect(sock);
                    let mut lat = Vec::with_capacity(200_000);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let a = c.verify(body);
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        debug_assert!(a.contains("\"cached\":true"));
                    }
                    lat
                })
            })
            .collect();
        let lat = handles.into_iter().map(|h| h.join().unwrap()).collect();
        watched.store(false, std::sync::atomic::Ordering::Relaxed);
        lat
    });
    println!(
        "hot: at most {} uses were waiting to be written; resident memory at most {} MiB",
        max_pending.into_inner(),
        max_rss.into_inner() / 1024
    );
    let elapsed = started.elapsed().as_secs_f64();
    let mut all: Vec<f64> = per_caller.into_iter().flatten().collect();
    let count = all.len();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let hot_rate = count as f64 / elapsed;
    println!(
        "hot: {callers} callers, {count} verifications in {elapsed:.1} s: {hot_rate:.0}/s ({:.0}x the cold rate); latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        hot_rate / cold_rate,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all[count - 1],
    );

    // 3. Revocation seen by the other replica.
    let b = start_daemon(&cfg_b, &sock_b);
    let (mut from_exit, mut from_start) = (Vec::new(), Vec::new());
    for i in 0..revokes {
        let k = keywarden(
            &cfg_a,
            &[
                "keys",
                "create",
                "--owner",
                "bench@example.com",
                "--name",
                &format!("r{i}"),
            ],
        );
        let kbody = serde_json::json!({"key": k}).to_string();
        let mut poll = Caller::connect(&sock_b);
        poll.verify(&kbody);
        assert!(poll.verify(&kbody).contains("\"cached\":true"));
        let p = k.split_once('.').unwrap().0.to_string();
        let cfg = cfg_a.clone();
        let started = Instant::now();
        let revoker = std::thread::spawn(move || {
            keywarden(&cfg, &["keys", "revoke", &p, "--reason", "bench"]);
            Instant::now()
        });
        let refused_at = loop {
            let a = poll.verify(&kbody);
            if a.contains("\"refused\"") {
                break Instant::now();
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never refused: {a}");
        };
        let exited = revoker.join().unwrap();
        from_exit.push(refused_at.saturating_duration_since(exited).as_secs_f64() * 1e3);
        from_start.push(refused_at.duration_since(started).as_secs_f64() * 1e3);
    }
    from_exit.sort_by(|a, b| a.partial_cmp(b).unwrap());
    from_start.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "revocation on one replica to refusal on the other, {revokes} keys: after the command exits p50 {:.2} ms, max {:.2} ms; from the command's start p50 {:.1} ms, max {:.1} ms",
        percentile(&from_exit, 0.5),
        from_exit[revokes - 1],
        percentile(&from_start, 0.5),
        from_start[revokes - 1],
    );
    let rss_a = stop_daemon(a);
    stop_daemon(b);
    let uses: i64 = keywarden::db::schema::api_keys::table
        .filter(keywarden::db::schema::api_keys::prefix.eq(prefix))
        .select(keywarden::db::schema::api_keys::usage_count)
        .first(&mut conn)
        .unwrap();
    println!(
        "usage_count of the hot key after the run: {uses} (expected {}); hot daemon peak RSS {} MiB",
        count as i64 + 2 + (rounds * n * 3) as i64,
        rss_a / 1024
    );
    drop(conn);
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin);
}
