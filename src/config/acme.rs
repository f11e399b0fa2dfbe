//! `[acme]`, `[[certificates]]` and `[[monitor]]`: certificates keywarden
//! issues and renews over ACME, and certificates it only watches.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::permissions::{IdSpec, ModeSpec};
use super::{HumanDuration, SecretSource};

/// `[acme]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The ACME directory URL.
    pub directory: String,
    /// Contact URIs (`mailto:…`) registered with the account.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The CA's terms of service must be agreed to explicitly.
    #[serde(default)]
    pub terms_agreed: bool,
    /// Where the account credentials are kept (created 0600 on first use).
    #[serde(default = "default_account_file")]
    pub account_file: PathBuf,
    /// An extra root CA (PEM) trusted for the ACME server's own HTTPS, for
    /// private ACME servers.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// External Account Binding, for CAs that require it.
    #[serde(default)]
    pub eab: Option<EabConfig>,
    /// Admins are emailed when a certificate keeps failing to renew with
    /// less than this left.
    #[serde(default = "default_alert_margin")]
    pub alert_margin: HumanDuration,
    /// How long one issuance may take (validation included).
    #[serde(default = "default_order_timeout")]
    pub order_timeout: HumanDuration,
}

fn default_account_file() -> PathBuf {
    PathBuf::from("/var/lib/keywarden/acme-account.json")
}
fn default_alert_margin() -> HumanDuration {
    HumanDuration::from_secs(14 * 86_400)
}
fn default_order_timeout() -> HumanDuration {
    HumanDuration::from_secs(120)
}

/// `[acme.eab]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EabConfig {
    pub key_id: String,
    /// The base64url HMAC key, from a secret source.
    pub hmac_key: SecretSource,
}

/// The private key a certificate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
        }
    }
}

/// How domain control is proven.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ChallengeConfig {
    /// HTTP-01: the token is written under `webroot/.well-known/acme-challenge/`
    /// for a web server already running, or served by a built-in listener.
    #[serde(rename = "http-01")]
    Http01 {
        #[serde(default)]
        webroot: Option<PathBuf>,
        #[serde(default)]
        listen: Option<SocketAddr>,
    },
    /// DNS-01: `hook` is run (no shell) as `hook… present|cleanup NAME VALUE`.
    #[serde(rename = "dns-01")]
    Dns01 {
        hook: Vec<String>,
        /// How long to wait after `present` for the record to be visible.
        #[serde(default)]
        propagation: Option<HumanDuration>,
    },
    /// TLS-ALPN-01, from a built-in listener.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01 { listen: SocketAddr },
}

/// One `[[certificates]]` entry: issued and renewed by keywarden.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub key_type: KeyType,
    pub challenge: ChallengeConfig,
    /// The full chain (leaf first), PEM.
    pub cert_file: PathBuf,
    /// The private key, PEM (PKCS#8).
    pub key_file: PathBuf,
    #[serde(default)]
    pub owner: Option<IdSpec>,
    #[serde(default)]
    pub group: Option<IdSpec>,
    #[serde(default = "default_key_mode")]
    pub key_mode: ModeSpec,
    #[serde(default = "default_cert_mode")]
    pub cert_mode: ModeSpec,
    /// Run once after each install, without a shell.
    #[serde(default)]
    pub deploy_hook: Vec<String>,
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout: HumanDuration,
    /// An ACME profile to ask for (checked against what the CA offers).
    #[serde(default)]
    pub profile: Option<String>,
}

fn default_key_mode() -> ModeSpec {
    ModeSpec::Exactly(0o600)
}
fn default_cert_mode() -> ModeSpec {
    ModeSpec::Exactly(0o644)
}
fn default_hook_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

/// One `[[monitor]]` entry: a certificate keywarden does not issue but warns
/// about, read from a file or from what a server presents.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub name: String,
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `host:port` to connect to; `server_name` overrides the SNI name.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    /// How long after keywarden installs a new certificate an endpoint may
    /// still serve the one it replaced before it is reported stale (the
    /// service's reload may lag its deploy hook).
    #[serde(default = "default_stale_after")]
    pub stale_after: HumanDuration,
}

fn default_stale_after() -> HumanDuration {
    HumanDuration::from_secs(600)
}

fn is_domain(d: &str) -> bool {
    let d = d.strip_prefix("*.").unwrap_or(d);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl AcmeConfig {
    /// What is wrong with `[acme]` on its own.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.directory.starts_with("https://") {
            out.push(format!(
                "acme.directory must be an https:// URL, found {:?}",
                self.directory
            ));
        }
        if !self.terms_agreed {
            out.push("acme.terms_agreed must be true: read the CA's terms of service, then agree to them here".into());
        }
        for c in &self.contact {
            if !c.starts_with("mailto:") || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                out.push(format!("acme.contact: {c:?} is not a mailto: URI"));
            }
        }
        if let Some(eab) = &self.eab {
            if let Err(e) = eab.hmac_key.validate_shape() {
                out.push(format!("acme.eab.hmac_key: {e}"));
            }
            if eab.key_id.trim().is_empty() {
                out.push("acme.eab.key_id is empty".into());
            }
        }
        if !self.account_file.is_absolute() {
            out.push("acme.account_file must be an absolute path".into());
        }
        out
    }
}

impl CertificateConfig {
    /// What is wrong with one `[[certificates]]` entry on its own.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let at = format!("certificate {:?}", self.name);
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            out.push(format!("{at}: the name must be letters, digits, '-', '_' or '.'"));
        }
        if self.domains.is_empty() {
            out.push(format!("{at}: domains is empty"));
        }
        for d in &self.domains {
            if !is_domain(d) {
                out.push(format!("{at}: {d:?} is not a domain name"));
            }
            if d.starts_with("*.") && !matches!(self.challenge, ChallengeConfig::Dns01 { .. }) {
                out.push(format!("{at}: the wildcard {d} can only be validated with dns-01"));
            }
        }
        match &self.challenge {
            ChallengeConfig::Http01 { webroot, listen } => {
                if webroot.is_some() == listen.is_some() {
                    out.push(format!("{at}: http-01 needs exactly one of `webroot` or `listen`"));
                }
            }
            ChallengeConfig::Dns01 { hook, .. } => {
                if hook.is_empty() || !hook[0].starts_with('/') {
                    out.push(format!(
                        "{at}: dns-01 `hook` must be an argument list starting with an absolute path"
                    ));
                }
            }
            ChallengeConfig::TlsAlpn01 { .. } => {}
        }
        if !self.deploy_hook.is_empty() && !self.deploy_hook[0].starts_with('/') {
            out.push(format!("{at}: deploy_hook must start with an absolute path"));
        }
        if !self.cert_file.is_absolute() || !self.key_file.is_absolute() || self.cert_file == self.key_file {
            out.push(format!(
                "{at}: cert_file and key_file must be two different absolute paths"
            ));
        }
        if self.key_mode.allowed_bits() & 0o007 != 0 {
            out.push(format!(
                "{at}: key_mode {} would let everyone read the private key",
                self.key_mode
            ));
        }
        if matches!(self.key_mode, ModeSpec::AtMost(_)) || matches!(self.cert_mode, ModeSpec::AtMost(_)) {
            out.push(format!(
                "{at}: key_mode and cert_mode are exact modes, such as \"0600\""
            ));
        }
        out
    }
}

/// Cross-field checks of the certificate sections, one message each.
pub fn problems(acme: Option<&AcmeConfig>, certs: &[CertificateConfig], monitors: &[MonitorConfig]) -> Vec<String> {
    let mut out = Vec::new();
    if !certs.is_empty() && acme.is_none() {
        out.push("[[certificates]] needs an [acme] section".into());
    }
    if let Some(a) = acme {
        out.extend(a.problems());
    }
    let mut names = std::collections::HashSet::new();
    for c in certs {
        if !names.insert(c.name.clone()) {
            out.push(format!("certificate {:?}: the name is used twice", c.name));
        }
        out.extend(c.problems());
    }
    for m in monitors {
        let at = format!("monitor {:?}", m.name);
        if !names.insert(m.name.clone()) {
            out.push(format!("{at}: the name is used twice"));
        }
        match (&m.file, &m.address) {
            (Some(_), None) => {}
            (None, Some(addr)) => {
                let ok = addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok {
                    out.push(format!("{at}: address {addr:?} must be host:port"));
                }
            }
            _ => out.push(format!("{at}: give exactly one of `file` or `address`")),
        }
    }
    out
}
