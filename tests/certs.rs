//! Certificates against a real ACME server (Debian's Pebble with
//! pebble-challtestsrv as its DNS), real validation, real files, both
//! databases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::prelude::*;
use keywarden::db::schema::{certificates, notifications};
use support::pebble::{openssl_verify, Options, Pebble};
use support::*;

both_backends!(
    http01_listener_issues_a_verified_certificate_and_a_second_run_renews_nothing,
    webroot_dns01_and_tls_alpn01_all_validate,
    short_certificates_come_due_by_the_lifetime_rule,
    with_the_ca_down_the_old_files_stay_retries_back_off_and_admins_hear_once,
    external_account_binding,
    monitored_certificates_from_a_file_and_a_live_server,
    the_daemon_keeps_a_certificate_renewed,
    the_daemon_retries_a_failed_renewal_after_a_minute,
    a_ca_that_forgot_the_account_gets_a_new_one,
    a_failing_deploy_hook_fails_the_certificate_until_a_retry_succeeds,
    acme_errors_say_what_failed,
);

fn the_daemon_retries_a_failed_renewal_after_a_minute(backend: Backend) {
    let db = TestDb::new(backend);
    let mut pebble = Pebble::start(db.path(), Options::default());
    let (section, site) = cert_section(
        db.path(),
        "retry",
        &["retry.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    // The job's own schedule is far away: only the retry can issue it.
    let config = db.write_config(
        "k.toml",
        &format!(
            "{QUIET_JOBS}{}[jobs.renew-certs]\nschedule = \"0 0 1 1 *\"\n{section}",
            pebble.acme_section(&db.path().join("account.json"))
        ),
    );
    let mut conn = db.conn();
    pebble.stop();
    let out = keywarden(&config, &["certs", "renew", "retry"]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    let next: Option<chrono::NaiveDateTime> = certificates::table
        .select(certificates::next_attempt_at)
        .first(&mut conn)
        .unwrap();
    pebble.resume();
    let mut daemon = Daemon::start(&config, None, &[]);
    eventually(
        Duration::from_secs(90),
        "the daemon retries on time and succeeds",
        || deploys(db.path()).len() == 1,
    );
    let retried_at = keywarden::db::now();
    assert!(retried_at >= next.unwrap(), "retried before its time");
    assert!(
        retried_at - next.unwrap() < chrono::TimeDelta::seconds(20),
        "retried late"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(60)).code(), Some(0));
    assert!(site.cert.exists());
}

fn the_daemon_keeps_a_certificate_renewed(backend: Backend) {
    let db = TestDb::new(backend);
    let pebble = Pebble::start(
        db.path(),
        Options {
            validity_secs: Some(12),
            ..Options::default()
        },
    );
    let (section, site) = cert_section(
        db.path(),
        "live",
        &["live.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    // renew-certs every second: the first tick issues, later ones renew
    // each time half of the 12-second lifetime has passed.
    let config = db.write_config(
        "k.toml",
        &format!(
            "{}{}[jobs.renew-certs]\nschedule = \"* * * * * *\"\n{section}",
            QUIET_JOBS,
            pebble.acme_section(&db.path().join("account.json"))
        ),
    );
    let _migrated = db.conn();
    let mut daemon = Daemon::start(&config, None, &[]);
    eventually(Duration::from_secs(40), "issued, then renewed by the daemon", || {
        deploys(db.path()).len() >= 2
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(60)).code(), Some(0));
    openssl_verify(db.path(), &site.cert, &pebble.issuing_root()).unwrap();
    assert!(site.cert.with_extension("pem.prev").exists());
    let log = daemon.log();
    assert!(log.contains("certificate live installed"), "{log}");
}

const QUIET_JOBS: &str = "[jobs.expire-keys]\nenabled = false\n[jobs.revoke-grace]\nenabled = false\n\
    [jobs.notify-expiry]\nenabled = false\n[jobs.purge-audit]\nenabled = false\n[jobs.watch-perms]\nenabled = false\n";

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

fn out_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Site {
    name: &'static str,
    cert: PathBuf,
    key: PathBuf,
}

/// A `[[certificates]]` entry whose deploy hook appends to `deploys.log`.
fn cert_section(dir: &Path, name: &'static str, domains: &[&str], challenge: &str, extra: &str) -> (String, Site) {
    let cert = dir.join(format!("tls/{name}/fullchain.pem"));
    let key = dir.join(format!("tls/{name}/privkey.pem"));
    let log = dir.join("deploys.log");
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    (
        format!(
            "[[certificates]]\nname = \"{name}\"\ndomains = [{}]\nchallenge = {challenge}\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             deploy_hook = [\"/bin/sh\", \"-c\", \"echo \\\"$KEYWARDEN_CERT_NAME $KEYWARDEN_CERT_FILE\\\" >> {}\"]\n{extra}\n",
            domains.join(", "),
            cert.display(),
            key.display(),
            log.display()
        ),
        Site { name, cert, key },
    )
}

fn deploys(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("deploys.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn serial_of(conn: &mut keywarden::db::DbConnection, name: &str) -> Option<String> {
    certificates::table
        .filter(certificates::name.eq(name))
        .select(certificates::serial)
        .first(conn)
        .unwrap()
}

fn http01_listener_issues_a_verified_certificate_and_a_second_run_renews_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let pebble = Pebble::start(db.path(), Options::default());
    let (section, site) = cert_section(
        db.path(),
        "site",
        &["site.test", "www.site.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    let account = db.path().join("acme/account.json");
    let config = db.write_config(
        "k.toml",
        &format!("{QUIET_JOBS}{}{section}", pebble.acme_section(&account)),
    );
    let mut conn = db.conn();
    // Watch the key's directory while it is written: every file that
    // appears there (the temporary one included) is looked at as soon as
    // inotify reports it, and no key file may ever be seen with more than
    // 0600.
    let tls_dir = site.key.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&tls_dir).unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, u32)>>> = Default::default();
    let sink = seen.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for p in event.paths {
                if let Ok(m) = std::fs::symlink_metadata(&p) {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    sink.lock().unwrap().push((name, m.mode() & 0o7777));
                }
            }
        }
    })
    .unwrap();
    notify::Watcher::watch(&mut watcher, &tls_dir, notify::RecursiveMode::NonRecursive).unwrap();
    let out = keywarden(&config, &["certs", "renew", "site"]);
    assert!(out.status.success(), "{}\n{}", out_text(&out), pebble.log());
    assert!(out_text(&out).contains("renewed"), "{}", out_text(&out));
    std::thread::sleep(Duration::from_millis(200));
    drop(watcher);
    let seen = seen.lock().unwrap().clone();
    let keys: Vec<&(String, u32)> = seen.iter().filter(|(n, _)| n.contains("privkey")).collect();
    assert!(
        keys.iter().any(|(n, _)| n.ends_with(".tmp")),
        "the temporary key file was never seen: {seen:?}"
    );
    assert!(
        keys.iter().all(|(_, m)| m & !0o600 == 0),
        "a key file was seen wider than 0600: {keys:?}"
    );

    // The chain verifies against the CA's root; the key is 0600, the chain
    // 0644, the account credentials 0600.
    openssl_verify(db.path(), &site.cert, &pebble.issuing_root()).unwrap();
    assert_eq!(mode_of(&site.key), 0o600);
    assert_eq!(mode_of(&site.cert), 0o644);
    assert_eq!(mode_of(&account), 0o600);
    let key = std::fs::read_to_string(&site.key).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    // The hook ran once, told the name and path.
    assert_eq!(deploys(db.path()), [format!("site {}", site.cert.display())]);
    let first = serial_of(&mut conn, "site").expect("serial recorded");

    // A second run (command and job) renews nothing and deploys nothing.
    let out = keywarden(&config, &["certs", "renew", "site"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(out_text(&out).contains("renewal due"), "{}", out_text(&out));
    let out = keywarden(&config, &["jobs", "run", "renew-certs"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(deploys(db.path()).len(), 1);
    assert_eq!(serial_of(&mut conn, "site"), Some(first.clone()));

    // --force renews now; the previous pair is kept beside the new one.
    let out = keywarden(&config, &["certs", "renew", "site", "--force"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_ne!(serial_of(&mut conn, "site"), Some(first));
    assert_eq!(
        std::fs::read_to_string(site.key.with_extension("pem.prev")).unwrap(),
        key
    );
    assert_eq!(deploys(db.path()).len(), 2);

    // list and check agree.
    let out = keywarden(&config, &["certs", "list"]);
    let text = out_text(&out);
    assert!(
        text.contains("site.test,www.site.test") && text.contains("Pebble"),
        "{text}"
    );
    assert!(keywarden(&config, &["certs", "check"]).status.success());
    let status = out_text(&keywarden(&config, &["status"]));
    assert!(
        status.contains("Certificates:") && status.contains("site (issued)"),
        "{status}"
    );
    let _ = site.name;
}

fn webroot_dns01_and_tls_alpn01_all_validate(backend: Backend) {
    let db = TestDb::new(backend);
    let pebble = Pebble::start(db.path(), Options::default());
    // A web server already running, serving the webroot on the port Pebble
    // validates HTTP-01 on.
    let webroot = db.path().join("www");
    std::fs::create_dir_all(&webroot).unwrap();
    let mut web = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(pebble.http_port.to_string())
        .arg("--directory")
        .arg(&webroot)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the web server listens", || {
        std::net::TcpStream::connect(("127.0.0.1", pebble.http_port)).is_ok()
    });
    let (a, webroot_site) = cert_section(
        db.path(),
        "webroot",
        &["web.test"],
        &format!("{{ type = \"http-01\", webroot = \"{}\" }}", webroot.display()),
        "key_type = \"ecdsa-p384\"",
    );
    let (b, dns_site) = cert_section(
        db.path(),
        "dns",
        &["*.wild.test", "wild.test"],
        &format!("{{ type = \"dns-01\", hook = {} }}", pebble.dns_hook()),
        "key_type = \"rsa2048\"",
    );
    let (c, alpn_site) = cert_section(
        db.path(),
        "alpn",
        &["alpn.test"],
        &format!(
            "{{ type = \"tls-alpn-01\", listen = \"127.0.0.1:{}\" }}",
            pebble.tls_port
        ),
        "",
    );
    let config = db.write_config(
        "k.toml",
        &format!(
            "{QUIET_JOBS}{}{a}{b}{c}",
            pebble.acme_section(&db.path().join("account.json"))
        ),
    );
    let mut conn = db.conn();
    let out = keywarden(&config, &["jobs", "run", "renew-certs"]);
    let _ = web.kill();
    let _ = web.wait();
    assert!(out.status.success(), "{}\n{}", out_text(&out), pebble.log());
    let root = pebble.issuing_root();
    for site in [&webroot_site, &dns_site, &alpn_site] {
        openssl_verify(db.path(), &site.cert, &root).unwrap_or_else(|e| panic!("{}: {e}", site.name));
        assert_eq!(mode_of(&site.key), 0o600);
        assert!(serial_of(&mut conn, site.name).is_some(), "{}", site.name);
    }
    // The key types asked for.
    let info = |p: &Path| {
        keywarden::acme::certinfo::parse_pem_leaf(&std::fs::read(p).unwrap())
            .unwrap()
            .key_type
    };
    use keywarden::config::acme::KeyType;
    assert_eq!(info(&webroot_site.cert), Some(KeyType::EcdsaP384));
    assert_eq!(info(&dns_site.cert), Some(KeyType::Rsa2048));
    assert_eq!(info(&alpn_site.cert), Some(KeyType::EcdsaP256));
    // The webroot token was removed afterwards.
    let left: Vec<_> = std::fs::read_dir(webroot.join(".well-known/acme-challenge"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(deploys(db.path()).len(), 3);
}

fn short_certificates_come_due_by_the_lifetime_rule(backend: Backend) {
    let db = TestDb::new(backend);
    let pebble = Pebble::start(
        db.path(),
        Options {
            validity_secs: Some(20),
            ..Options::default()
        },
    );
    let (section, site) = cert_section(
        db.path(),
        "short",
        &["short.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    let config = db.write_config(
        "k.toml",
        &format!(
            "{QUIET_JOBS}{}{section}",
            pebble.acme_section(&db.path().join("account.json"))
        ),
    );
    let mut conn = db.conn();
    assert!(keywarden(&config, &["certs", "renew", "short"]).status.success());
    let first = serial_of(&mut conn, "short");
    // Half of a 20-second lifetime: due within about 10 seconds, not before.
    let out = keywarden(&config, &["certs", "renew", "short"]);
    assert!(out_text(&out).contains("renewal due"), "{}", out_text(&out));
    assert_eq!(serial_of(&mut conn, "short"), first);
    std::thread::sleep(Duration::from_secs(11));
    let out = keywarden(&config, &["jobs", "run", "renew-certs"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_ne!(serial_of(&mut conn, "short"), first, "the lifetime rule did not renew");
    assert_eq!(deploys(db.path()).len(), 2);
    assert!(site.cert.with_extension("pem.prev").exists());
}

fn with_the_ca_down_the_old_files_stay_retries_back_off_and_admins_hear_once(backend: Backend) {
    let db = TestDb::new(backend);
    let mut pebble = Pebble::start(db.path(), Options::default());
    let (section, site) = cert_section(
        db.path(),
        "site",
        &["down.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    // A margin longer than Pebble's lifetime: every failure is "near expiry".
    let acme = pebble
        .acme_section(&db.path().join("account.json"))
        .replace("order_timeout", "alert_margin = \"3650d\"\norder_timeout");
    let config = db.write_config(
        "k.toml",
        &format!(
            "[notifications]\nfile_dir = \"{}\"\nadmin_emails = [\"ops@example.com\"]\n\n{QUIET_JOBS}{acme}{section}",
            db.path().join("outbox").display()
        ),
    );
    let mut conn = db.conn();
    assert!(keywarden(&config, &["certs", "renew", "site"]).status.success());
    let before = (std::fs::read(&site.cert).unwrap(), std::fs::read(&site.key).unwrap());
    pebble.stop();

    let out = keywarden(&config, &["certs", "renew", "site", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    assert_eq!(
        (std::fs::read(&site.cert).unwrap(), std::fs::read(&site.key).unwrap()),
        before,
        "a failed renewal touched the installed files"
    );
    let (failures, next, error): (i32, Option<chrono::NaiveDateTime>, Option<String>) = certificates::table
        .filter(certificates::name.eq("site"))
        .select((
            certificates::failures,
            certificates::next_attempt_at,
            certificates::last_error,
        ))
        .first(&mut conn)
        .unwrap();
    assert_eq!(failures, 1);
    let wait = next.unwrap() - keywarden::db::now();
    assert!(
        wait > chrono::TimeDelta::seconds(30) && wait <= chrono::TimeDelta::seconds(61),
        "{wait}"
    );
    assert!(error.is_some());
    // Within the back-off the job does not try again.
    let out = keywarden(&config, &["jobs", "run", "renew-certs"]);
    assert!(out.status.success());
    let failures: i32 = certificates::table
        .select(certificates::failures)
        .first(&mut conn)
        .unwrap();
    assert_eq!(failures, 1, "retried inside the back-off");
    // A second failure: the back-off grows; the admins still have one email.
    let out = keywarden(&config, &["certs", "renew", "site", "--force"]);
    assert_eq!(out.status.code(), Some(1));
    let (failures, next): (i32, Option<chrono::NaiveDateTime>) = certificates::table
        .select((certificates::failures, certificates::next_attempt_at))
        .first(&mut conn)
        .unwrap();
    assert_eq!(failures, 2);
    assert!(next.unwrap() - keywarden::db::now() > chrono::TimeDelta::minutes(9));
    let alerts: i64 = notifications::table
        .filter(notifications::subject_kind.eq("certificate"))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(alerts, 1, "one email per window, not per attempt");
    assert!(keywarden(&config, &["certs", "check"]).status.code() == Some(1));
    // Back up: the next forced attempt succeeds and the streak ends.
    pebble.resume();
    assert!(keywarden(&config, &["certs", "renew", "site", "--force"])
        .status
        .success());
    let failures: i32 = certificates::table
        .select(certificates::failures)
        .first(&mut conn)
        .unwrap();
    assert_eq!(failures, 0);
}

fn external_account_binding(backend: Backend) {
    let db = TestDb::new(backend);
    let _migrated = db.conn();
    let hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start(
        db.path(),
        Options {
            eab: Some(("kid-1".into(), hmac.into())),
            ..Options::default()
        },
    );
    let (section, _site) = cert_section(
        db.path(),
        "eab",
        &["eab.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    // Without the binding the CA refuses to make the account.
    let plain = db.write_config(
        "plain.toml",
        &format!(
            "{QUIET_JOBS}{}{section}",
            pebble.acme_section(&db.path().join("plain-account.json"))
        ),
    );
    let out = keywarden(&plain, &["certs", "renew", "eab"]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    assert!(
        out_text(&out).contains("the CA refused")
            && out_text(&out).contains("(problem urn:ietf:params:acme:error:externalAccountRequired)"),
        "{}",
        out_text(&out)
    );
    // With it (the HMAC key from a 0600 file), it does.
    let secret = db.path().join("eab-hmac");
    std::fs::write(&secret, hmac).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let acme = pebble.acme_section(&db.path().join("account.json"));
    let config = db.write_config(
        "k.toml",
        &format!(
            "{QUIET_JOBS}{acme}\n[acme.eab]\nkey_id = \"kid-1\"\nhmac_key = {{ file = \"{}\" }}\n\n{section}",
            secret.display()
        ),
    );
    // (--force: the failed attempt above started a back-off.)
    let out = keywarden(&config, &["certs", "renew", "eab", "--force"]);
    assert!(out.status.success(), "{}\n{}", out_text(&out), pebble.log());
    assert!(!out_text(&out).contains(hmac), "the HMAC key was printed");
}

fn monitored_certificates_from_a_file_and_a_live_server(backend: Backend) {
    let db = TestDb::new(backend);
    let pki = db.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    // A leaf valid for two days: inside every default warning window.
    let (_ca, leaf, key) = make_test_pki(&pki);
    let port = free_port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(port.to_string())
        .arg("-cert")
        .arg(&leaf)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "openssl s_server listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let config = db.write_config(
        "k.toml",
        &format!(
            "[notifications]\nfile_dir = \"{}\"\nadmin_emails = [\"ops@example.com\"]\n\n{QUIET_JOBS}\
             [[monitor]]\nname = \"file\"\nfile = \"{}\"\n\n[[monitor]]\nname = \"live\"\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\n\n\
             [[monitor]]\nname = \"gone\"\nfile = \"{}\"\n",
            db.path().join("outbox").display(),
            leaf.display(),
            db.path().join("missing.pem").display()
        ),
    );
    let mut conn = db.conn();
    let out = keywarden(&config, &["jobs", "run", "renew-certs"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let rows: Vec<(String, Option<String>, Option<String>)> = certificates::table
        .order(certificates::name)
        .select((
            certificates::name,
            certificates::domains.nullable(),
            certificates::last_error,
        ))
        .load(&mut conn)
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].0, "gone");
    assert!(rows[1].2.is_some());
    assert_eq!(rows[2].1.as_deref(), Some("localhost"), "{rows:?}");
    // Both readable certificates are inside the 7-day window: one alert
    // each, and a second run adds none.
    let alerts = |conn: &mut keywarden::db::DbConnection| -> Vec<(String, String)> {
        notifications::table
            .filter(notifications::subject_kind.eq("certificate"))
            .order(notifications::subject_id)
            .select((notifications::subject_id, notifications::notice_window))
            .load(conn)
            .unwrap()
    };
    let first = alerts(&mut conn);
    assert_eq!(
        first,
        [
            ("file:ops@example.com".to_string(), "7d".to_string()),
            ("live:ops@example.com".to_string(), "7d".to_string())
        ]
    );
    assert!(keywarden(&config, &["jobs", "run", "renew-certs"]).status.success());
    assert_eq!(alerts(&mut conn), first);
    // check: the unreadable one makes it fail.
    let out = keywarden(&config, &["certs", "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    assert!(out_text(&out).contains("gone (monitored)"), "{}", out_text(&out));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn certificate_configuration_mistakes_are_reported_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("k.toml");
    std::fs::write(
        &config,
        "[acme]\ndirectory = \"http://acme.example/dir\"\n\n[[certificates]]\nname = \"a\"\ndomains = [\"*.x.test\", \"bad domain\"]\n\
         challenge = { type = \"http-01\", webroot = \"/var/www\", listen = \"127.0.0.1:80\" }\ncert_file = \"/etc/ssl/a.pem\"\nkey_file = \"/etc/ssl/a.pem\"\nkey_mode = \"0644\"\n",
    )
    .unwrap();
    let out = keywarden(&config, &["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for expected in [
        "acme.directory must be an https:// URL",
        "acme.terms_agreed must be true",
        "the wildcard *.x.test can only be validated with dns-01",
        "\"bad domain\" is not a domain name",
        "http-01 needs exactly one of `webroot` or `listen`",
        "cert_file and key_file must be two different absolute paths",
        "key_mode 0644 would let everyone read the private key",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(
        err.lines().all(|l| l.starts_with(&format!("{}:", config.display()))),
        "{err}"
    );
}

/// A CA that no longer knows the stored account (pebble restarted, as a
/// staging CA is reset) answers `accountDoesNotExist`: the account file is
/// set aside, a new account registered, and the renewal goes through.
fn a_ca_that_forgot_the_account_gets_a_new_one(backend: Backend) {
    let db = TestDb::new(backend);
    let mut pebble = Pebble::start(db.path(), Options::default());
    let (section, site) = cert_section(
        db.path(),
        "site",
        &["forgot.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    let account = db.path().join("acme/account.json");
    let config = db.write_config(
        "k.toml",
        &format!("{QUIET_JOBS}{}{section}", pebble.acme_section(&account)),
    );
    let _migrated = db.conn();
    let out = keywarden(&config, &["certs", "renew", "site"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(account.exists() && site.cert.exists());

    pebble.stop();
    pebble.resume();
    let out = keywarden(&config, &["certs", "renew", "site", "--force"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let aside = db.path().join("acme/account.json.unknown");
    assert!(aside.exists(), "the unknown account is kept aside");
    assert!(account.exists(), "a new account is stored");
    assert_ne!(
        std::fs::read(&aside).unwrap(),
        std::fs::read(&account).unwrap(),
        "the stored account is a new one"
    );
}

/// The deploy hook of the unprivileged unit that cannot signal a root
/// nginx: the certificate is failing (check, list, status, the job's
/// problems), the hook is retried after its back-off and not before, the
/// admins hear once, and a monitor of the endpoint that still serves the
/// replaced certificate reports it stale.
fn a_failing_deploy_hook_fails_the_certificate_until_a_retry_succeeds(backend: Backend) {
    let db = TestDb::new(backend);
    let pebble = Pebble::start(db.path(), Options::default());
    let cert = db.path().join("tls/fullchain.pem");
    let key = db.path().join("tls/privkey.pem");
    let allowed = db.path().join("hook-may-succeed");
    let served = db.path().join("served.pem");
    let hook = format!(
        "test -e {} || {{ echo 'nginx: [alert] kill(4242, 1) failed (1: Operation not permitted)' >&2; exit 1; }}; echo $KEYWARDEN_SERIAL >> {}",
        allowed.display(),
        db.path().join("deploys.log").display()
    );
    let settings = format!(
            "[notifications]\nfile_dir = \"{}\"\nadmin_emails = [\"ops@example.com\"]\n\n{QUIET_JOBS}{}\
             [[certificates]]\nname = \"web\"\ndomains = [\"web.test\"]\nchallenge = {{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\ndeploy_hook = [\"/bin/sh\", \"-c\", {hook:?}]\n\n\
             [[monitor]]\nname = \"nginx\"\nfile = \"{}\"\nstale_after = \"0s\"\n",
            db.path().join("outbox").display(),
            pebble.acme_section(&db.path().join("account.json")),
            pebble.http_port,
            cert.display(),
            key.display(),
            served.display()
        );
    let config = db.write_config("k.toml", &settings);
    let mut conn = db.conn();
    std::fs::write(&allowed, "").unwrap();
    let out = keywarden(&config, &["certs", "renew", "web"]);
    assert!(out.status.success(), "{}\n{}", out_text(&out), pebble.log());
    let first = serial_of(&mut conn, "web").unwrap();
    // nginx loaded the first certificate, then loses the right to be told.
    std::fs::copy(&cert, &served).unwrap();
    std::fs::remove_file(&allowed).unwrap();

    let out = keywarden(&config, &["certs", "renew", "web", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    assert!(
        out_text(&out).contains("deploy hook FAILED") && out_text(&out).contains("Operation not permitted"),
        "{}",
        out_text(&out)
    );
    let second = serial_of(&mut conn, "web").unwrap();
    assert_ne!(first, second);
    let owed = |conn: &mut keywarden::db::DbConnection| -> (Option<String>, i32, Option<chrono::NaiveDateTime>) {
        certificates::table
            .filter(certificates::name.eq("web"))
            .select((
                certificates::deploy_serial,
                certificates::deploy_failures,
                certificates::next_deploy_at,
            ))
            .first(conn)
            .unwrap()
    };
    let (serial, failures, next) = owed(&mut conn);
    assert_eq!((serial.as_deref(), failures), (Some(second.as_str()), 1));
    let wait = next.unwrap() - keywarden::db::now();
    assert!(
        wait > chrono::TimeDelta::seconds(30) && wait <= chrono::TimeDelta::seconds(61),
        "{wait}"
    );

    // Within the back-off the job does not run the hook; the certificate is
    // failing wherever an admin looks, and the endpoint serves a stale one.
    let out = keywarden(&config, &["jobs", "run", "renew-certs"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(owed(&mut conn).1, 1, "the hook ran inside its back-off");
    let check = keywarden(&config, &["certs", "check", "--json"]);
    assert_eq!(check.status.code(), Some(1));
    let reports: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let web = reports.as_array().unwrap().iter().find(|r| r["name"] == "web").unwrap();
    assert_eq!(web["outcome"], "deploy-failed", "{web}");
    assert_eq!(web["serial"], second.as_str());
    assert_eq!(web["failures"], 1);
    let nginx = reports
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "nginx")
        .unwrap();
    assert_eq!(nginx["outcome"], "stale", "{nginx}");
    assert_eq!(nginx["serial"], first.as_str());
    assert_eq!(nginx["replaced_by"], second.as_str());
    // One key per name in each object, serial included.
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(text.matches("\"not_after\"").count(), 2, "{text}");
    let list = out_text(&keywarden(&config, &["certs", "list"]));
    assert!(list.contains("deploy hook failing (1 in a row)"), "{list}");
    let status = out_text(&keywarden(&config, &["status"]));
    assert!(
        status.contains("web (issued)") && status.contains("FAILING: deploy hook failing"),
        "{status}"
    );
    assert!(status.contains("serving a stale certificate"), "{status}");
    // The daemon's renew-certs runs complete, yet STATUS= names the failure.
    let every_second = db.write_config(
        "daemon.toml",
        &format!("{settings}\n[jobs.renew-certs]\nschedule = \"* * * * * *\"\n"),
    );
    let notify = NotifySocket::bind(db.path());
    let mut daemon = Daemon::start(&every_second, Some(&notify), &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg = notify.wait_for("STATUS=", left);
        if msg.contains("certificate web: deploy hook failing (1 in a row)") {
            break msg;
        }
    };
    assert!(line.contains("renew-certs ok") && line.contains("FAILING"), "{line}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let alerts: Vec<(String, String)> = notifications::table
        .filter(notifications::subject_kind.eq("certificate"))
        .order(notifications::generation)
        .select((notifications::generation, notifications::notice_window))
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        alerts,
        [
            (format!("deploy:{second}"), "deploy".to_string()),
            (format!("stale:{first}"), "stale".to_string())
        ],
        "one alert per streak"
    );

    // The back-off runs out and the hook may succeed: the next run deploys.
    std::fs::write(&allowed, "").unwrap();
    diesel::update(certificates::table.filter(certificates::name.eq("web")))
        .set(certificates::next_deploy_at.eq(keywarden::db::now() - chrono::TimeDelta::seconds(1)))
        .execute(&mut conn)
        .unwrap();
    let out = keywarden(&config, &["jobs", "run", "renew-certs"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(owed(&mut conn), (None, 0, None));
    assert_eq!(deploys(db.path()), [first.clone(), second.clone()]);
    std::fs::copy(&cert, &served).unwrap();
    let out = keywarden(&config, &["certs", "check"]);
    assert!(out.status.success(), "{}", out_text(&out));
}

/// A CA that cannot be reached, or not trusted, is named as such, not
/// "client error (Connect)".
fn acme_errors_say_what_failed(backend: Backend) {
    let db = TestDb::new(backend);
    let pebble = Pebble::start(db.path(), Options::default());
    let (section, _site) = cert_section(
        db.path(),
        "site",
        &["site.test"],
        &format!("{{ type = \"http-01\", listen = \"127.0.0.1:{}\" }}", pebble.http_port),
        "",
    );
    let acme = pebble.acme_section(&db.path().join("account.json"));
    let _migrated = db.conn();
    let closed = format!("https://127.0.0.1:{}/dir", free_port());
    let cases = [
        (
            acme.replace(&pebble.directory, &closed),
            "connection refused: nothing listens at the CA's address",
        ),
        (
            acme.replace(&pebble.directory, "https://ca.invalid/dir"),
            "the CA's host name does not resolve",
        ),
        (
            acme.lines()
                .filter(|l| !l.starts_with("ca_file"))
                .collect::<Vec<_>>()
                .join("\n")
                + "\n",
            "the CA's TLS certificate is not trusted (invalid peer certificate: UnknownIssuer)",
        ),
    ];
    for (i, (acme, expected)) in cases.iter().enumerate() {
        let config = db.write_config(&format!("k{i}.toml"), &format!("{QUIET_JOBS}{acme}{section}"));
        let out = keywarden(&config, &["certs", "renew", "site", "--force"]);
        assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
        assert!(
            out_text(&out).contains(expected),
            "expected {expected:?} in:\n{}",
            out_text(&out)
        );
        assert!(
            !out_text(&out).contains("client error (Connect)\n"),
            "{}",
            out_text(&out)
        );
    }
}
