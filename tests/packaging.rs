//! The systemd unit as Debian 12's systemd judges it.

use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/keywarden.service");

#[test]
fn the_unit_scores_1_8_or_better_offline() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=18", UNIT])
        .output()
        .expect("systemd-analyze (Debian's systemd) is required");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 1.8:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for keywarden.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("an overall exposure line");
    assert!(score <= 1.8, "{score}");
}

#[test]
fn the_unit_checks_the_config_before_start_and_reload() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/bin/keywarden --config /etc/keywarden/keywarden.toml check-config",
        "ExecReload=/usr/bin/keywarden --config /etc/keywarden/keywarden.toml check-config",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=78",
        "UMask=0077",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing: {line}");
    }
    // The configuration the unit points at is the shipped default, and valid.
    let out = Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/keywarden.toml"),
            "check-config",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn every_message_id_has_a_catalog_entry() {
    let catalog = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/keywarden.catalog")).unwrap();
    let ids: Vec<&str> = catalog.lines().filter_map(|l| l.strip_prefix("-- ")).collect();
    for id in keywarden::telemetry::message_ids::ALL {
        assert!(ids.contains(&id), "no catalog entry for {id}");
    }
    assert_eq!(
        ids.len(),
        keywarden::telemetry::message_ids::ALL.len(),
        "entries for ids the daemon never emits"
    );
    for id in ids {
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    }
}
