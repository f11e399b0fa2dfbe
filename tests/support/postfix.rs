//! A private Postfix (Debian's package) for the tests: its own configuration,
//! queue and data directories under the test's temporary directory, an SMTP
//! listener on a free loopback port that requires STARTTLS with the test CA's
//! certificate and refuses HELO names that are not fully qualified
//! (`reject_non_fqdn_helo_hostname`), and local delivery into Maildirs
//! (Postfix's `virtual` agent) for the addresses it is given. Needs root, as
//! Postfix's master does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Postfix {
    pub port: u16,
    root: PathBuf,
    conf: PathBuf,
}

/// Services the instance runs; no chroot (the paths are the test's).
const MASTER_CF: &str = "\
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

fn chown(path: &Path, user: &str) {
    let out = Command::new("chown").arg(user).arg(path).output().expect("chown");
    assert!(out.status.success(), "chown {user} {}", path.display());
}

impl Postfix {
    /// Starts an instance in `dir/postfix` that delivers mail for
    /// `mailboxes` (addresses in `example.test`).
    pub fn start(dir: &Path, cert: &Path, key: &Path, mailboxes: &[&str]) -> Postfix {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Debian's postfix package is needed (.ci/run installs it)"
        );
        // Postfix's own processes run as `postfix` and `nobody`: they must
        // reach the directories below the test's (0700) temporary directory.
        let mut p = dir.to_path_buf();
        while p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
            p.pop();
        }
        let root = dir.join("postfix");
        let conf = root.join("conf");
        for d in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&root.join("data"), "postfix");
        chown(&root.join("mail"), "nobody:nogroup");
        let port = super::free_port();
        let r = root.display();
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.test
mydomain = example.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file_prefixes = {r}
maillog_file = {r}/postfix.log
biff = no
smtpd_helo_required = yes
smtpd_helo_restrictions = reject_non_fqdn_helo_hostname
smtpd_tls_security_level = encrypt
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_received_header = yes
virtual_mailbox_domains = example.test
virtual_mailbox_base = {r}/mail
virtual_mailbox_maps = texthash:{r}/conf/mailboxes
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
",
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let boxes: String = mailboxes
            .iter()
            .map(|a| format!("{a} example.test/{}/\n", a.split('@').next().unwrap_or(a)))
            .collect();
        std::fs::write(conf.join("mailboxes"), boxes).unwrap();
        std::fs::write(
            conf.join("master.cf"),
            format!("127.0.0.1:{port} inet n - n - - smtpd\n{MASTER_CF}"),
        )
        .unwrap();
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .output()
            .expect("postfix start");
        let log = std::fs::read_to_string(root.join("postfix.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "postfix start: {}{}\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        super::eventually(Duration::from_secs(30), "postfix listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Postfix { port, root, conf }
    }

    /// The messages delivered to `local`'s Maildir (`new/`), as raw bytes.
    pub fn maildir(&self, local: &str) -> Vec<Vec<u8>> {
        let new = self.root.join("mail/example.test").join(local).join("new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(new)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
    }

    /// What Postfix logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postfix.log")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("abort")
            .output();
    }
}
