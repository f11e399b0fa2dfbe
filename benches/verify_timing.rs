//! Can time tell an unknown prefix from a known prefix with a wrong secret?
//!
//! For each case, 200 verifications of each kind, interleaved at random,
//! timed (a) inside one long-running service (`KeyService::verify` in this
//! process) and (b) as fresh processes (`keywarden keys verify`, the key on
//! stdin, timed as whole processes). The figure is the accuracy of the best
//! threshold classifier on the two sets of times: 50 % means time says
//! nothing, 100 % that it tells every time. Goal: at most 60 %.
//!
//! The cases: keys at the configured cost; then `keys.argon2.memory_kib`
//! raised, the stored keys keeping their old cost.
//!
//! Run: `cargo bench --bench verify_timing` (KEYWARDEN_BENCH_SAMPLES, default
//! 200). SQLite in a temporary directory: the database is not what is timed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use keywarden::keys::{CreateKey, KeyService, VerifyRequest};

const BIN: &str = env!("CARGO_BIN_EXE_keywarden");

fn samples() -> usize {
    std::env::var("KEYWARDEN_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    u64::from_le_bytes(b)
}

/// A secret of the right shape that matches nothing.
fn random_secret() -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("random");
    Base64UrlUnpadded::encode_string(&b)
}

/// Accuracy of the best single threshold separating `a` from `b`.
fn best_threshold_accuracy(a: &[f64], b: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|x| (*x, true))
        .chain(b.iter().map(|x| (*x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len() as f64;
    let (mut a_below, mut b_below) = (0usize, 0usize);
    let mut best: f64 = 0.5;
    for (_, is_a) in &all {
        if *is_a {
            a_below += 1;
        } else {
            b_below += 1;
        }
        // "a is faster" and "b is faster", whichever is right more often.
        let one = (a_below + (b.len() - b_below)) as f64 / n;
        let other = (b_below + (a.len() - a_below)) as f64 / n;
        best = best.max(one).max(other);
    }
    best
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|x, y| x.total_cmp(y));
    s[s.len() / 2]
}

fn write_config(dir: &Path, memory_kib: u32) -> std::path::PathBuf {
    let path = dir.join(format!("k{memory_kib}.toml"));
    std::fs::write(
        &path,
        format!(
            "[daemon]\nlog_level = \"error\"\n\n[database]\nurl = \"sqlite://{}/k.db\"\n\n[keys.argon2]\nmemory_kib = {memory_kib}\n",
            dir.display()
        ),
    )
    .expect("config");
    path
}

/// Times `n` presentations of each kind, interleaved at random.
fn measure(
    n: usize,
    mut time_one: impl FnMut(&str) -> f64,
    known: &str,
    unknown: &dyn Fn() -> String,
) -> (Vec<f64>, Vec<f64>) {
    let (mut k, mut u) = (Vec::new(), Vec::new());
    while k.len() < n || u.len() < n {
        let pick_known = u.len() >= n || (k.len() < n && random_u64() % 2 == 0);
        if pick_known {
            let key = format!("{known}.{}", random_secret());
            k.push(time_one(&key));
        } else {
            u.push(time_one(&unknown()));
        }
    }
    (k, u)
}

fn report(case: &str, how: &str, known: &[f64], unknown: &[f64]) {
    println!(
        "{case:<34} {how:<16} known-prefix median {:>7.2} ms, unknown median {:>7.2} ms, best-threshold accuracy {:>5.1} %",
        median(known),
        median(unknown),
        100.0 * best_threshold_accuracy(known, unknown)
    );
}

fn main() {
    let n = samples();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = write_config(dir.path(), 19456);
    let config = keywarden::jobs::load_config(&base).expect("config");
    let database = keywarden::db::Database::new(&config.database, &config.load_secrets().expect("secrets"));
    let mut conn = database.connect().expect("connect");
    keywarden::db::migrate::run_pending(&mut conn).expect("migrate");
    for o in 0..2 {
        keywarden::keys::users::add(&mut conn, &format!("bench{o}@example.com"), None).expect("owner");
    }
    let service = KeyService::new(&config.keys).expect("service");
    let mut prefixes = Vec::new();
    for i in 0..20 {
        let issued = service
            .create(
                &mut conn,
                &CreateKey {
                    owner_email: format!("bench{}@example.com", i % 2),
                    name: format!("bench {i}"),
                    scopes: Vec::new(),
                    allowed_ips: Vec::new(),
                    lifetime: None,
                },
                "bench",
            )
            .expect("key");
        prefixes.push(issued.key.prefix.clone());
    }
    let known = prefixes[7].clone();
    let unknown = || format!("sk_live_v2_{:016x}.{}", random_u64(), random_secret());
    let req = VerifyRequest {
        actor: "bench",
        ..VerifyRequest::default()
    };
    println!("{n} samples of each kind, interleaved; goal: accuracy at most 60 %");
    for (case, memory_kib) in [
        ("keys at the configured cost", 19456u32),
        ("after memory_kib 19456 -> 38912", 38912u32),
    ] {
        let cfg_path = write_config(dir.path(), memory_kib);
        let cfg = keywarden::jobs::load_config(&cfg_path).expect("config");
        // A long-running service: one KeyService, warm.
        let svc = KeyService::new(&cfg.keys).expect("service");
        let _ = svc.verify(&mut conn, &unknown(), &req);
        let (k, u) = measure(
            n,
            |key| {
                let start = Instant::now();
                let _ = svc.verify(&mut conn, key, &req).expect("verify");
                start.elapsed().as_secs_f64() * 1000.0
            },
            &known,
            &unknown,
        );
        report(case, "in one service", &k, &u);
        // Fresh processes, as a script calling the command line would.
        let (k, u) = measure(
            n,
            |key| {
                let start = Instant::now();
                let mut child = Command::new(BIN)
                    .args(["--config", cfg_path.to_str().expect("utf-8"), "keys", "verify"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("keywarden");
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(key.as_bytes());
                }
                let _ = child.wait();
                start.elapsed().as_secs_f64() * 1000.0
            },
            &known,
            &unknown,
        );
        report(case, "fresh processes", &k, &u);
    }
}
