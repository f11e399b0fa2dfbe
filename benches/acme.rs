//! Issuing one certificate from a cold start (no account yet) against a
//! local Pebble with validation skipped and no sleeps, keywarden beside
//! Debian's certbot against the same Pebble, in one run; each whole process
//! under `/usr/bin/time -f %M` for its peak memory, median of the rounds.
//!
//! Run: `cargo bench --bench acme` (needs `pebble` and `certbot`:
//! apt-get install pebble certbot; KEYWARDEN_BENCH_ROUNDS, default 5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::pebble::{Options, Pebble};

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");

fn rounds() -> usize {
    std::env::var("KEYWARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Runs a command under /usr/bin/time; returns wall time and peak RSS (KiB).
fn timed(cmd: &mut Command) -> (Duration, u64) {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("run");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rss = stderr.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    (took, rss)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn keywarden_round(dir: &Path, pebble: &Pebble) -> (Duration, u64) {
    let config = dir.join("k.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"sqlite://{}/k.db\"\n{}\n[[certificates]]\nname = \"bench\"\ndomains = [\"bench.test\"]\n\
             challenge = {{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}\ncert_file = \"{}/fullchain.pem\"\nkey_file = \"{}/privkey.pem\"\n",
            dir.display(),
            pebble.acme_section(&dir.join("account.json")),
            pebble.http_port,
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    let migrated = Command::new(BIN)
        .args(["--config", &config.display().to_string(), "migrate"])
        .output()
        .unwrap();
    assert!(migrated.status.success());
    timed(
        Command::new("/usr/bin/time")
            .args(["-f", "%M", BIN, "--config", &config.display().to_string()])
            .args(["certs", "renew", "bench"]),
    )
}

fn certbot_round(dir: &Path, pebble: &Pebble) -> (Duration, u64) {
    let d = dir.display().to_string();
    timed(
        Command::new("/usr/bin/time")
            .args(["-f", "%M", "certbot", "certonly", "--non-interactive", "--agree-tos"])
            .args(["--register-unsafely-without-email", "--standalone"])
            .args([
                "--http-01-address",
                "127.0.0.1",
                "--http-01-port",
                &pebble.http_port.to_string(),
            ])
            .args(["--server", &pebble.directory, "-d", "bench.test"])
            .args(["--key-type", "ecdsa", "--elliptic-curve", "secp256r1"])
            .args(["--config-dir", &format!("{d}/etc"), "--work-dir", &format!("{d}/work")])
            .args(["--logs-dir", &format!("{d}/logs")])
            .env("REQUESTS_CA_BUNDLE", &pebble.https_ca),
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = rounds();
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(
        dir.path(),
        Options {
            always_valid: true,
            ..Options::default()
        },
    );
    let (mut kw_times, mut cb_times, mut kw_rss, mut cb_rss) = (Vec::new(), Vec::new(), 0, 0);
    // A warm-up of each, then alternate so both see the same machine.
    for i in 0..=rounds {
        let k = tempfile::tempdir().unwrap();
        let (t, rss) = keywarden_round(k.path(), &pebble);
        let c = tempfile::tempdir().unwrap();
        let (u, rss_c) = certbot_round(c.path(), &pebble);
        if i > 0 {
            kw_times.push(t);
            cb_times.push(u);
            kw_rss = kw_rss.max(rss);
            cb_rss = cb_rss.max(rss_c);
        }
    }
    let (k, c) = (median(kw_times), median(cb_times));
    println!(
        "one certificate from a cold start (new account, order, finalize, download, install), median of {rounds}:"
    );
    println!(
        "  keywarden certs renew   {:>7.0} ms   peak RSS {:>6} KiB",
        k.as_secs_f64() * 1e3,
        kw_rss
    );
    println!(
        "  certbot certonly        {:>7.0} ms   peak RSS {:>6} KiB",
        c.as_secs_f64() * 1e3,
        cb_rss
    );
    println!(
        "  certbot / keywarden: time {:.1}x, memory {:.1}x",
        c.as_secs_f64() / k.as_secs_f64(),
        cb_rss as f64 / kw_rss.max(1) as f64
    );
}
