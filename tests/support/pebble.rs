//! Debian's Pebble (2.4.0) and pebble-challtestsrv, started per test on
//! ports of its own: a real ACME server doing real validation against the
//! test's responders, with challtestsrv as its DNS (every name resolves to
//! 127.0.0.1; TXT records are set through its management API).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, make_test_pki};

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// `certificateValidityPeriod`, seconds.
    pub validity_secs: Option<u64>,
    /// Require External Account Binding with this (kid, base64url HMAC key).
    pub eab: Option<(String, String)>,
    /// `PEBBLE_VA_ALWAYS_VALID=1`: every challenge passes without a check.
    pub always_valid: bool,
}

pub struct Pebble {
    pebble: Option<Child>,
    challtestsrv: Child,
    dir: PathBuf,
    config: PathBuf,
    always_valid: bool,
    pub directory: String,
    /// The CA of Pebble's own HTTPS listener (for `acme.ca_file`).
    pub https_ca: PathBuf,
    /// Where Pebble validates HTTP-01 and TLS-ALPN-01 (on 127.0.0.1).
    pub http_port: u16,
    pub tls_port: u16,
    pub management: u16,
    /// challtestsrv's management API, for the DNS hook.
    pub dns_management: u16,
    dns_port: u16,
    listen: u16,
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port}");
}

impl Pebble {
    pub fn start(dir: &Path, options: Options) -> Pebble {
        assert!(
            Path::new("/usr/bin/pebble").exists(),
            "Debian's pebble is required (apt-get install pebble)"
        );
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, leaf, key) = make_test_pki(&dir);
        let (listen, management, http_port, tls_port) = (free_port(), free_port(), free_port(), free_port());
        let (dns_port, dns_management) = (free_port(), free_port());
        let mut pebble_cfg = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": leaf,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.eab.is_some(),
        });
        if let Some(secs) = options.validity_secs {
            pebble_cfg["certificateValidityPeriod"] = secs.into();
        }
        if let Some((kid, hmac)) = &options.eab {
            pebble_cfg["externalAccountMACKeys"] = serde_json::json!({ kid.as_str(): hmac });
        }
        let config = dir.join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble_cfg }).to_string()).unwrap();
        let challtestsrv = Command::new("/usr/bin/pebble-challtestsrv")
            .args([
                "-management",
                &format!("127.0.0.1:{dns_management}"),
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
                "-defaultIPv4",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        wait_for_port(dns_management, "pebble-challtestsrv");
        let mut me = Pebble {
            pebble: None,
            challtestsrv,
            dir: dir.clone(),
            config,
            always_valid: options.always_valid,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            https_ca: ca,
            http_port,
            tls_port,
            management,
            dns_management,
            dns_port,
            listen,
        };
        me.resume();
        me
    }

    /// (Re)starts pebble itself (its issuing CA is new at every start).
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("pebble.log")).unwrap();
        let child = Command::new("/usr/bin/pebble")
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.dns_port))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_VA_ALWAYS_VALID", if self.always_valid { "1" } else { "0" })
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble");
        self.pebble = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_ok() {
                return;
            }
            // Exited (a port taken by another process since it was picked,
            // say): say why instead of waiting out the deadline.
            if let Some(Ok(Some(status))) = self.pebble.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "pebble exited ({status}) before listening on {}:\n{}",
                    self.listen,
                    std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "pebble did not listen on {}:\n{}",
            self.listen,
            std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// The root that signs issued certificates (PEM), from the management API.
    pub fn issuing_root(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&self.https_ca)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .expect("curl");
        assert!(out.status.success(), "fetching pebble's root failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The `[acme]` section for this server.
    pub fn acme_section(&self, account_file: &Path) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@example.com\"]\nterms_agreed = true\naccount_file = \"{}\"\nca_file = \"{}\"\norder_timeout = \"60s\"\n",
            self.directory,
            account_file.display(),
            self.https_ca.display()
        )
    }

    /// The DNS-01 hook's argument list (setting TXT records in challtestsrv).
    pub fn dns_hook(&self) -> String {
        format!(
            "[\"/usr/bin/python3\", \"{}\", \"http://127.0.0.1:{}\"]",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/dns_hook.py"),
            self.dns_management
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

/// `openssl verify` of an installed full chain against `root_pem`.
pub fn openssl_verify(dir: &Path, chain: &Path, root_pem: &str) -> Result<(), String> {
    let root = dir.join("issuing-root.pem");
    std::fs::write(&root, root_pem).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg("-untrusted")
        .arg(chain)
        .arg(chain)
        .output()
        .expect("openssl");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
