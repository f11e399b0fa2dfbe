//! The leak scanner, in one run:
//!
//! 1. scan rate over a tree of mixed text files (1 GiB by default: logs,
//!    JSON, env files, with `_v2_` look-alikes and three real keys) beside
//!    ripgrep searching the same `_v2_` literal (`rg -F -c --no-ignore
//!    --hidden`, on all cores and on one), alternating, page cache warm;
//!    keywarden is `keywarden leaks scan --json DIR`, whole-process, one
//!    thread, every key-shaped string confirmed against the database;
//! 2. write to revocation: a daemon watching a log; a fresh key appended
//!    to it 200 times, the time from the write to the key's revoked status
//!    in the database (polled every millisecond); p50/p99/max.
//!
//! Run: `cargo bench --bench leak_scan` (PostgreSQL from
//! KEYWARDEN_TEST_DATABASE_URL or postgres://postgres@127.0.0.1:5432/postgres;
//! KEYWARDEN_BENCH_TREE_MIB, default 1024; KEYWARDEN_BENCH_ROUNDS, default 3;
//! KEYWARDEN_BENCH_PLANTS, default 200).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark may fail loudly

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn admin_url() -> String {
    std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Writes `total` bytes of mixed text files under `dir`; `keys` are
/// planted at random places.
fn make_tree(dir: &Path, total: u64, keys: &[String]) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let words = [
        "orders", "users", "billing", "health", "search", "cart", "v2", "checkout", "api", "admin",
    ];
    let levels = ["INFO", "WARN", "DEBUG", "ERROR"];
    let mut written = 0u64;
    let mut file_no = 0;
    while written < total {
        let kind = file_no % 4;
        let sub = dir.join(format!("svc{}/{}", file_no % 16, ["log", "etc", "data", "tmp"][kind]));
        std::fs::create_dir_all(&sub).unwrap();
        let name = sub.join(format!("f{file_no}.{}", ["log", "env", "json", "txt"][kind]));
        let target = 64 * 1024 + rng.next() % (1 << 20);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&name).unwrap());
        let mut n = 0u64;
        while n < target {
            let line = match kind {
                0 => format!(
                    "2026-12-01T{:02}:{:02}:{:02}Z {} req={:016x} path=/api/{}/{} status={} ms={}\n",
                    rng.next() % 24,
                    rng.next() % 60,
                    rng.next() % 60,
                    rng.pick(&levels),
                    rng.next(),
                    rng.pick(&words),
                    rng.next() % 100000,
                    [200, 201, 404, 500][(rng.next() % 4) as usize],
                    rng.next() % 900
                ),
                1 => format!(
                    "{}_{}_URL=https://{}.internal:{}/\n",
                    rng.pick(&words).to_uppercase(),
                    rng.next() % 100,
                    rng.pick(&words),
                    8000 + rng.next() % 1000
                ),
                2 => format!(
                    "{{\"id\": {}, \"name\": \"{}\", \"tags\": [\"{}\", \"{}\"], \"schema\": \"{}_v2_{}\"}}\n",
                    rng.next() % 1_000_000,
                    rng.pick(&words),
                    rng.pick(&words),
                    rng.pick(&words),
                    rng.pick(&words),
                    rng.next() % 100
                ),
                _ => format!(
                    "{} {} {} {} {}\n",
                    rng.pick(&words),
                    rng.pick(&words),
                    rng.next(),
                    rng.pick(&words),
                    rng.pick(&words)
                ),
            };
            out.write_all(line.as_bytes()).unwrap();
            n += line.len() as u64;
        }
        if let Some(k) = keys.get(file_no / 300) {
            if file_no % 300 == 7 {
                writeln!(out, "Authorization: Bearer {k}").unwrap();
            }
        }
        written += n;
        file_no += 1;
    }
    written
}

/// Wall seconds of one whole process (output discarded).
fn timed(program: &str, args: &[&str]) -> f64 {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(status.code().is_some(), "{program} was killed");
    secs
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mib = env_or("KEYWARDEN_BENCH_TREE_MIB", 1024);
    let rounds = env_or("KEYWARDEN_BENCH_ROUNDS", 3) as usize;
    let plants = env_or("KEYWARDEN_BENCH_PLANTS", 200) as usize;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("kw_bench_leaks_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::establish(&admin_url()).unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .unwrap();
    let mut url = url::Url::parse(&admin_url()).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let tree = dir.path().join("tree");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config = dir.path().join("k.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlog_target = \"stderr\"\n[database]\nurl = \"{url}\"\n[notifications]\nfile_dir = \"{}\"\n[keys]\nmax_keys_per_owner = 100000\n[leaks]\nroots = [\"{}\"]\naction = \"revoke\"\n",
            dir.path().join("outbox").display(),
            logs.display()
        ),
    )
    .unwrap();
    keywarden(&config, &["migrate"]);
    keywarden(&config, &["users", "add", "bench@example.com"]);
    let planted: Vec<String> = (0..3)
        .map(|i| {
            keywarden(
                &config,
                &[
                    "keys",
                    "create",
                    "--owner",
                    "bench@example.com",
                    "--name",
                    &format!("t{i}"),
                ],
            )
        })
        .collect();
    let bytes = make_tree(&tree, mib << 20, &planted);
    let tree_s = tree.to_str().unwrap().to_string();
    // Warm the page cache for both.
    timed("rg", &["-F", "-c", "--no-ignore", "--hidden", "_v2_", &tree_s]);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let (mut ours, mut rg_all, mut rg_one) = (Vec::new(), Vec::new(), Vec::new());
    let cfg_s = config.to_str().unwrap().to_string();
    for round in 1..=rounds {
        let k = timed(BIN, &["--config", &cfg_s, "leaks", "scan", "--json", &tree_s]);
        let a = timed("rg", &["-F", "-c", "--no-ignore", "--hidden", "_v2_", &tree_s]);
        let o = timed("rg", &["-F", "-c", "--no-ignore", "--hidden", "-j1", "_v2_", &tree_s]);
        println!(
            "round {round}: keywarden leaks scan {k:.2} s ({:.2} GiB/s); rg {a:.2} s ({:.2} GiB/s, {:.2}x); rg -j1 {o:.2} s ({:.2} GiB/s, {:.2}x)",
            gib / k,
            gib / a,
            a / k,
            gib / o,
            o / k
        );
        ours.push(k);
        rg_all.push(a);
        rg_one.push(o);
    }
    let (k, a, o) = (median(ours), median(rg_all), median(rg_one));
    let out = Command::new(BIN)
        .args(["--config", &cfg_s, "leaks", "scan", "--json", &tree_s])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!(
        "scan of {gib:.2} GiB in {} files: keywarden {k:.2} s ({:.2} GiB/s), rg {a:.2} s ({:.2}x of rg's rate), rg -j1 {o:.2} s ({:.2}x); live keys found: {} (exit {:?})",
        report["scanned"]["files"],
        gib / k,
        a / k,
        o / k,
        report["findings"].as_array().map(|f| f.len()).unwrap_or(0),
        out.status.code()
    );
    std::fs::remove_dir_all(&tree).unwrap();

    // 2. Write to revocation.
    let keys: Vec<String> = (0..plants)
        .map(|i| {
            keywarden(
                &config,
                &[
                    "keys",
                    "create",
                    "--owner",
                    "bench@example.com",
                    "--name",
                    &format!("p{i}"),
                ],
            )
        })
        .collect();
    let log = logs.join("app.log");
    std::fs::write(&log, "start\n").unwrap();
    let mut daemon = Command::new(BIN)
        .args(["--config", &cfg_s, "run"])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut conn = PgConnection::establish(&url).unwrap();
    let mut times = Vec::new();
    for k in &keys {
        let prefix = k.split('.').next().unwrap();
        let started = Instant::now();
        {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            writeln!(f, "GET /api/orders 401 x-api-key={k} ua=curl/8.5").unwrap();
        }
        loop {
            let status: String = keywarden::db::schema::api_keys::table
                .filter(keywarden::db::schema::api_keys::prefix.eq(prefix))
                .select(keywarden::db::schema::api_keys::status)
                .first(&mut conn)
                .unwrap();
            if status == "revoked" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{prefix} not revoked after 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let _ = Command::new("kill").arg("-TERM").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "write to revocation, {plants} keys appended to a watched log: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p(0.5),
        p(0.99),
        times[times.len() - 1]
    );
    drop(conn);
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin);
}
