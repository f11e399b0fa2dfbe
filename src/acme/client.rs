//! The ACME conversation: the account (created on first use, its
//! credentials stored 0600 and never logged), and one order from new to
//! certificate.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::challenge::{AlpnResponder, DnsRecord, HttpResponder, WebrootFile};
use super::AcmeError;
use crate::config::acme::{AcmeConfig, CertificateConfig, ChallengeConfig, KeyType};

/// A certificate fresh from the CA, with its new private key.
pub struct Issued {
    /// PKCS#8 PEM. Never logged.
    pub key_pem: zeroize::Zeroizing<String>,
    pub chain_pem: String,
}

/// The first wait before an order is polled, and the factor by which each
/// later wait grows: 10, 15, 22, 34, 51, 76 ms … about 1 s by the eighth
/// poll, and 30 s after two minutes.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_BACKOFF: f32 = 1.5;

fn builder(acme: &AcmeConfig) -> Result<instant_acme::AccountBuilder, AcmeError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &acme.ca_file {
        Some(ca) => {
            Account::builder_with_root(ca).map_err(|e| AcmeError::Config(format!("acme.ca_file {}: {e}", ca.display())))
        }
        None => Account::builder().map_err(AcmeError::ca("setting up the HTTP client")),
    }
}

/// The account: loaded from `acme.account_file`, or created (and saved
/// atomically, 0600) when the file does not exist.
pub async fn account(acme: &AcmeConfig) -> Result<Account, AcmeError> {
    let path = &acme.account_file;
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.mode() & 0o077 != 0 {
                return Err(AcmeError::Config(format!(
                    "{} holds the ACME account key but is readable by others (mode {:04o}); chmod 600 it",
                    path.display(),
                    meta.mode() & 0o7777
                )));
            }
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(AcmeError::io(path.display().to_string()))?,
            );
            let creds: AccountCredentials = serde_json::from_str(&text)
                .map_err(|_| AcmeError::Config(format!("{} is not an account credentials file", path.display())))?;
            builder(acme)?
                .from_credentials(creds)
                .await
                .map_err(AcmeError::ca("loading the account"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
            let eab = match &acme.eab {
                Some(eab) => {
                    let secret = eab
                        .hmac_key
                        .load()
                        .map_err(|e| AcmeError::Config(format!("acme.eab.hmac_key: {e}")))?;
                    let key = <base64ct::Base64UrlUnpadded as base64ct::Encoding>::decode_vec(
                        secret.expose().trim_end_matches('='),
                    )
                    .map_err(|_| AcmeError::Config("acme.eab.hmac_key is not base64url".into()))?;
                    Some(ExternalAccountKey::new(eab.key_id.clone(), &key))
                }
                None => None,
            };
            let (account, creds) = builder(acme)?
                .create(
                    &NewAccount {
                        contact: &contact,
                        terms_of_service_agreed: acme.terms_agreed,
                        only_return_existing: false,
                    },
                    acme.directory.clone(),
                    eab.as_ref(),
                )
                .await
                .map_err(AcmeError::ca("creating the account"))?;
            let json =
                zeroize::Zeroizing::new(serde_json::to_string(&creds).map_err(|e| {
                    AcmeError::Protocol(format!("the account credentials cannot be written as JSON: {e}"))
                })?);
            super::install::write_atomically(
                &super::install::Target {
                    path,
                    mode: 0o600,
                    uid: None,
                    gid: None,
                },
                json.as_bytes(),
            )
            .map_err(AcmeError::io(format!("saving the account to {}", path.display())))?;
            tracing::info!(
                "ACME account created at {} and saved to {}",
                acme.directory,
                path.display()
            );
            Ok(account)
        }
        Err(e) => Err(AcmeError::io(path.display().to_string())(e)),
    }
}

fn new_key(key_type: KeyType) -> Result<rcgen::KeyPair, AcmeError> {
    let alg = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Rsa2048 | KeyType::Rsa3072 => return super::rsa::generate(key_type),
    };
    Ok(rcgen::KeyPair::generate_for(alg)?)
}

/// Runs one order for `cert` to its certificate. `replaces` is the ARI id
/// of the certificate this one succeeds, when the CA offers ARI.
pub async fn issue(
    acme: &AcmeConfig,
    account: &Account,
    cert: &CertificateConfig,
    replaces: Option<&str>,
) -> Result<Issued, AcmeError> {
    let identifiers: Vec<Identifier> = cert.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(profile) = &cert.profile {
        if !account.profiles().any(|p| p.name == profile) {
            return Err(AcmeError::Config(format!(
                "certificate {:?}: the CA does not offer the profile {profile:?}",
                cert.name
            )));
        }
        new_order = new_order.profile(profile);
    }
    let replaced = replaces.and_then(|id| {
        let (aki, serial) = id.split_once('.')?;
        Some(instant_acme::CertificateIdentifier {
            authority_key_identifier: aki.to_string().into(),
            serial: serial.to_string().into(),
        })
    });
    if let Some(r) = replaced {
        new_order = new_order.replaces(r);
    }
    let mut order = account
        .new_order(&new_order)
        .await
        .map_err(AcmeError::ca("new order"))?;

    // Responders live until the order is done; dropping them cleans up.
    let mut responders = Responders::bind(cert).await?;
    let ready = prove_control(&mut order, cert, &mut responders).await?;
    // A CA that validates and signs at once (most do, for a small order)
    // is answered within milliseconds: poll soon, then back off by half
    // again each time. A Retry-After from the CA replaces the schedule's
    // next delay (the client honours it on order polls).
    let retry = RetryPolicy::new()
        .initial_delay(POLL_FIRST)
        .backoff(POLL_BACKOFF)
        .timeout(acme.order_timeout.as_duration());
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(AcmeError::ca("waiting for validation"))?;
    if status != OrderStatus::Ready {
        let state = order.state();
        let detail = state
            .error
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "see the CA's authorization details".into());
        return Err(AcmeError::Challenge(format!(
            "validation failed for {} (order {status:?}): {detail}",
            ready.join(", ")
        )));
    }
    let key = new_key(cert.key_type)?;
    let params = rcgen::CertificateParams::new(cert.domains.clone())?;
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await.map_err(AcmeError::ca("finalize"))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(AcmeError::ca("downloading the certificate"))?;
    drop(responders);
    Ok(Issued {
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        chain_pem,
    })
}

/// What answers the CA's challenges for one order: the built-in HTTP-01
/// or TLS-ALPN-01 listener, webroot files, DNS records. Dropping it takes
/// them all away.
struct Responders {
    wanted: ChallengeType,
    /// How long DNS records take to be visible (dns-01).
    propagation: Option<crate::config::HumanDuration>,
    http: Option<HttpResponder>,
    alpn: Option<AlpnResponder>,
    webroot_files: Vec<WebrootFile>,
    dns_records: Vec<DnsRecord>,
}

impl Responders {
    async fn bind(cert: &CertificateConfig) -> Result<Responders, AcmeError> {
        let mut responders = Responders {
            wanted: ChallengeType::Http01,
            propagation: None,
            http: None,
            alpn: None,
            webroot_files: Vec::new(),
            dns_records: Vec::new(),
        };
        match &cert.challenge {
            ChallengeConfig::Http01 { listen, .. } => {
                if let Some(addr) = listen {
                    responders.http = Some(HttpResponder::bind(*addr).await?);
                }
            }
            ChallengeConfig::Dns01 { propagation, .. } => {
                responders.wanted = ChallengeType::Dns01;
                responders.propagation = *propagation;
            }
            ChallengeConfig::TlsAlpn01 { listen } => {
                responders.wanted = ChallengeType::TlsAlpn01;
                responders.alpn = Some(AlpnResponder::bind(*listen).await?);
            }
        }
        Ok(responders)
    }

    /// Puts up the answer to one challenge for `domain`.
    fn present(
        &mut self,
        cert: &CertificateConfig,
        token: &str,
        domain: &str,
        key_auth: &instant_acme::KeyAuthorization,
    ) -> Result<(), AcmeError> {
        match &cert.challenge {
            ChallengeConfig::Http01 { webroot, .. } => match (webroot, &self.http) {
                (Some(root), _) => self
                    .webroot_files
                    .push(WebrootFile::write(root, token, key_auth.as_str())?),
                (None, Some(server)) => server.add(token, key_auth.as_str()),
                (None, None) => return Err(AcmeError::Config("http-01 without webroot or listen".into())),
            },
            ChallengeConfig::Dns01 { hook, .. } => {
                self.dns_records.push(DnsRecord::present(
                    hook,
                    domain,
                    &key_auth.dns_value(),
                    cert.hook_timeout.as_duration(),
                )?);
            }
            ChallengeConfig::TlsAlpn01 { .. } => {
                if let Some(server) = &self.alpn {
                    server.add(domain, key_auth.digest().as_ref())?;
                }
            }
        }
        Ok(())
    }
}

/// Answers every pending authorization of the order and tells the CA it
/// may validate; returns the domains it was told about.
async fn prove_control(
    order: &mut instant_acme::Order,
    cert: &CertificateConfig,
    responders: &mut Responders,
) -> Result<Vec<String>, AcmeError> {
    let mut ready = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(AcmeError::ca("authorization"))?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(AcmeError::Protocol(format!("authorization is {other:?}")));
            }
        }
        let wanted = responders.wanted.clone();
        let mut challenge = authz
            .challenge(wanted.clone())
            .ok_or_else(|| AcmeError::Challenge(format!("the CA offers no {wanted:?} challenge")))?;
        let domain = match challenge.identifier().identifier {
            Identifier::Dns(d) => d.clone(),
            other => return Err(AcmeError::Challenge(format!("unexpected identifier {other:?}"))),
        };
        let token = challenge.token.clone();
        responders.present(cert, &token, &domain, &challenge.key_authorization())?;
        if let Some(wait) = responders.propagation {
            tokio::time::sleep(wait.as_duration()).await;
        }
        challenge
            .set_ready()
            .await
            .map_err(AcmeError::ca("marking a challenge ready"))?;
        ready.push(domain);
    }
    Ok(ready)
}

/// The CA's suggested renewal window for a certificate, when it offers ARI.
pub async fn renewal_window(
    account: &Account,
    ari_id: &str,
) -> Result<Option<(chrono::NaiveDateTime, chrono::NaiveDateTime)>, AcmeError> {
    let Some((aki, serial)) = ari_id.split_once('.') else {
        return Ok(None);
    };
    let id = instant_acme::CertificateIdentifier {
        authority_key_identifier: aki.to_string().into(),
        serial: serial.to_string().into(),
    };
    match account.renewal_info(&id).await {
        Ok((info, _retry_after)) => {
            let conv = |t: time::OffsetDateTime| {
                chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).map(|d| d.naive_utc())
            };
            match (conv(info.suggested_window.start), conv(info.suggested_window.end)) {
                (Some(s), Some(e)) => Ok(Some((s, e))),
                _ => Ok(None),
            }
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(AcmeError::ca("renewal info")(e)),
    }
}
