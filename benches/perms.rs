//! Permission scanning and watching on a tree of 100,000 files in 1,000
//! directories, in one run:
//!
//! 1. a full scan, `keywarden perms scan` (the real binary, whole process),
//!    beside `find ROOT -printf '%m %U %G %p\n'` and Debian's AIDE
//!    `--init` with only p+u+g checked, warm cache, median of the rounds,
//!    each under `/usr/bin/time -f %M` for its peak memory;
//! 2. the daemon watching that tree: 1,000 chmods, one every 20 ms, each
//!    timed from the chmod to the `detected` row's `created_at` in the
//!    database (SQLite, the embedded default, and PostgreSQL);
//! 3. the daemon's resident memory while it watches.
//!
//! Run: `cargo bench --bench perms` (needs `aide`: apt-get install aide;
//! PostgreSQL from KEYWARDEN_TEST_DATABASE_URL or the local default;
//! KEYWARDEN_BENCH_ROUNDS, default 5; KEYWARDEN_BENCH_SCAN_TREE=/usr adds a
//! full scan of a real tree; KEYWARDEN_BENCH_BASELINE=BIN times an earlier
//! build's scan beside this one). Full scans report wall and CPU time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use keywarden::db::schema::permission_events;
use keywarden::db::Database;

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");
const DIRS_TOP: usize = 10;
const DIRS_SUB: usize = 100;
const FILES_PER_DIR: usize = 100;
const CHANGES: usize = 1000;

fn rounds() -> usize {
    std::env::var("KEYWARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The guide's layout, repeated: code 0644, scripts 0750, a secret 0600.
fn build_tree(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for t in 0..DIRS_TOP {
        for s in 0..DIRS_SUB {
            let dir = root.join(format!("svc{t}/mod{s}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for f in 0..FILES_PER_DIR {
                let (name, mode) = match f {
                    0 => (".env".to_string(), 0o600),
                    1 | 2 => (format!("run{f}.sh"), 0o750),
                    _ => (format!("file{f}.js"), 0o644),
                };
                let p = dir.join(name);
                std::fs::write(&p, "x").expect("write");
                chmod(&p, mode);
                files.push(p);
            }
        }
    }
    files
}

fn policy(root: &Path) -> String {
    format!(
        r#"[permissions]
roots = ["{root}"]

[[permissions.rules]]
name = "code"
paths = ["**/*.js"]
type = "file"
mode = "at most 0644"

[[permissions.rules]]
name = "scripts"
paths = ["**/*.sh"]
type = "file"
mode = "0750"

[[permissions.rules]]
name = "secrets"
paths = ["**/.env"]
type = "file"
mode = "0600"
"#,
        root = root.display()
    )
}

/// Runs a command `rounds` times after a warm-up; returns the median wall
/// time and the largest peak RSS (KiB).
/// Median wall time, median CPU time (user + system) and peak RSS (KiB)
/// of a whole process over the rounds, after one warm-up.
fn time_command(args: &[&str], rounds: usize) -> (Duration, Duration, u64) {
    let mut times = Vec::new();
    let mut cpus = Vec::new();
    let mut peak = 0;
    for i in 0..=rounds {
        let start = Instant::now();
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%U %S %M"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let fields: Vec<f64> = stderr
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if i > 0 && fields.len() == 3 {
            times.push(took);
            cpus.push(Duration::from_secs_f64(fields[0] + fields[1]));
            peak = peak.max(fields[2] as u64);
        }
    }
    times.sort();
    cpus.sort();
    (times[times.len() / 2], cpus[cpus.len() / 2], peak)
}

/// `keywarden perms scan` beside `find -printf` (and AIDE when installed)
/// on `root`: wall and CPU time, peak memory.
fn compare_scans(dir: &Path, root: &Path, rounds: usize, what: &str) {
    let config = dir.join(format!("scan-{}.toml", what.len()));
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}/scan.db\"\n{}",
            dir.display(),
            policy(root)
        ),
    )
    .expect("config");
    let aide_conf = dir.join("aide.conf");
    std::fs::write(
        &aide_conf,
        format!(
            "database_out=file:{}/aide.db.new\ngzip_dbout=no\nreport_url=stdout\nPUG = p+u+g\n{} PUG\n",
            dir.display(),
            root.display()
        ),
    )
    .expect("aide config");
    let root_s = root.display().to_string();
    let config_s = config.display().to_string();
    let aide_s = format!("--config={}", aide_conf.display());
    let kw = time_command(&[BIN, "--config", &config_s, "perms", "scan"], rounds);
    // An earlier build beside this one, when named.
    let baseline = std::env::var("KEYWARDEN_BENCH_BASELINE")
        .ok()
        .map(|bin| time_command(&[&bin, "--config", &config_s, "perms", "scan"], rounds));
    let find = time_command(&["find", &root_s, "-printf", "%m %U %G %p\\n"], rounds);
    let aide = Path::new("/usr/bin/aide")
        .exists()
        .then(|| time_command(&["/usr/bin/aide", &aide_s, "--init"], rounds));
    println!("full scan of {what}, median of {rounds} (warm cache, whole process):");
    let row = |name: &str, (wall, cpu, rss): (Duration, Duration, u64)| {
        println!(
            "  {name:<22} wall {:>8.1} ms  cpu {:>8.1} ms  peak RSS {:>6} KiB",
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            rss
        );
    };
    row("keywarden perms scan", kw);
    if let Some(b) = baseline {
        row("baseline perms scan", b);
    }
    row("find -printf", find);
    if let Some(a) = aide {
        row("aide --init (p+u+g)", a);
        println!(
            "  aide / keywarden wall = {:.1}",
            a.0.as_secs_f64() / kw.0.as_secs_f64()
        );
    }
    println!(
        "  keywarden / find: wall {:.2}, cpu {:.2}",
        kw.0.as_secs_f64() / find.0.as_secs_f64(),
        kw.1.as_secs_f64() / find.1.as_secs_f64()
    );
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Starts the daemon on `url`, makes CHANGES chmods and measures the delay
/// to each recorded event. Returns (p50, p99, max) in ms and the daemon's
/// RSS (KiB) after the start scan and after the changes.
fn watch_latency(dir: &Path, root: &Path, files: &[PathBuf], url: &str) -> ((f64, f64, f64), u64, u64) {
    let config = dir.join("watch.toml");
    let jobs_off = "[jobs.expire-keys]\nenabled = false\n[jobs.revoke-grace]\nenabled = false\n\
        [jobs.notify-expiry]\nenabled = false\n[jobs.purge-audit]\nenabled = false\n";
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlog_target = \"stderr\"\n[database]\nurl = \"{url}\"\n[notifications]\nfile_dir = \"{}\"\n{jobs_off}{}",
            dir.join("outbox").display(),
            policy(root)
        ),
    )
    .expect("config");
    let cfg = keywarden::jobs::load_config(&config).expect("config");
    let database = Database::new(&cfg.database, &Default::default());
    let mut conn = database.connect().expect("connect");
    keywarden::db::migrate::run_pending(&mut conn).expect("migrate");
    let mut child = Command::new(BIN)
        .args(["--config", &config.display().to_string(), "run"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("daemon");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("watch-perms start:") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the daemon's start scan");
    let rss_idle = rss_kib(child.id(), "VmRSS:");
    // Every 100th file, so the changes spread over the whole tree.
    let targets: Vec<&PathBuf> = files.iter().step_by(files.len() / CHANGES).take(CHANGES).collect();
    // Their modes as built (.env 0600, scripts 0750, code 0644), to put back.
    let original: Vec<u32> = targets
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777)
        .collect();
    let mut changed_at = Vec::new();
    for p in &targets {
        let at = chrono::Utc::now().naive_utc();
        chmod(p, 0o666);
        changed_at.push(at);
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut recorded: Vec<(String, chrono::NaiveDateTime)> = Vec::new();
    while Instant::now() < deadline {
        recorded = permission_events::table
            .filter(permission_events::action.eq("detected"))
            .select((permission_events::path, permission_events::created_at))
            .load(&mut conn)
            .expect("events");
        if recorded.len() >= targets.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_after = rss_kib(child.id(), "VmHWM:");
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let by_path: std::collections::HashMap<String, chrono::NaiveDateTime> = recorded.into_iter().collect();
    let mut delays: Vec<f64> = targets
        .iter()
        .zip(&changed_at)
        .map(|(p, at)| match by_path.get(&p.display().to_string()) {
            Some(rec) => (*rec - *at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0,
            None => f64::INFINITY,
        })
        .collect();
    delays.sort_by(|a, b| a.total_cmp(b));
    // Put the tree back as it was for the next backend: each file its own
    // mode (restoring every target to 0644 left the .env files drifted).
    for (p, mode) in targets.iter().zip(&original) {
        chmod(p, *mode);
    }
    (
        (
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays[delays.len() - 1],
        ),
        rss_idle,
        rss_after,
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = rounds();
    let dir = tempfile::Builder::new()
        .prefix("kw-bench-perms")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let root = dir.path().join("tree");
    let files = build_tree(&root);
    println!(
        "tree: {} files in {} directories under {}",
        files.len(),
        DIRS_TOP * DIRS_SUB + DIRS_TOP + 1,
        root.display()
    );

    // 1. Full scans.
    compare_scans(dir.path(), &root, rounds, "the generated tree");
    // A real tree too, when named (the issue's was a 265k-entry one).
    if let Ok(real) = std::env::var("KEYWARDEN_BENCH_SCAN_TREE") {
        compare_scans(dir.path(), Path::new(&real), rounds, &real);
    }

    // 2 and 3. Watching.
    let sqlite = format!("sqlite://{}/watch.db", dir.path().display());
    let admin = std::env::var("KEYWARDEN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut backends = vec![("sqlite", sqlite)];
    if let Ok(mut pg) = PgConnection::establish(&admin) {
        let _ = diesel::sql_query("DROP DATABASE IF EXISTS kw_bench_perms").execute(&mut pg);
        diesel::sql_query("CREATE DATABASE kw_bench_perms")
            .execute(&mut pg)
            .expect("create db");
        let mut u = url::Url::parse(&admin).expect("url");
        u.set_path("/kw_bench_perms");
        backends.push(("postgres", u.to_string()));
    }
    println!("chmod to recorded event, {CHANGES} changes one every 20 ms:");
    for (name, url) in backends {
        let ((p50, p99, max), idle, peak) = watch_latency(dir.path(), &root, &files, &url);
        println!(
            "  {name:<8}  p50 {p50:>6.1} ms  p99 {p99:>6.1} ms  max {max:>6.1} ms;  daemon RSS watching {} KiB, peak {} KiB",
            idle, peak
        );
    }
    if let Ok(mut pg) = PgConnection::establish(&admin) {
        let _ = diesel::sql_query("DROP DATABASE IF EXISTS kw_bench_perms WITH (FORCE)").execute(&mut pg);
    }
}
