//! An idle daemon's wake-ups: `keywarden run` with every job on its default
//! schedule, watch-perms watching a small tree, nothing to do; every thread's
//! context switches read from `/proc/PID/task/*/status` before and after the
//! idle period, per second. A scheduled tick that falls inside the period is
//! real work and is counted too (renew-certs runs every 5 minutes).
//!
//! Run: `cargo bench --bench idle` (SQLite in a temporary directory;
//! KEYWARDEN_BENCH_IDLE_SECS, default 300 after a 15-second settle;
//! KEYWARDEN_BENCH_BIN measures another build, an earlier one say, instead).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");

/// Voluntary and involuntary context switches of every thread of `pid`.
fn switches(pid: u32) -> (u64, u64, usize) {
    let (mut voluntary, mut involuntary, mut threads) = (0, 0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        threads += 1;
        for line in status.lines() {
            let value = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("voluntary_ctxt_switches:") {
                voluntary += value(line);
            } else if line.starts_with("nonvoluntary_ctxt_switches:") {
                involuntary += value(line);
            }
        }
    }
    (voluntary, involuntary, threads)
}

fn main() {
    let secs: u64 = std::env::var("KEYWARDEN_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("srv");
    for d in 0..20 {
        let sub = tree.join(format!("app{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("index.js"), "x").unwrap();
    }
    let config = dir.path().join("k.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlog_target = \"stderr\"\n[database]\nurl = \"sqlite://{0}/k.db\"\n\
             [notifications]\nfile_dir = \"{0}/outbox\"\n[permissions]\nroots = [\"{1}\"]\n",
            dir.path().display(),
            tree.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let bin = std::env::var("KEYWARDEN_BENCH_BIN").unwrap_or_else(|_| BIN.to_string());
    assert!(Command::new(&bin)
        .args(["--config", &config, "migrate"])
        .output()
        .unwrap()
        .status
        .success());
    let mut child = Command::new(&bin)
        .args(["--config", &config, "run"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Start-up (migrations, the first scan, the idle blocking threads ending).
    std::thread::sleep(Duration::from_secs(15));
    let before = switches(child.id());
    std::thread::sleep(Duration::from_secs(secs));
    let after = switches(child.id());
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let voluntary = after.0 - before.0;
    let involuntary = after.1 - before.1;
    println!("idle daemon ({bin}) over {secs} s ({} threads at the end):", after.2);
    println!(
        "  context switches: {voluntary} voluntary, {involuntary} involuntary: {:.3} wake-ups/s",
        (voluntary + involuntary) as f64 / secs as f64
    );
}
