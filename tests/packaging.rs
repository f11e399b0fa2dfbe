//! The systemd unit as Debian 12's systemd judges it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/keywarden.service");

/// The exposure score `systemd-analyze security --offline=true` gives a
/// unit file, after checking it passes the 1.8 gate.
fn exposure(unit: &std::path::Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=18"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian's systemd) is required");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 1.8:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.split("Overall exposure level for keywarden.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("an overall exposure line")
}

#[test]
fn the_unit_scores_1_8_or_better_offline() {
    let score = exposure(std::path::Path::new(UNIT));
    assert!(score <= 1.8, "{score}");
}

#[test]
fn the_remediation_drop_in_grants_exactly_three_capabilities_and_scores_1_8_or_better() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let drop_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/keywarden-remediation.conf"
    ))
    .unwrap();
    let caps = "CAP_CHOWN CAP_FOWNER CAP_DAC_READ_SEARCH";
    for line in [
        format!("CapabilityBoundingSet={caps}"),
        format!("AmbientCapabilities={caps}"),
        "PrivateUsers=no".to_string(),
        "SystemCallFilter=@chown".to_string(),
    ] {
        assert!(drop_in.lines().any(|l| l == line), "missing: {line}");
    }
    // systemd applies a drop-in as if its lines followed the unit's own.
    let dir = tempfile::tempdir().unwrap();
    let combined = dir.path().join("keywarden.service");
    let body = drop_in
        .lines()
        .filter(|l| *l != "[Service]")
        .collect::<Vec<_>>()
        .join("\n");
    let merged = unit.replace("\n[Install]\n", &format!("\n{body}\n\n[Install]\n"));
    assert_ne!(merged, unit);
    std::fs::write(&combined, merged).unwrap();
    let with = exposure(&combined);
    let without = exposure(std::path::Path::new(UNIT));
    assert!(
        with <= 1.8 && with > without,
        "with the drop-in {with}, without {without}"
    );
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
    // The configuration the unit points at is the shipped default, and valid
    // (its database directory is the package's; tests/cli.rs checks it with
    // the directory present).
    let out = Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/keywarden.toml"),
            "check-config",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || (err.lines().count() == 1 && err.contains("/var/lib/keywarden")),
        "{err}"
    );
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

#[test]
fn the_unit_forbids_core_files() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        unit.lines().any(|l| l == "LimitCORE=0"),
        "secrets live in memory: no core files"
    );
}

/// The man page is one page: it names no `keywarden-*(8)` page (none is
/// shipped), documents every command, shows `--config PATH` with its
/// argument, and lists every exit status the program uses.
#[test]
fn the_man_page_is_whole_and_names_no_missing_page() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keywarden"))
        .arg("manpage")
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    let named: Vec<&str> = page
        .lines()
        .filter(|l| l.contains("keywarden\\-") && l.contains("(8)"))
        .collect();
    assert!(named.is_empty(), "sub-pages are named: {named:?}");
    assert!(page.contains("\\fB\\-\\-config\\fR \\fIPATH\\fR"), "{page}");
    for command in [
        "keywarden keys create",
        "keywarden certs renew",
        "keywarden perms scan",
        "keywarden jobs run",
    ] {
        assert!(
            page.contains(&format!(".SS \"{}", command.replace('-', "\\-"))),
            "{command} is not documented"
        );
    }
    let status = &page[page.find(".SH \"EXIT STATUS\"").unwrap()..];
    for code in ["\n0\n", "\n1\n", "\n2\n", "\n3\n", "\n75\n", "\n78\n", "\n128+n\n"] {
        assert!(status.contains(code), "exit status {code:?} is missing");
    }
    // roff renders it without a warning.
    let mut groff = std::process::Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(groff.stdin.as_mut().unwrap(), page.as_bytes()).unwrap();
    let checked = groff.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}
